"""The Python teacher: docs/engine.md computed in pure Python (tests/spec/check_engine.py, the
implementation checked against the golden vectors), served by `python -m qnllm worker --teacher
--engine spec_teacher:SpecTeacher`. Its model is `seed:$QNLLM_SPEC_SEED`; it answers with its own
label, scores and spikes, so the hub counts its vote, not a Rust engine's behind it."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Tuple

ROOT = Path(__file__).resolve().parents[2]


def load_spec() -> Any:
    """tests/spec/check_engine.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("check_engine", ROOT / "tests/spec/check_engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPEC = load_spec()
PARAMS = json.loads((ROOT / "testdata/engine/golden.json").read_text())["default_params"]


class SpecTeacher:
    """A teacher of model `seed:N` (N from QNLLM_SPEC_SEED) in pure Python."""

    def __init__(self) -> None:
        self.seed = int(os.environ["QNLLM_SPEC_SEED"])
        # The identity the worker registers with (docs/python.md: `model` names the model the
        # answers are claimed to be those of); the answers themselves are computed here.
        self.model = f"seed:{self.seed}"
        self.w, self.r = SPEC.model(self.seed, PARAMS)

    def reason(self, encoding: Any) -> Tuple[int, list, int, list]:
        x = [float(v) for v in encoding]
        # At version 0 the served readout S equals R (docs/engine.md §2); the teacher never learns.
        label, score, label_spikes, total, _ = SPEC.forward(PARAMS, self.w, self.r, x)
        return label, score, total, label_spikes


def spec_digest(seed: int) -> str:
    """The digest of model `seed:N` at version 0, computed by the spec implementation."""
    w, r = SPEC.model(seed, PARAMS)
    a = [[v << 8 for v in row] for row in r]  # the served readout at version 0: A = R · 256
    return str(SPEC.model_digest(PARAMS, w, r, a, 0))
