//! `Error`: what can go wrong when a `UnifiedEngine` is built, started or asked.

use qnllm_engine::EngineError;
use qnllm_hub::{ConfigError, HubError};
use qnllm_router::RouterError;

/// What can go wrong with a `UnifiedEngine`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The hub could not start.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A model could not be built or loaded.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A request failed: bad input, no engine, deadline, disagreement.
    #[error(transparent)]
    Request(#[from] RouterError),
    /// Batches need encodings of one non-zero length.
    #[error("a batch needs encodings of one non-zero length")]
    RaggedBatch,
}
