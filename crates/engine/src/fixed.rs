//! `FixedEngine`: answers every valid encoding with one precomputed result, so benchmarks
//! can measure the transport apart from the computation. It has a model digest of its own,
//! so its canned answers never pass for the real model's.

use sha2::{Digest as _, Sha256};

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
        let mut answer = engine.reason(&zero).expect("an all-zero encoding is valid");
        let info = ModelInfo {
            name: format!("fixed:{}", info.name),
            digest: FixedEngine::digest_for(&info.digest),
            ..info
        };
        answer.model_digest = info.digest;
        FixedEngine { info, answer }
    }

    /// The digest a fixed engine built from the model `real` reports: a hash of a domain
    /// separator and `real`, so it names the fixed engine and never equals a real model's.
    pub fn digest_for(real: &Digest) -> Digest {
        let mut h = Sha256::new();
        h.update(b"qnllm-fixed-v1\0");
        h.update(real.0);
        Digest(h.finalize().into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::params::Params;

    #[test]
    fn a_fixed_engine_does_not_report_the_real_models_digest() {
        let real =
            SpikingEngine::new(Model::from_seed(1, Params::default()).expect("default params"));
        let fixed = FixedEngine::new(&real);
        assert_ne!(fixed.digest(), real.digest());
        assert_ne!(fixed.info().digest, real.info().digest);
        let x = vec![0.0; real.info().params.inputs as usize];
        let answer = fixed.reason(&x).expect("valid encoding");
        assert_eq!(answer.model_digest, fixed.digest());
        assert_ne!(
            answer.model_digest,
            real.reason(&x).expect("valid").model_digest
        );
        // Still a well-formed answer: its result digest matches its integer outputs.
        assert_eq!(answer.result_digest, answer.expected_result_digest());
    }
}
