"""Client: a connection to a hub that another process runs."""

from __future__ import annotations

import json
from typing import Any, Optional

from . import _native


class Client(_native.Client):
    """A client of a running hub (``qnllm serve``, or another process's
    UnifiedNeuralEngine): ``reason``, ``reason_batch``, ``learn``, ``coordinate``,
    ``metrics``, ``close``; usable in ``with``."""

    def learn(self, encoding, label: int, *, base_version: int) -> dict:
        """Teaches ``label`` for ``encoding`` to the hub's student replicas, as an update
        to the model at ``base_version``; returns the new state, ``{"version", "digest"}``.

        Raises InvalidInput for a bad encoding or label, and QnllmError naming both
        versions when the student is at another one than ``base_version``.
        """
        return json.loads(self.learn_json(encoding, label, base_version))

    def coordinate(self, encoding, *, teachers: int = 0, learn: bool = False) -> dict:
        """Asks ``teachers`` of the hub's teachers (0: all) for their label of
        ``encoding``; with ``learn``, the student learns the consensus. Returns
        ``{"consensus", "agreement", "learned", "teachers": [{"engine", "label",
        "confidence", "reliability"}]}``, ``learned`` a bool.
        """
        return json.loads(self.coordinate_json(encoding, teachers, learn))

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
