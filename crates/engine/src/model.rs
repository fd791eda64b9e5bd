//! `Model`: the weights of a spiking network, its version and its digest.

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::EngineError;
use crate::kernel::Net;
use crate::params::{Params, READOUT_LIMIT};
use crate::prng::SplitMix64;

/// Domain separator at the start of every model digest.
const MODEL_DOMAIN: &[u8] = b"qnllm-model-v1\0";

/// A model: hyper-parameters, integer weights, the count of learning updates applied, and
/// the digest that names this exact state.
#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    name: String,
    params: Params,
    input_weights: Vec<i8>,
    readout: Vec<i16>,
    /// `Σᵢ W[j][i]` per hidden neuron, derived from the input weights.
    input_row_sums: Vec<i32>,
    version: u64,
    input_digest: [u8; 32],
    digest: Digest,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// The model named `seed:SEED`: weights drawn from one SplitMix64 stream seeded with
    /// `seed`, input weights first (row by row), then the readout.
    ///
    /// Input weight `W[j][i]` is the top byte of a draw as `i8`. Readout row `k` is built
    /// from antisymmetric pairs: for each `m`, one draw `r` gives `R[k][2m] = r` and
    /// `R[k][2m+1] = −r`, so every label's score starts balanced around zero.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] when `params` fail [`Params::validate`].
    pub fn from_seed(seed: u64, params: Params) -> Result<Model, EngineError> {
        params.validate()?;
        let mut rng = SplitMix64::new(seed);
        let input_weights = (0..params.input_weight_count())
            .map(|_| rng.next_i8())
            .collect();
        let mut readout = Vec::with_capacity(params.readout_weight_count());
        for _ in 0..params.labels {
            for _ in 0..params.hidden / 2 {
                let r = i16::from(rng.next_i8());
                readout.extend([r, -r]);
            }
        }
        Model::from_parts(format!("seed:{seed}"), params, input_weights, readout, 0)
    }

    /// A model from its weights, as loaded from a file.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] when the parameters fail validation, a weight count
    /// does not match them, or a readout weight lies outside `±32 767`.
    pub fn from_parts(
        name: String,
        params: Params,
        input_weights: Vec<i8>,
        readout: Vec<i16>,
        version: u64,
    ) -> Result<Model, EngineError> {
        params.validate()?;
        if input_weights.len() != params.input_weight_count() {
            return Err(EngineError::InvalidParams(format!(
                "{} input weights for {} hidden × {} inputs",
                input_weights.len(),
                params.hidden,
                params.inputs
            )));
        }
        if readout.len() != params.readout_weight_count() {
            return Err(EngineError::InvalidParams(format!(
                "{} readout weights for {} labels × {} hidden",
                readout.len(),
                params.labels,
                params.hidden
            )));
        }
        if readout.contains(&i16::MIN) {
            return Err(EngineError::InvalidParams(format!(
                "readout weights must lie within ±{READOUT_LIMIT}"
            )));
        }
        let input_digest: [u8; 32] =
            Sha256::digest(input_weights.iter().map(|&w| w as u8).collect::<Vec<u8>>()).into();
        let inputs = params.inputs as usize;
        let input_row_sums = input_weights
            .chunks_exact(inputs)
            .map(|row| row.iter().map(|&w| i32::from(w)).sum())
            .collect();
        let mut model = Model {
            name,
            params,
            input_weights,
            readout,
            input_row_sums,
            version,
            input_digest,
            digest: Digest::default(),
        };
        model.digest = model.compute_digest();
        Ok(model)
    }

    /// `SHA-256(domain ‖ params ‖ version ‖ SHA-256(input weights) ‖ readout)`, all
    /// little-endian; the input weights are hashed once since learning never changes them.
    fn compute_digest(&self) -> Digest {
        let p = &self.params;
        let mut h = Sha256::new();
        h.update(MODEL_DOMAIN);
        for field in [p.inputs, p.hidden, p.steps, p.labels, p.hidden_leak_shift] {
            h.update(field.to_le_bytes());
        }
        h.update(p.hidden_threshold.to_le_bytes());
        h.update(p.output_leak_shift.to_le_bytes());
        h.update(p.output_threshold.to_le_bytes());
        h.update(self.version.to_le_bytes());
        h.update(self.input_digest);
        let mut readout = Vec::with_capacity(self.readout.len() * 2);
        for w in &self.readout {
            readout.extend_from_slice(&w.to_le_bytes());
        }
        h.update(&readout);
        Digest(h.finalize().into())
    }

    /// The model's name (`seed:N`, or what its file says).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hyper-parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Learning updates applied since the weights were drawn or saved at version 0.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The digest of this exact state.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// `hidden × inputs` input weights, row-major.
    pub fn input_weights(&self) -> &[i8] {
        &self.input_weights
    }

    /// `labels × hidden` readout weights, row-major.
    pub fn readout(&self) -> &[i16] {
        &self.readout
    }

    pub(crate) fn net(&self) -> Net<'_> {
        Net {
            params: &self.params,
            input_weights: &self.input_weights,
            readout: &self.readout,
            input_row_sums: &self.input_row_sums,
        }
    }

    /// The learning update: when the network predicted `predicted` but `label` was taught,
    /// add each hidden neuron's spike count to the taught label's readout row and subtract
    /// it from the predicted label's row, saturating at `±32 767`. When the prediction was
    /// right the weights stay. Either way the version goes up by one and the digest follows.
    pub(crate) fn apply_update(&mut self, hidden_spikes: &[i32], label: u32, predicted: u32) {
        if label != predicted {
            let hidden = self.params.hidden as usize;
            let limit = READOUT_LIMIT;
            let (taught, wrong) = (label as usize * hidden, predicted as usize * hidden);
            for (j, &count) in hidden_spikes.iter().enumerate() {
                let up = i32::from(self.readout[taught + j]) + count;
                self.readout[taught + j] = up.clamp(-limit, limit) as i16;
                let down = i32::from(self.readout[wrong + j]) - count;
                self.readout[wrong + j] = down.clamp(-limit, limit) as i16;
            }
        }
        self.version += 1;
        self.digest = self.compute_digest();
    }

    /// Replaces the model's name (the digest does not cover names).
    pub fn with_name(mut self, name: impl Into<String>) -> Model {
        self.name = name.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_model_and_another_seed_another() {
        let a = Model::from_seed(1, Params::default()).unwrap();
        let b = Model::from_seed(1, Params::default()).unwrap();
        let c = Model::from_seed(2, Params::default()).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.name(), "seed:1");
    }

    #[test]
    fn readout_rows_are_antisymmetric_pairs() {
        let model = Model::from_seed(5, Params::default()).unwrap();
        for pair in model.readout().chunks_exact(2) {
            assert_eq!(pair[0], -pair[1]);
        }
        let spread: std::collections::HashSet<i8> = model.input_weights().iter().copied().collect();
        assert!(spread.len() > 250, "input weights cover the i8 range");
    }

    #[test]
    fn the_digest_covers_parameters_and_version() {
        let a = Model::from_seed(1, Params::default()).unwrap();
        let p = Params {
            hidden_threshold: 40_000,
            ..Params::default()
        };
        assert_ne!(Model::from_seed(1, p).unwrap().digest(), a.digest());
        let mut b = a.clone();
        b.apply_update(&vec![0; 512], 1, 1);
        assert_eq!(b.version(), 1);
        assert_eq!(b.readout(), a.readout());
        assert_ne!(b.digest(), a.digest());
    }

    #[test]
    fn updates_saturate_instead_of_wrapping() {
        let mut model = Model::from_seed(1, Params::default()).unwrap();
        let counts = vec![16; 512];
        for _ in 0..5_000 {
            model.apply_update(&counts, 0, 1);
        }
        let hidden = 512;
        assert!(model.readout()[..hidden].iter().all(|&w| w == 32_767));
        assert!(model.readout()[hidden..2 * hidden]
            .iter()
            .all(|&w| w == -32_767));
    }

    #[test]
    fn wrong_weight_counts_are_refused() {
        let p = Params::default();
        let err = Model::from_parts(
            "x".into(),
            p,
            vec![0; 3],
            vec![0; p.readout_weight_count()],
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("3 input weights"), "{err}");
        let err = Model::from_parts(
            "x".into(),
            p,
            vec![0; p.input_weight_count()],
            vec![i16::MIN; p.readout_weight_count()],
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("±32767"), "{err}");
    }
}
