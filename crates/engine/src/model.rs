//! `Model`: the weights of a spiking network (the learnt readout and the served readout
//! reasoning uses), its version and its digest.

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::EngineError;
use crate::kernel::Net;
use crate::params::{Params, READOUT_LIMIT, SERVED_LIMIT};
use crate::prng::SplitMix64;

/// Domain separator at the start of every model digest.
const MODEL_DOMAIN: &[u8] = b"qnllm-model-v2\0";

/// A learning step moves the readout unless the taught label already leads its runner-up by
/// this many score units per hidden spike (`docs/engine.md` §7).
const MARGIN_PER_SPIKE: i64 = 16;

/// The served readout `A` is `R` in fixed point with this many fraction bits: `S = A >> 8`.
const SERVED_SHIFT: u32 = 8;

/// Past this many learning steps the served readout's moving average keeps a fixed shift
/// (`s = 8`); before, `s = ⌊log₂(version + 1)⌋`, so it starts as an exact running mean.
const WARM_VERSIONS: u64 = 255;

/// A model: hyper-parameters, integer weights, the count of learning updates applied, and
/// the digest that names this exact state.
///
/// The readout comes twice: `R` ([`Model::readout`], `i16`), the weights learning changes,
/// and the served readout `A` ([`Model::served_readout`], `i32`), a moving average of
/// `R · 256`. Reasoning uses `S = A >> 8` ([`Model::reasoning_readout`]), cached here so the
/// kernels read `i16` as before.
#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    name: String,
    params: Params,
    input_weights: Vec<i8>,
    readout: Vec<i16>,
    /// `A`, `labels × hidden`: the served readout, within `±32 767 · 256`.
    served: Vec<i32>,
    /// `S = A >> 8`, what reasoning multiplies the hidden spikes by.
    reasoning: Vec<i16>,
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

    /// A model from its weights, with the served readout `A = R · 256` (as a model file
    /// without a `served_readout` tensor loads).
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
        let served = readout
            .iter()
            .map(|&r| i32::from(r) << SERVED_SHIFT)
            .collect();
        Model::from_parts_served(name, params, input_weights, readout, served, version)
    }

    /// A model from its weights and its served readout `A`, as loaded from a file.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] when the parameters fail validation, a weight count
    /// does not match them, a readout weight lies outside `±32 767`, or a served readout
    /// value outside `±32 767 · 256`.
    pub fn from_parts_served(
        name: String,
        params: Params,
        input_weights: Vec<i8>,
        readout: Vec<i16>,
        served: Vec<i32>,
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
        if served.len() != readout.len() {
            return Err(EngineError::InvalidParams(format!(
                "{} served readout values for {} labels × {} hidden",
                served.len(),
                params.labels,
                params.hidden
            )));
        }
        // A range test, not `abs`: `i32::MIN.abs()` overflows.
        let bounds = -SERVED_LIMIT..=SERVED_LIMIT;
        if let Some(at) = served.iter().position(|a| !bounds.contains(a)) {
            let hidden = params.hidden as usize;
            return Err(EngineError::InvalidParams(format!(
                "served readout value {} at [{}, {}] lies outside ±{SERVED_LIMIT} (32767 · 256)",
                served[at],
                at / hidden,
                at % hidden
            )));
        }
        let reasoning = served.iter().map(|&a| (a >> SERVED_SHIFT) as i16).collect();
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
            served,
            reasoning,
            input_row_sums,
            version,
            input_digest,
            digest: Digest::default(),
        };
        model.digest = model.compute_digest();
        Ok(model)
    }

    /// `SHA-256(domain ‖ params ‖ version ‖ SHA-256(input weights) ‖ R ‖ A)`, all
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
        let mut served = Vec::with_capacity(self.served.len() * 4);
        for a in &self.served {
            served.extend_from_slice(&a.to_le_bytes());
        }
        h.update(&served);
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

    /// `labels × hidden` readout weights `R`, row-major: the weights learning changes.
    pub fn readout(&self) -> &[i16] {
        &self.readout
    }

    /// `labels × hidden` served readout `A`, row-major: a moving average of `R · 256`.
    pub fn served_readout(&self) -> &[i32] {
        &self.served
    }

    /// `labels × hidden` weights reasoning uses, `S = A >> 8`, row-major.
    pub fn reasoning_readout(&self) -> &[i16] {
        &self.reasoning
    }

    pub(crate) fn net(&self) -> Net<'_> {
        Net {
            params: &self.params,
            input_weights: &self.input_weights,
            readout: &self.reasoning,
            input_row_sums: &self.input_row_sums,
        }
    }

    /// The learning update of `docs/engine.md` §7 for the hidden spike counts of one
    /// encoding (`total` their sum) and the taught `label`; returns whether `R` moved.
    ///
    /// 1. The learning scores use `R`: `g[k] = Σⱼ R[k][j] · count[j]`.
    /// 2. The rival is the other label with the highest `g` (the lowest on a tie). Unless
    ///    `g[label]` leads it by `16 · total`, `count` is added to the label's row of `R`
    ///    and subtracted from the rival's, saturating at `±32 767`.
    /// 3. Every step, `A += ((R << 8) − A) >> s`, with `s = ⌊log₂(version + 1)⌋` for the
    ///    first 255 steps and 8 after; then `S = A >> 8`.
    /// 4. The version goes up by one and the digest follows.
    pub(crate) fn apply_update(&mut self, hidden_spikes: &[i32], total: u32, label: u32) -> bool {
        let hidden = self.params.hidden as usize;
        let limit = READOUT_LIMIT;
        // In i64: each score fits i32 by `Params::validate`, but their differences need more.
        let scores: Vec<i64> = self
            .readout
            .chunks_exact(hidden)
            .map(|row| {
                row.iter()
                    .zip(hidden_spikes)
                    .map(|(&r, &c)| i64::from(r) * i64::from(c))
                    .sum()
            })
            .collect();
        let mut rival: Option<usize> = None;
        for (k, &g) in scores.iter().enumerate() {
            if k != label as usize && rival.is_none_or(|best| g > scores[best]) {
                rival = Some(k);
            }
        }
        let mut moved = false;
        if let Some(rival) = rival {
            let lead = scores[label as usize] - scores[rival];
            if lead < MARGIN_PER_SPIKE * i64::from(total) {
                moved = true;
                let (taught, other) = (label as usize * hidden, rival * hidden);
                for (j, &count) in hidden_spikes.iter().enumerate() {
                    let up = i32::from(self.readout[taught + j]) + count;
                    self.readout[taught + j] = up.clamp(-limit, limit) as i16;
                    let down = i32::from(self.readout[other + j]) - count;
                    self.readout[other + j] = down.clamp(-limit, limit) as i16;
                }
            }
        }
        let shift = if self.version >= WARM_VERSIONS {
            SERVED_SHIFT
        } else {
            (self.version + 1).ilog2()
        };
        // |R << 8| and |A| are at most 32 767 · 256, so the difference fits i32 with room;
        // A moves toward R · 256 and never past it, so it stays within the same bound.
        for ((a, &r), s) in self
            .served
            .iter_mut()
            .zip(&self.readout)
            .zip(self.reasoning.iter_mut())
        {
            *a += ((i32::from(r) << SERVED_SHIFT) - *a) >> shift;
            *s = (*a >> SERVED_SHIFT) as i16;
        }
        // §7 step 4: modulo 2⁶⁴, as a file may carry version 2⁶⁴ − 1.
        self.version = self.version.wrapping_add(1);
        self.digest = self.compute_digest();
        moved
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
    fn the_digest_covers_parameters_version_and_both_readouts() {
        let a = Model::from_seed(1, Params::default()).unwrap();
        let p = Params {
            hidden_threshold: 40_000,
            ..Params::default()
        };
        assert_ne!(Model::from_seed(1, p).unwrap().digest(), a.digest());
        let mut b = a.clone();
        // No spikes: the margin (16 · 0) is not met only if the label trails; label 1 of
        // seed 1 scores 0 like every label, so the lead 0 is not below 0 and R stays.
        assert!(!b.apply_update(&vec![0; 512], 0, 1));
        assert_eq!(b.version(), 1);
        assert_eq!(b.readout(), a.readout());
        assert_eq!(b.served_readout(), a.served_readout());
        assert_ne!(b.digest(), a.digest());
        // The same R with another served readout is another model.
        let mut served = a.served_readout().to_vec();
        served[7] += 1;
        let c = Model::from_parts_served(
            a.name().into(),
            *a.params(),
            a.input_weights().to_vec(),
            a.readout().to_vec(),
            served,
            0,
        )
        .unwrap();
        assert_eq!(c.readout(), a.readout());
        assert_ne!(c.digest(), a.digest());
    }

    #[test]
    fn the_served_readout_starts_as_r_and_follows_it_as_a_moving_average() {
        let mut model = Model::from_seed(1, Params::default()).unwrap();
        let r0: Vec<i32> = model.readout().iter().map(|&r| i32::from(r)).collect();
        assert!(model
            .served_readout()
            .iter()
            .zip(&r0)
            .all(|(&a, &r)| a == r * 256));
        assert_eq!(model.reasoning_readout(), model.readout());
        let counts: Vec<i32> = (0..512).map(|j| j % 5).collect();
        let total = counts.iter().sum::<i32>() as u32;
        // Step at version 0: the shift is 0, so A becomes exactly the updated R · 256.
        assert!(model.apply_update(&counts, total, 3));
        assert!(model
            .served_readout()
            .iter()
            .zip(model.readout())
            .all(|(&a, &r)| a == i32::from(r) * 256));
        // Later steps move A only part of the way: S lags R.
        for _ in 0..3 {
            model.apply_update(&counts, total, 4);
        }
        assert_eq!(model.version(), 4);
        assert_ne!(model.reasoning_readout(), model.readout());
        let (r, a) = (model.readout(), model.served_readout());
        let hidden = 512;
        for j in 0..hidden {
            let (r, a, before) = (
                i32::from(r[4 * hidden + j]),
                a[4 * hidden + j],
                r0[4 * hidden + j],
            );
            // Row 4 only rose, so its average lies between where it started and where R is.
            assert!(before * 256 <= a && a <= r * 256, "j {j}: {before} {a} {r}");
        }
        for (s, a) in model.reasoning_readout().iter().zip(model.served_readout()) {
            assert_eq!(i32::from(*s), a >> 8);
        }
    }

    #[test]
    fn the_update_goes_against_the_runner_up_until_the_margin_is_met() {
        let p = Params::default();
        let hidden = 512;
        let base = Model::from_seed(1, p).unwrap();
        // Rows 0..10 constant 10·k: label 9 leads, and label 8 is the runner-up of label 9.
        let readout: Vec<i16> = (0..10)
            .flat_map(|k| std::iter::repeat_n(10 * k as i16, hidden))
            .collect();
        let model = Model::from_parts(
            "x".into(),
            p,
            base.input_weights().to_vec(),
            readout.clone(),
            0,
        )
        .unwrap();
        let counts = vec![1; hidden];
        let total = hidden as u32;
        // Teaching 9: it leads 8 by 10 per spike, below 16, so R moves against 8.
        let mut m = model.clone();
        assert!(m.apply_update(&counts, total, 9));
        assert!(m.readout()[9 * hidden..].iter().all(|&w| w == 91));
        assert!(m.readout()[8 * hidden..9 * hidden].iter().all(|&w| w == 79));
        assert_eq!(&m.readout()[..8 * hidden], &readout[..8 * hidden]);
        // Now it leads by 12 per spike, then 14: still below 16, two more updates; then
        // 16 is met and R stays.
        assert!(m.apply_update(&counts, total, 9));
        assert!(m.apply_update(&counts, total, 9));
        assert!(!m.apply_update(&counts, total, 9));
        assert!(m.readout()[9 * hidden..].iter().all(|&w| w == 93));
        assert!(m.readout()[8 * hidden..9 * hidden].iter().all(|&w| w == 77));
        // Teaching 0, the runner-up is 9 (the highest other), not the prediction's neighbour.
        let mut m = model.clone();
        assert!(m.apply_update(&counts, total, 0));
        assert!(m.readout()[..hidden].iter().all(|&w| w == 1));
        assert!(m.readout()[9 * hidden..].iter().all(|&w| w == 89));
        // A tie for the runner-up goes to the lowest label.
        let flat = Model::from_parts(
            "x".into(),
            p,
            base.input_weights().to_vec(),
            vec![5; 10 * hidden],
            0,
        )
        .unwrap();
        let mut m = flat.clone();
        assert!(m.apply_update(&counts, total, 4));
        assert!(m.readout()[..hidden].iter().all(|&w| w == 4));
        assert!(m.readout()[hidden..4 * hidden].iter().all(|&w| w == 5));
    }

    #[test]
    fn a_model_at_the_last_version_learns_and_wraps_to_version_zero() {
        let p = Params::default();
        let base = Model::from_seed(1, p).unwrap();
        let mut model = Model::from_parts(
            "x".into(),
            p,
            base.input_weights().to_vec(),
            base.readout().to_vec(),
            u64::MAX,
        )
        .unwrap();
        let counts = vec![1; 512];
        model.apply_update(&counts, 512, 3);
        assert_eq!(model.version(), 0);
    }

    #[test]
    fn updates_saturate_instead_of_wrapping() {
        let p = Params::default();
        let hidden = 512;
        let base = Model::from_seed(1, p).unwrap();
        // Label 0 near the top trails label 1 at the top; labels 2.. at the bottom.
        let mut readout = vec![-32_767i16; 10 * hidden];
        readout[..hidden].fill(32_760);
        readout[hidden..2 * hidden].fill(32_767);
        let mut model =
            Model::from_parts("x".into(), p, base.input_weights().to_vec(), readout, 0).unwrap();
        let counts = vec![16; hidden];
        assert!(model.apply_update(&counts, 16 * hidden as u32, 0));
        assert!(model.readout()[..hidden].iter().all(|&w| w == 32_767));
        assert!(model.readout()[hidden..2 * hidden]
            .iter()
            .all(|&w| w == 32_751));
        // And at the bottom: labels 0 and 1 just above it, the rest on it; teaching 0
        // pushes its runner-up 1 down, where it saturates.
        let mut readout = vec![-32_767i16; 10 * hidden];
        readout[..2 * hidden].fill(-32_760);
        let mut model =
            Model::from_parts("x".into(), p, base.input_weights().to_vec(), readout, 0).unwrap();
        assert!(model.apply_update(&counts, 16 * hidden as u32, 0));
        assert!(model.readout()[..hidden].iter().all(|&w| w == -32_744));
        assert!(model.readout()[hidden..2 * hidden]
            .iter()
            .all(|&w| w == -32_767));
        assert!(model
            .served_readout()
            .iter()
            .all(|a| a.abs() <= SERVED_LIMIT));
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
        let base = Model::from_seed(1, p).unwrap();
        let parts = |served: Vec<i32>| {
            Model::from_parts_served(
                "x".into(),
                p,
                base.input_weights().to_vec(),
                base.readout().to_vec(),
                served,
                0,
            )
        };
        let err = parts(vec![0; 3]).unwrap_err();
        assert!(err.to_string().contains("3 served readout values"), "{err}");
        let mut served = base.served_readout().to_vec();
        served[513] = SERVED_LIMIT + 1;
        let err = parts(served.clone()).unwrap_err();
        assert!(err.to_string().contains("8388353 at [1, 1]"), "{err}");
        served[513] = -SERVED_LIMIT;
        assert!(parts(served).is_ok(), "−32767 · 256 is within bounds");
    }
}
