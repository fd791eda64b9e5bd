//! Golden vectors for the reference engine: `testdata/engine/golden.json` gives, for model
//! seeds and reference inputs, the exact label, scores, spikes and digests that every
//! implementation in every language must reproduce.
//!
//! `QNLLM_BLESS=1 cargo test -p qnllm-engine --test golden` rewrites the file; a change to
//! it is a change to the specification and needs a reason in the commit.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use qnllm_engine::{Engine, Model, NormalInputs, Params, SpikingEngine};
use serde_json::{json, Value};

fn path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/engine/golden.json")
}

/// A small model so the vectors also cover non-default parameters.
fn small() -> Params {
    Params {
        inputs: 16,
        hidden: 8,
        steps: 4,
        labels: 3,
        hidden_leak_shift: 1,
        hidden_threshold: 2_000,
        output_leak_shift: 1,
        output_threshold: 100,
    }
}

/// (model seed, params name, input seed, index of the input in that seed's stream, learn steps first)
fn cases() -> Vec<(u64, &'static str, u64, usize, usize)> {
    vec![
        (1, "default", 7, 0, 0),
        (1, "default", 7, 1, 0),
        (1, "default", 7, 2, 0),
        (1, "default", 8, 0, 0),
        (2, "default", 7, 0, 0),
        (3, "default", 9, 5, 0),
        (42, "default", 42, 0, 0),
        (1, "small", 7, 0, 0),
        (5, "small", 1, 3, 0),
        (1, "default", 7, 0, 25),
        // Past the served readout's warm start (255 steps), where its shift stays 8.
        (1, "small", 7, 0, 300),
        (5, "small", 1, 3, 40),
    ]
}

fn compute() -> Value {
    let mut out = Vec::new();
    for (model_seed, params_name, input_seed, index, learn_steps) in cases() {
        let params = if params_name == "small" {
            small()
        } else {
            Params::default()
        };
        let mut engine = SpikingEngine::new(Model::from_seed(model_seed, params).unwrap());
        // Learning uses the next inputs of stream `input_seed + 1000`, labelled `step % labels`.
        for (step, x) in NormalInputs::new(input_seed + 1_000, params.inputs as usize)
            .take(learn_steps)
            .enumerate()
        {
            engine.learn(&x, step as u32 % params.labels).unwrap();
        }
        let x = NormalInputs::new(input_seed, params.inputs as usize)
            .nth(index)
            .unwrap();
        let r = engine.reason(&x).unwrap();
        out.push(json!({
            "model_seed": model_seed,
            "params": params_name,
            "input_seed": input_seed,
            "input_index": index,
            "learn_steps": learn_steps,
            "first_inputs": x[..4].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "label": r.label,
            "confidence_bits": r.confidence.to_bits(),
            "confidence": r.confidence,
            "scores": r.scores,
            "total_spikes": r.total_spikes,
            "label_spikes": r.label_spikes,
            "model_version": r.model_version,
            "model_digest": r.model_digest.to_hex(),
            "result_digest": r.result_digest.to_hex(),
        }));
    }
    json!({
        "about": "qnllm reference engine golden vectors; see docs/engine.md. first_inputs are f32 bit patterns of the first four input values.",
        "small_params": small(),
        "default_params": Params::default(),
        "cases": out,
    })
}

#[test]
fn engine_reproduces_every_golden_vector() {
    let computed = compute();
    if std::env::var_os("QNLLM_BLESS").is_some() {
        std::fs::write(
            path(),
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let stored_cases = stored["cases"].as_array().unwrap();
    assert!(stored_cases.len() >= 8);
    assert_eq!(
        stored["default_params"], computed["default_params"],
        "the default parameters changed"
    );
    for (want, got) in stored_cases
        .iter()
        .zip(computed["cases"].as_array().unwrap())
    {
        assert_eq!(want, got, "golden case differs");
    }
    assert_eq!(stored_cases.len(), cases().len());
}
