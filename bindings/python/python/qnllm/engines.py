"""Ready-made Python engines: the reference model behind a Python class, for workers
(``python -m qnllm worker --engine qnllm.engines:ReferenceEngine``) and as a template."""

from __future__ import annotations

from typing import Any

from ._native import Reasoning, SpikingEngine


class ReferenceEngine:
    """The reference spiking model ``seed:1`` computed through Python: it answers exactly as
    the Rust engines do, so redundant mode counts it as one more honest vote."""

    model = "seed:1"

    def __init__(self, model: str = "seed:1") -> None:
        self.model = model
        self.inner = SpikingEngine(model)

    def reason(self, encoding: Any) -> Reasoning:
        """``encoding`` is a float32 array; the answer carries label, scores and spikes."""
        return self.inner.reason(encoding)
