//! `Reasoning`: what one forward pass answers, with its confidence and result digest.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::kernel::Activity;

/// Domain separator at the start of every result digest.
const RESULT_DOMAIN: &[u8] = b"qnllm-result-v1\0";

/// How sharply confidence favours the top score; see [`confidence`].
const SHARPNESS: i64 = 8;

/// The answer of an engine for one encoding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reasoning {
    /// The label with the highest score (the lowest such label on a tie).
    pub label: u32,
    /// In `[1/labels, 1)`, from the integer scores; not covered by the result digest.
    pub confidence: f32,
    /// Integer readout score per label.
    pub scores: Vec<i32>,
    /// Hidden-neuron spikes over all steps.
    pub total_spikes: u32,
    /// Output-neuron spikes per label.
    pub label_spikes: Vec<u32>,
    /// Version of the model that answered.
    pub model_version: u64,
    /// Digest of the model that answered.
    pub model_digest: Digest,
    /// SHA-256 over the integer outputs: label, total spikes, scores, label spikes.
    pub result_digest: Digest,
}

impl Reasoning {
    pub(crate) fn from_activity(
        activity: &Activity,
        model_version: u64,
        model_digest: Digest,
    ) -> Reasoning {
        let label = argmax(&activity.scores);
        Reasoning {
            label,
            confidence: confidence(&activity.scores, label),
            scores: activity.scores.clone(),
            total_spikes: activity.total_spikes,
            label_spikes: activity.label_spikes.clone(),
            model_version,
            model_digest,
            result_digest: result_digest(
                label,
                activity.total_spikes,
                &activity.scores,
                &activity.label_spikes,
            ),
        }
    }

    /// The result digest its integer outputs call for: a reply whose `result_digest`
    /// differs was altered or computed wrongly.
    pub fn expected_result_digest(&self) -> Digest {
        result_digest(
            self.label,
            self.total_spikes,
            &self.scores,
            &self.label_spikes,
        )
    }
}

/// SHA-256 over the domain separator and the integer outputs, as `docs/engine.md` says.
fn result_digest(label: u32, total_spikes: u32, scores: &[i32], label_spikes: &[u32]) -> Digest {
    let mut h = Sha256::new();
    h.update(RESULT_DOMAIN);
    h.update(label.to_le_bytes());
    h.update(total_spikes.to_le_bytes());
    h.update((scores.len() as u32).to_le_bytes());
    for score in scores {
        h.update(score.to_le_bytes());
    }
    for spikes in label_spikes {
        h.update(spikes.to_le_bytes());
    }
    Digest(h.finalize().into())
}

/// Index of the highest score; the lowest index wins a tie.
pub(crate) fn argmax(scores: &[i32]) -> u32 {
    let mut best = 0;
    for (k, &score) in scores.iter().enumerate() {
        if score > scores[best] {
            best = k;
        }
    }
    best as u32
}

/// A base-2 softmax over the scores, exact in every language.
///
/// With `top` and `min` the highest and lowest scores, each label gets
/// `d = ⌊8 · (top − score) / (top − min)⌋` and weight `2^(8 − d)`; confidence is the winner's
/// weight over the sum of weights, divided in `f64` and rounded once to `f32`. When all scores
/// are equal it is `1 / labels`.
pub(crate) fn confidence(scores: &[i32], label: u32) -> f32 {
    let top = i64::from(scores[label as usize]);
    let min = scores.iter().copied().min().map_or(top, i64::from);
    if top == min {
        return (1.0 / scores.len() as f64) as f32;
    }
    let total: i64 = scores
        .iter()
        .map(|&s| {
            let d = SHARPNESS * (top - i64::from(s)) / (top - min);
            1i64 << (SHARPNESS - d)
        })
        .sum();
    ((1i64 << SHARPNESS) as f64 / total as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_lowest_label_on_a_tie() {
        assert_eq!(argmax(&[1, 5, 5, 2]), 1);
        assert_eq!(argmax(&[-3, -3]), 0);
        assert_eq!(argmax(&[-9, -3, -4]), 1);
    }

    #[test]
    fn confidence_follows_the_margin() {
        let flat = confidence(&[4, 4, 4, 4], 0);
        assert_eq!(flat, 0.25);
        let clear = confidence(&[100, 0, 0, 0], 0);
        assert_eq!(clear, (256.0f64 / 259.0) as f32);
        let close = confidence(&[100, 99, 0, 0], 0);
        assert!(close < 0.55 && close > 0.45, "{close}");
        assert!(clear > close && close > flat);
    }
}
