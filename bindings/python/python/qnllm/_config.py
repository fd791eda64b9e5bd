"""EngineConfig: the settings of a UnifiedNeuralEngine under their original names."""

from __future__ import annotations

import enum
from typing import Any, Dict, List, Optional

from ._native import ConfigError


class Strategy(str, enum.Enum):
    """How requests are spread over engines: the original names and qnllm's."""

    ROUND_ROBIN = "round_robin"
    PYTHON_FIRST = "python_first"
    LOCAL_FIRST = "local_first"
    CPP_FIRST = "cpp_first"
    REMOTE_FIRST = "remote_first"
    PERFORMANCE = "performance"
    REDUNDANT = "redundant"
    HEDGED = "hedged"

    def __str__(self) -> str:
        return self.value


# Settings that can change on a running engine, and the engine method that applies them.
_LIVE = {"cache_results": "set_cache", "strategy": "set_strategy"}


class EngineConfig:
    """Settings of a UnifiedNeuralEngine; every one has a default.

    ``host``/``port`` place the embedded hub (``127.0.0.1:9999``; ``port=0`` picks a free
    one), ``strategy`` is one of :class:`Strategy`, ``cache_results`` turns the LRU result
    cache of ``cache_size`` entries on, ``timeout`` is each request's deadline in seconds,
    ``num_local_engines`` the in-process Rust engines, ``redundancy`` the engines asked per
    request in redundant mode, ``teachers`` the models (``"seed:N"``) that ``coordinate``
    asks. ``http`` and ``grpc`` (``"127.0.0.1:8000"``; port 0 picks one) also serve the
    KServe v2 front on the same engine, guarded by ``token`` too; ``engine.http_address`` and
    ``engine.grpc_address`` say where once started. Once the config belongs to an engine, setting ``cache_results`` or ``strategy``
    changes that engine at once (``config.cache_results = True``).
    """

    _FIELDS: Dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 9999,
        "unix_socket": None,
        "token": None,
        "strategy": "round_robin",
        "cache_results": False,
        "cache_size": 1000,
        "timeout": 5.0,
        "num_local_engines": 1,
        "model": "seed:1",
        "redundancy": 3,
        "teachers": [],
        "heartbeat_ms": None,
        "threads": None,
        "listen": True,
        "http": None,
        "grpc": None,
    }
    _ALIASES = {"local_engines": "num_local_engines", "unix": "unix_socket", "cache": "cache_results"}

    def __init__(self, **settings: Any) -> None:
        object.__setattr__(self, "_engine", None)
        for name, default in self._FIELDS.items():
            object.__setattr__(self, name, list(default) if isinstance(default, list) else default)
        for name, value in settings.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        name = self._ALIASES.get(name, name)
        if name not in self._FIELDS:
            raise ConfigError(
                f"unknown setting `{name}`: use one of {', '.join(sorted(self._FIELDS))}"
            )
        if isinstance(value, Strategy):
            value = value.value
        engine = self._engine
        if engine is not None:
            if name not in _LIVE:
                raise ConfigError(
                    f"`{name}` cannot change on a running engine; only "
                    f"{', '.join(sorted(_LIVE))} can"
                )
            getattr(engine, _LIVE[name])(value)
        object.__setattr__(self, name, value)

    def _attach(self, engine: Any) -> None:
        object.__setattr__(self, "_engine", engine)

    def native_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of the native engine these settings name."""
        if self.listen:
            host = "127.0.0.1" if self.host == "localhost" else self.host
            listen: Optional[str] = f"{host}:{int(self.port)}"
        else:
            listen = None
        teachers: List[str] = [t if isinstance(t, str) else f"seed:{int(t)}" for t in self.teachers]
        return {
            "listen": listen,
            "unix": self.unix_socket,
            "token": self.token,
            "local_engines": int(self.num_local_engines),
            "model": self.model if isinstance(self.model, str) else f"seed:{int(self.model)}",
            "strategy": str(self.strategy),
            "redundancy": int(self.redundancy),
            "cache_size": int(self.cache_size),
            "cache_results": bool(self.cache_results),
            "timeout": float(self.timeout),
            "teachers": teachers,
            "heartbeat_ms": self.heartbeat_ms,
            "threads": self.threads,
            "http": None if self.http is None else str(self.http),
            "grpc": None if self.grpc is None else str(self.grpc),
        }

    def to_dict(self) -> Dict[str, Any]:
        """Every setting as a dict."""
        return {name: getattr(self, name) for name in self._FIELDS}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"EngineConfig({inner})"
