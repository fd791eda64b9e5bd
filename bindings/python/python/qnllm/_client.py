"""Client: a connection to a hub that another process runs."""

from __future__ import annotations

import json
from typing import Any, Optional

from . import _native


class Client(_native.Client):
    """A client of a running hub (``qnllm serve``, or another process's
    UnifiedNeuralEngine): ``reason``, ``reason_batch``, ``metrics``, ``close``; usable in
    ``with``."""

    def metrics(self) -> dict:
        """The hub's figures: engines, router decisions, cache, connections."""
        return json.loads(self.metrics_json())

    def __repr__(self) -> str:
        return f"<qnllm.Client {self.address}>"


def connect(
    address: str = "127.0.0.1:9999",
    *,
    token: Optional[str] = None,
    timeout: float = 5.0,
    name: str = "python-client",
) -> Client:
    """Connects to the hub at ``address`` (``host:port`` or ``unix:PATH``).

    Raises ConnectionLost when the hub cannot be reached.
    """
    return Client(address, token=token, timeout=timeout, name=name)


_ = Any
