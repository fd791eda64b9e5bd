//! `Params`: the hyper-parameters of the spiking network and the integer bounds they must keep.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Inputs are multiplied by this (exactly, a power of two) before rounding to `i8`.
pub(crate) const INPUT_SCALE: f32 = 128.0;
/// Quantised inputs are clamped to `[-INPUT_LIMIT, INPUT_LIMIT]`.
pub(crate) const INPUT_LIMIT: i32 = 127;
/// Readout weights saturate at `±READOUT_LIMIT` when learning.
pub(crate) const READOUT_LIMIT: i32 = 32_767;
/// The served readout `A` (`R` in fixed point, 8 fraction bits) stays within `±SERVED_LIMIT`.
pub(crate) const SERVED_LIMIT: i32 = READOUT_LIMIT << 8;

/// Hyper-parameters of the reference spiking network.
///
/// The defaults are the standard model: 768 inputs, 512 hidden neurons, 16 time steps,
/// 10 labels. [`Params::validate`] refuses any combination whose integer arithmetic could
/// overflow `i32`, so no implementation ever needs wider types or wrapping rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Params {
    /// Values per encoding.
    pub inputs: u32,
    /// Hidden LIF neurons (even: the readout is built from antisymmetric pairs).
    pub hidden: u32,
    /// Time steps the input is presented for.
    pub steps: u32,
    /// Output neurons, one per label.
    pub labels: u32,
    /// Hidden membrane leak: `v -= v >> hidden_leak_shift` each step.
    pub hidden_leak_shift: u32,
    /// Hidden neurons spike when `v >= hidden_threshold`, then reset to 0.
    pub hidden_threshold: i32,
    /// Output membrane leak shift.
    pub output_leak_shift: u32,
    /// Output neurons spike when `u >= output_threshold`, then reset to 0.
    pub output_threshold: i32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            inputs: 768,
            hidden: 512,
            steps: 16,
            labels: 10,
            hidden_leak_shift: 2,
            hidden_threshold: 32_768,
            output_leak_shift: 2,
            output_threshold: 1_024,
        }
    }
}

impl Params {
    /// Checks that the network is well formed and that no intermediate value can leave
    /// `i32`: input currents, membrane potentials, readout currents and scores.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] naming the first bound that fails.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |why: String| Err(EngineError::InvalidParams(why));
        if self.inputs == 0 || self.steps == 0 {
            return bad("inputs and steps must be at least 1".into());
        }
        if self.hidden < 2 || !self.hidden.is_multiple_of(2) {
            return bad(format!(
                "hidden must be even and at least 2, got {}",
                self.hidden
            ));
        }
        if self.labels < 2 {
            return bad(format!("labels must be at least 2, got {}", self.labels));
        }
        if self.hidden_threshold <= 0 || self.output_threshold <= 0 {
            return bad("thresholds must be positive".into());
        }
        if self.hidden_leak_shift > 24 || self.output_leak_shift > 24 {
            return bad("leak shifts must be at most 24".into());
        }
        let max = i64::from(i32::MAX);
        // |current| <= inputs · 128 · 127 (weights are i8, quantised inputs in ±127).
        let current = i64::from(self.inputs) * 128 * i64::from(INPUT_LIMIT);
        // With a leak of v >> s the potential stays within (|current| + 1) · 2^s.
        if (current + 1) << self.hidden_leak_shift > max {
            return bad(format!(
                "{} inputs with hidden_leak_shift {} can overflow the membrane",
                self.inputs, self.hidden_leak_shift
            ));
        }
        let readout_current = i64::from(self.hidden) * i64::from(READOUT_LIMIT);
        if (readout_current + 1) << self.output_leak_shift > max {
            return bad(format!(
                "{} hidden neurons with output_leak_shift {} can overflow the output membrane",
                self.hidden, self.output_leak_shift
            ));
        }
        if readout_current * i64::from(self.steps) > max {
            return bad(format!(
                "{} hidden neurons over {} steps can overflow the scores",
                self.hidden, self.steps
            ));
        }
        Ok(())
    }

    /// Number of input weights (`hidden × inputs`).
    pub fn input_weight_count(&self) -> usize {
        self.hidden as usize * self.inputs as usize
    }

    /// Number of readout weights (`labels × hidden`).
    pub fn readout_weight_count(&self) -> usize {
        self.labels as usize * self.hidden as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_valid() {
        Params::default().validate().unwrap();
    }

    #[test]
    fn parameters_that_could_overflow_are_refused_with_the_reason() {
        let too_wide = Params {
            inputs: 1 << 20,
            ..Params::default()
        };
        let err = too_wide.validate().unwrap_err().to_string();
        assert!(err.contains("overflow the membrane"), "{err}");
        let too_long = Params {
            steps: 1 << 12,
            ..Params::default()
        };
        assert!(too_long
            .validate()
            .unwrap_err()
            .to_string()
            .contains("scores"));
        let odd = Params {
            hidden: 511,
            ..Params::default()
        };
        assert!(odd.validate().unwrap_err().to_string().contains("even"));
        let one_label = Params {
            labels: 1,
            ..Params::default()
        };
        assert!(one_label.validate().is_err());
    }
}
