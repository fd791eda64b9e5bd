//! A Python engine's integer outputs made into a `Reasoning`: confidence and result digest
//! computed here, as `docs/engine.md` §5 and §6 specify, so a Python engine's digest
//! compares equal to a Rust engine's for the same outputs.

use pyo3::prelude::*;
use qnllm_engine::{Digest, Reasoning};
use sha2::{Digest as _, Sha256};

/// Domain separator of the result digest (`docs/engine.md` §6).
const RESULT_DOMAIN: &[u8] = b"qnllm-result-v1\0";
/// Confidence sharpness (`docs/engine.md` §5).
const SHARPNESS: i64 = 8;

/// SHA-256 over label, total spikes, label count, scores and label spikes.
pub(crate) fn digest(
    label: u32,
    total_spikes: u32,
    scores: &[i32],
    label_spikes: &[u32],
) -> Digest {
    let mut h = Sha256::new();
    h.update(RESULT_DOMAIN);
    h.update(label.to_le_bytes());
    h.update(total_spikes.to_le_bytes());
    h.update((scores.len() as u32).to_le_bytes());
    for s in scores {
        h.update(s.to_le_bytes());
    }
    for s in label_spikes {
        h.update(s.to_le_bytes());
    }
    Digest(h.finalize().into())
}

/// The base-2 softmax of the winner's score.
pub(crate) fn confidence(scores: &[i32], label: u32) -> f32 {
    let Some(&top) = scores.get(label as usize) else {
        return 0.0;
    };
    let top = i64::from(top);
    let min = scores.iter().copied().min().map_or(top, i64::from);
    if top == min {
        return (1.0 / scores.len() as f64) as f32;
    }
    let total: i64 = scores
        .iter()
        .map(|&s| {
            // A score above the label's own (a lying engine) weighs as much as the top.
            let d = (SHARPNESS * (top - i64::from(s)) / (top - min)).clamp(0, SHARPNESS);
            1i64 << (SHARPNESS - d)
        })
        .sum();
    ((1i64 << SHARPNESS) as f64 / total as f64) as f32
}

/// What a Python engine answered, before it becomes a [`Reasoning`].
#[derive(Debug, Clone)]
pub(crate) struct Outputs {
    pub(crate) label: u32,
    pub(crate) scores: Vec<i32>,
    pub(crate) total_spikes: u32,
    pub(crate) label_spikes: Vec<u32>,
}

impl Outputs {
    /// Reads `(label, scores)`, `(label, scores, total_spikes, label_spikes)`, a mapping or
    /// an object with those names.
    pub(crate) fn extract(value: &Bound<'_, PyAny>) -> Result<Outputs, String> {
        let field = |name: &str, pos: usize| -> Option<Bound<'_, PyAny>> {
            if let Ok(t) = value.cast::<pyo3::types::PyTuple>() {
                return t.get_item(pos).ok();
            }
            if let Ok(d) = value.cast::<pyo3::types::PyDict>() {
                return d.get_item(name).ok().flatten();
            }
            value.getattr(name).ok()
        };
        let label = field("label", 0)
            .ok_or("the result has no label")?
            .extract::<u32>()
            .map_err(|e| format!("label: {e}"))?;
        let scores = field("scores", 1)
            .ok_or("the result has no scores")?
            .extract::<Vec<i32>>()
            .map_err(|e| format!("scores must be integers: {e}"))?;
        let total_spikes = match field("total_spikes", 2) {
            Some(v) => v
                .extract::<u32>()
                .map_err(|e| format!("total_spikes: {e}"))?,
            None => 0,
        };
        let label_spikes = match field("label_spikes", 3) {
            Some(v) => v
                .extract::<Vec<u32>>()
                .map_err(|e| format!("label_spikes: {e}"))?,
            None => vec![0; scores.len()],
        };
        Ok(Outputs {
            label,
            scores,
            total_spikes,
            label_spikes,
        })
    }

    /// Checks the shape against `labels` and computes confidence and digest.
    pub(crate) fn into_reasoning(
        self,
        labels: u32,
        model_version: u64,
        model_digest: Digest,
    ) -> Result<Reasoning, String> {
        let n = labels as usize;
        if self.scores.len() != n || self.label_spikes.len() != n {
            return Err(format!(
                "the engine returned {} scores and {} label spikes; its model has {labels} labels",
                self.scores.len(),
                self.label_spikes.len()
            ));
        }
        if self.label >= labels {
            return Err(format!(
                "the engine returned label {}; its model has labels 0..{labels}",
                self.label
            ));
        }
        Ok(Reasoning {
            confidence: confidence(&self.scores, self.label),
            result_digest: digest(
                self.label,
                self.total_spikes,
                &self.scores,
                &self.label_spikes,
            ),
            label: self.label,
            scores: self.scores,
            total_spikes: self.total_spikes,
            label_spikes: self.label_spikes,
            model_version,
            model_digest,
        })
    }
}

/// The result digest (64 hex digits) of integer outputs, as every engine computes it.
#[pyfunction]
#[pyo3(signature = (label, scores, total_spikes = 0, label_spikes = None))]
pub(crate) fn result_digest(
    label: u32,
    scores: Vec<i32>,
    total_spikes: u32,
    label_spikes: Option<Vec<u32>>,
) -> String {
    let label_spikes = label_spikes.unwrap_or_else(|| vec![0; scores.len()]);
    digest(label, total_spikes, &scores, &label_spikes).to_hex()
}
