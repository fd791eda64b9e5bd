"""qnllm from Python: a deterministic neural reasoning engine with a fast IPC layer.

The quick start of the original design runs as written::

    import numpy as np
    from qnllm import UnifiedNeuralEngine

    engine = UnifiedNeuralEngine()      # one local engine, hub on 127.0.0.1:9999, round-robin
    engine.start()
    result = engine.reason(np.random.normal(0, 0.1, 768))
    print(f"Confidence: {result['confidence']:.3f}")
    engine.stop()

Everything is the Rust core underneath (a native extension); see docs/python.md.
"""

from ._native import (
    ConfigError,
    ConnectionLost,
    DeadlineExceeded,
    Disagreement,
    EngineFailed,
    EngineStopped,
    HubError,
    InvalidInput,
    Learned,
    ModelError,
    NoEngineAvailable,
    QnllmError,
    Reasoning,
    ShuttingDown,
    SpikingEngine,
    VersionConflict,
    __version__,
    normal_inputs,
    result_digest,
    serve_worker,
    strategy_names,
)
from ._config import EngineConfig, Strategy
from ._engine import Metrics, UnifiedNeuralEngine
from ._client import Client, connect
from ._aio import AsyncUnifiedNeuralEngine

__all__ = [
    "AsyncUnifiedNeuralEngine",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "DeadlineExceeded",
    "Disagreement",
    "EngineConfig",
    "EngineFailed",
    "EngineStopped",
    "HubError",
    "InvalidInput",
    "Learned",
    "Metrics",
    "ModelError",
    "NoEngineAvailable",
    "QnllmError",
    "Reasoning",
    "ShuttingDown",
    "SpikingEngine",
    "Strategy",
    "UnifiedNeuralEngine",
    "VersionConflict",
    "__version__",
    "connect",
    "normal_inputs",
    "result_digest",
    "serve_worker",
    "strategy_names",
]
