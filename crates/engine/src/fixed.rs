//! `FixedEngine`: answers every valid encoding with one precomputed result, so benchmarks
//! can measure the transport apart from the computation.

use crate::digest::Digest;
use crate::engine::{Engine, Learned, ModelInfo};
use crate::error::EngineError;
use crate::reasoning::Reasoning;
use crate::spiking::SpikingEngine;

/// An engine that checks the encoding's length and returns a fixed result.
#[derive(Debug, Clone)]
pub struct FixedEngine {
    info: ModelInfo,
    answer: Reasoning,
}

impl FixedEngine {
    /// Answers as `engine` does for an all-zero encoding, without computing again.
    pub fn new(engine: &SpikingEngine) -> FixedEngine {
        let info = engine.info();
        let zero = vec![0.0; info.params.inputs as usize];
        // The all-zero encoding has the model's length and only finite values.
        #[allow(clippy::expect_used)]
        let answer = engine.reason(&zero).expect("an all-zero encoding is valid");
        FixedEngine { info, answer }
    }
}

impl Engine for FixedEngine {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn digest(&self) -> Digest {
        self.info.digest
    }

    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        let expected = self.info.params.inputs as usize;
        if encoding.len() != expected {
            return Err(EngineError::WrongLength {
                expected,
                found: encoding.len(),
            });
        }
        Ok(self.answer.clone())
    }

    fn learn(&mut self, _encoding: &[f32], _label: u32) -> Result<Learned, EngineError> {
        Err(EngineError::InvalidParams(
            "the fixed engine does not learn".into(),
        ))
    }
}
