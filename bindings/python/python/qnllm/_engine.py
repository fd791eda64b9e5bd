"""UnifiedNeuralEngine: the original API over the native engine."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Optional

import numpy as np

from . import _native
from ._config import EngineConfig


class Metrics(dict):
    """A metrics snapshot: a plain dict (the original ``get_metrics()``) whose keys also
    read as attributes (``m.total_requests``, ``m.router['engines']``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _metrics(raw: Dict[str, Any]) -> Metrics:
    """The native figures plus the original summary keys at the top."""
    router = raw.get("router", {})
    cache = router.get("cache") or {}
    hits = int(cache.get("hits", 0))
    misses = int(cache.get("misses", 0))
    engines = router.get("engines", [])
    summary = {
        "total_requests": router.get("requests", 0),
        "strategy": router.get("strategy"),
        "mode": (router.get("mode") or {}).get("mode"),
        "retries": router.get("retries", 0),
        "failovers": router.get("retries", 0),
        "disagreements": router.get("disagreements", 0),
        "ejections": router.get("ejections", 0),
        "cache_hits": hits,
        "cache_misses": misses,
        "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "engines": engines,
        "engine_count": len(engines),
        "local_engines": sum(1 for e in engines if e.get("kind") == "local"),
        "remote_engines": sum(1 for e in engines if e.get("kind") == "remote"),
    }
    return Metrics(summary, **raw)


class UnifiedNeuralEngine(_native.Engine):
    """One object for all of qnllm: in-process engines, a router, and an embedded hub that
    worker processes join.

    ``UnifiedNeuralEngine()`` is one local engine with the hub on ``127.0.0.1:9999``,
    round-robin. Settings come from an :class:`EngineConfig`, keyword arguments (the same
    names), or both (keywords win). ``engines=[MyEngine()]`` adds Python engines: objects
    with ``reason(self, encoding) -> (label, scores)`` that the router treats as more
    backends. ``start()`` opens the hub, ``stop()`` closes it and every thread; ``with``
    does both.
    """

    def __new__(
        cls,
        config: Optional[EngineConfig] = None,
        *,
        engines: Optional[Iterable[Any]] = None,
        **settings: Any,
    ) -> "UnifiedNeuralEngine":
        config = _config(config, settings)
        return super().__new__(cls, engines=list(engines or []), **config.native_kwargs())

    def __init__(
        self,
        config: Optional[EngineConfig] = None,
        *,
        engines: Optional[Iterable[Any]] = None,
        **settings: Any,
    ) -> None:
        self.config = _config(config, settings)
        self.config._attach(self)

    def get_metrics(self) -> Metrics:
        """Every figure: requests, strategy, cache hits, per-engine latency and health,
        hub connections; a dict with attribute access."""
        return _metrics(json.loads(self.metrics_json()))

    metrics = get_metrics

    def coordinate(self, encoding: Any, learn: bool = True) -> Dict[str, Any]:  # type: ignore[override]
        """Multi-teacher coordination: the teachers vote on ``encoding``; with ``learn``
        the consensus is taught to every engine in rotation. Returns the outcome."""
        return json.loads(super().coordinate(encoding, learn))

    def learn(self, encoding: Any, label: int) -> Optional[Dict[str, Any]]:  # type: ignore[override]
        """Teaches ``label`` for ``encoding`` to every engine in rotation; returns the new
        model state (version, digest), or None when nothing changed."""
        return json.loads(super().learn(encoding, int(label)))

    @property
    def strategy(self) -> str:
        """The strategy in force (``redundant`` or ``hedged`` when that mode is)."""
        strategy, mode = self.policy
        return mode if mode != "single" else strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self.config.strategy = str(getattr(name, "value", name))

    @property
    def cache_results(self) -> bool:
        """Whether results are served from the cache."""
        return bool(self.config.cache_results)

    @cache_results.setter
    def cache_results(self, enabled: bool) -> None:
        self.config.cache_results = bool(enabled)

    def __enter__(self) -> "UnifiedNeuralEngine":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"listening on {self.address}" if self.running and self.address else (
            "running" if self.running else "stopped"
        )
        return f"<UnifiedNeuralEngine {self.strategy}, {state}>"


def _config(config: Optional[EngineConfig], settings: Dict[str, Any]) -> EngineConfig:
    if config is None:
        return EngineConfig(**settings)
    if not isinstance(config, EngineConfig):
        raise _native.ConfigError(f"config must be an EngineConfig, got {type(config).__name__}")
    merged = config.to_dict()
    merged.update(settings)
    return EngineConfig(**merged)


# numpy is imported by the extension on first use; importing it here fails early and clearly.
_ = np
