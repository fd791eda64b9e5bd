"""Client: a connection to a hub that another process runs."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from . import _native


class Client(_native.Client):
    """A client of a running hub (``qnllm serve``, or another process's
    UnifiedNeuralEngine): ``reason``, ``reason_batch``, ``learn``, ``coordinate``,
    ``metrics``, ``close``; usable in ``with``."""

    def learn(self, encoding: Any, label: int, *, base_version: int) -> Dict[str, Any]:
        """Teaches ``label`` for ``encoding`` to the hub's student replicas, as an update
        to the model at ``base_version``; returns the new state, ``{"version", "digest"}``.

        Raises InvalidInput for a bad encoding or label, VersionConflict (naming both
        versions) when the student is at another one. DeadlineExceeded does not mean that
        nothing was applied: send the update again with the same ``base_version``, and a
        VersionConflict says it was.
        """
        return json.loads(self.learn_json(encoding, int(label), int(base_version)))

    def coordinate(self, encoding: Any, *, teachers: int = 0, learn: bool = True) -> Dict[str, Any]:
        """Multi-teacher coordination on the hub: ``teachers`` of its teachers (0: all) vote
        on ``encoding``; with ``learn`` the student learns the consensus. Returns
        ``{"consensus", "agreement", "learned", "teachers": [{"engine", "label",
        "confidence", "reliability"}]}``: what the hub's reply carries, so ``learned`` is a
        bool here, where ``UnifiedNeuralEngine.coordinate`` returns the new state.
        """
        return json.loads(self.coordinate_json(encoding, int(teachers), bool(learn)))

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
