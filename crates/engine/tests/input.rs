//! Bad input gets an error that says which value and why; the engine keeps serving.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use qnllm_engine::{Engine, EngineError, NormalInputs, Params, SpikingEngine};

fn engine() -> SpikingEngine {
    SpikingEngine::from_seed(1, Params::default()).unwrap()
}

#[test]
fn wrong_length_says_both_lengths() {
    let err = engine().reason(&[0.0; 767]).unwrap_err();
    assert!(matches!(
        err,
        EngineError::WrongLength {
            expected: 768,
            found: 767
        }
    ));
    assert_eq!(
        err.to_string(),
        "encoding has 767 values, the model takes 768"
    );
    assert!(engine().reason(&[]).is_err());
}

#[test]
fn non_finite_values_name_their_index() {
    for (index, value, shown) in [
        (5, f32::NAN, "NaN"),
        (0, f32::INFINITY, "inf"),
        (767, f32::NEG_INFINITY, "-inf"),
    ] {
        let mut x = vec![0.1; 768];
        x[index] = value;
        let err = engine().reason(&x).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("value at index {index} is {shown}: encodings must be finite")
        );
    }
}

#[test]
fn a_bad_encoding_in_a_batch_is_named_and_nothing_runs() {
    let engine = engine();
    let good = vec![0.0; 768];
    let mut bad = vec![0.0; 768];
    bad[3] = f32::NAN;
    let err = engine.reason_batch(&[&good, &good, &bad]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "encoding 2 of the batch: value at index 3 is NaN: encodings must be finite"
    );
}

#[test]
fn learning_refuses_unknown_labels_and_leaves_the_model_alone() {
    let mut engine = engine();
    let before = engine.info();
    let err = engine.learn(&[0.0; 768], 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label 10 is out of range: the model has labels 0..10"
    );
    assert!(engine.learn(&[f32::NAN; 768], 1).is_err());
    assert_eq!(engine.info(), before);
}

#[test]
fn the_engine_keeps_serving_after_bad_input() {
    let engine = engine();
    let x = NormalInputs::new(1, 768).next().unwrap();
    let before = engine.reason(&x).unwrap();
    let _ = engine.reason(&[f32::NAN; 768]);
    let _ = engine.reason(&[0.0; 3]);
    assert_eq!(engine.reason(&x).unwrap(), before);
}

#[test]
fn large_but_finite_values_saturate_instead_of_failing() {
    let engine = engine();
    let r = engine.reason(&[f32::MAX; 768]).unwrap();
    let s = engine.reason(&[-f32::MAX; 768]).unwrap();
    assert!(r.confidence > 0.0 && s.confidence > 0.0);
}
