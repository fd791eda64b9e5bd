from ._native import (
    ConfigError as ConfigError,
    ConnectionLost as ConnectionLost,
    DeadlineExceeded as DeadlineExceeded,
    Disagreement as Disagreement,
    VersionConflict as VersionConflict,
    EngineFailed as EngineFailed,
    EngineStopped as EngineStopped,
    HubError as HubError,
    InvalidInput as InvalidInput,
    Learned as Learned,
    ModelError as ModelError,
    NoEngineAvailable as NoEngineAvailable,
    QnllmError as QnllmError,
    Reasoning as Reasoning,
    ShuttingDown as ShuttingDown,
    SpikingEngine as SpikingEngine,
    __version__ as __version__,
    normal_inputs as normal_inputs,
    result_digest as result_digest,
    serve_worker as serve_worker,
    strategy_names as strategy_names,
)
from ._config import EngineConfig as EngineConfig, Strategy as Strategy
from ._engine import Metrics as Metrics, UnifiedNeuralEngine as UnifiedNeuralEngine
from ._client import Client as Client, connect as connect
from ._aio import AsyncUnifiedNeuralEngine as AsyncUnifiedNeuralEngine
