//! The `Engine` trait: what every engine, local, remote or bound from another language, does.

use serde::Serialize;

use crate::digest::Digest;
use crate::error::EngineError;
use crate::params::Params;
use crate::reasoning::Reasoning;

/// A description of the model an engine serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// Model name (`seed:N` or the file's name).
    pub name: String,
    /// Hyper-parameters.
    pub params: Params,
    /// Learning updates applied.
    pub version: u64,
    /// Digest of the exact weights and version.
    pub digest: Digest,
}

/// The outcome of one learning update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Learned {
    /// What the model answered before the update (the label `reason` gave).
    pub predicted: u32,
    /// Whether the margin update moved the readout `R`: the taught label did not yet lead
    /// its runner-up by the margin (`docs/engine.md` §7). The served readout and the
    /// version move on every step.
    pub changed: bool,
    /// Model version after the update.
    pub version: u64,
    /// Model digest after the update.
    pub digest: Digest,
}

/// A deterministic reasoning engine.
///
/// Implementations must give bit-identical [`Reasoning::result_digest`]s for the same model
/// and input, whatever the batch size, thread count or machine.
pub trait Engine: Send + Sync {
    /// The model this engine serves.
    fn info(&self) -> ModelInfo;

    /// The model's digest, as in [`Engine::info`] without building the rest (a router with
    /// a cache asks on every request).
    fn digest(&self) -> Digest {
        self.info().digest
    }

    /// Reasons over one encoding.
    ///
    /// # Errors
    ///
    /// [`EngineError::WrongLength`] or [`EngineError::NotFinite`] for a bad encoding.
    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError>;

    /// Reasons over several encodings; results come back in input order, equal to what
    /// [`Engine::reason`] gives one by one.
    ///
    /// # Errors
    ///
    /// [`EngineError::InBatch`] naming the first bad encoding; then nothing is computed.
    fn reason_batch(&self, encodings: &[&[f32]]) -> Result<Vec<Reasoning>, EngineError> {
        encodings
            .iter()
            .enumerate()
            .map(|(item, x)| {
                self.reason(x).map_err(|e| EngineError::InBatch {
                    item,
                    reason: Box::new(e),
                })
            })
            .collect()
    }

    /// Applies the learning update for `(encoding, label)` and bumps the model version.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownLabel`], or the errors of [`Engine::reason`].
    fn learn(&mut self, encoding: &[f32], label: u32) -> Result<Learned, EngineError>;

    /// The model as a model file (the safetensors format of `docs/engine.md`), so another
    /// replica can take this exact state; `None` when this engine cannot export its model.
    fn export_model(&self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces the model with one [`Engine::export_model`] gave, weights and version: the
    /// digest becomes the exporter's. The new model must have this one's parameters.
    ///
    /// # Errors
    ///
    /// [`EngineError::ModelFile`] for bytes that are not such a model file,
    /// [`EngineError::InvalidParams`] for a model of other parameters, and
    /// [`EngineError::Failed`] from engines that cannot replace their model (the default).
    fn import_model(&mut self, model: &[u8]) -> Result<(), EngineError> {
        let _ = model;
        Err(EngineError::Failed(
            "this engine cannot replace its model".into(),
        ))
    }
}
