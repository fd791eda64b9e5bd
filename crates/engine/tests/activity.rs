//! The default model is not degenerate on inputs drawn as the original design draws them
//! (normal, mean 0, σ 0.1): answers cover every label, hidden neurons fire at a moderate rate,
//! output neurons fire, and confidence varies.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};

fn run(n: usize) -> (Params, Vec<qnllm_engine::Reasoning>) {
    let params = Params::default();
    let engine = SpikingEngine::from_seed(1, params).unwrap();
    let xs: Vec<Vec<f32>> = NormalInputs::new(2024, params.inputs as usize)
        .take(n)
        .collect();
    (
        params,
        xs.iter().map(|x| engine.reason(x).unwrap()).collect(),
    )
}

#[test]
fn answers_spread_over_every_label() {
    let (params, results) = run(1_000);
    let mut counts = vec![0usize; params.labels as usize];
    for r in &results {
        counts[r.label as usize] += 1;
    }
    // A uniform spread gives 100 each; no label may be starved or dominate.
    assert!(
        counts.iter().all(|&c| (40..=200).contains(&c)),
        "label counts {counts:?}"
    );
}

#[test]
fn hidden_spike_rates_are_neither_silent_nor_saturated() {
    let (params, results) = run(300);
    let possible = f64::from(params.hidden * params.steps);
    let rates: Vec<f64> = results
        .iter()
        .map(|r| f64::from(r.total_spikes) / possible)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    assert!(
        (0.05..=0.5).contains(&mean),
        "mean hidden spike rate {mean}"
    );
    assert!(
        rates.iter().all(|&r| r > 0.01 && r < 0.9),
        "some input silenced or saturated the network"
    );
    let label_spikes: u64 = results
        .iter()
        .flat_map(|r| &r.label_spikes)
        .map(|&s| u64::from(s))
        .sum();
    assert!(
        label_spikes > results.len() as u64,
        "output neurons hardly fire: {label_spikes}"
    );
}

#[test]
fn confidence_varies_and_stays_in_range() {
    let (params, results) = run(500);
    let mut confidence: Vec<f32> = results.iter().map(|r| r.confidence).collect();
    assert!(confidence
        .iter()
        .all(|&c| c >= 1.0 / params.labels as f32 && c <= 1.0));
    confidence.sort_by(f32::total_cmp);
    let (p5, p95) = (confidence[25], confidence[475]);
    assert!(
        p95 - p5 > 0.2,
        "confidence hardly varies: p5 {p5}, p95 {p95}"
    );
    confidence.dedup();
    assert!(
        confidence.len() > 50,
        "only {} distinct confidences",
        confidence.len()
    );
}
