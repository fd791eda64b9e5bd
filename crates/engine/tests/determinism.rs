//! Determinism: the same model and input give the same bits whatever the path taken.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::num::NonZeroUsize;

use proptest::prelude::*;
use qnllm_engine::{available_kernels, Engine, Model, NormalInputs, Params, SpikingEngine};

fn engine() -> SpikingEngine {
    SpikingEngine::from_seed(1, Params::default()).unwrap()
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    NormalInputs::new(99, 768).take(n).collect()
}

#[test]
fn a_batch_equals_one_by_one() {
    let engine = engine();
    let xs = inputs(40);
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let batch = engine.reason_batch(&refs).unwrap();
    let single: Vec<_> = xs.iter().map(|x| engine.reason(x).unwrap()).collect();
    assert_eq!(batch, single);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let xs = inputs(37);
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let one = engine().reason_batch(&refs).unwrap();
    for threads in [2, 3, 4, 8] {
        let many = engine()
            .with_threads(NonZeroUsize::new(threads).unwrap())
            .reason_batch(&refs)
            .unwrap();
        assert_eq!(many, one, "{threads} threads");
    }
}

#[test]
fn every_kernel_gives_the_same_bits() {
    let kernels = available_kernels();
    let xs = inputs(30);
    let reference: Vec<_> = xs
        .iter()
        .map(|x| engine().with_kernel(kernels[0]).reason(x).unwrap())
        .collect();
    for &kernel in &kernels[1..] {
        let engine = engine().with_kernel(kernel);
        assert_eq!(engine.kernel(), kernel);
        for (x, want) in xs.iter().zip(&reference) {
            assert_eq!(&engine.reason(x).unwrap(), want, "{}", kernel.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Extreme inputs (saturating the quantiser, all one sign) stress the integer bounds.
    #[test]
    fn kernels_agree_on_arbitrary_finite_inputs(x in proptest::collection::vec(-4.0f32..4.0, 768)) {
        let kernels = available_kernels();
        let want = engine().with_kernel(kernels[0]).reason(&x).unwrap();
        for &kernel in &kernels[1..] {
            prop_assert_eq!(&engine().with_kernel(kernel).reason(&x).unwrap(), &want);
        }
    }
}

#[test]
fn save_then_load_keeps_the_digest_and_the_answers() {
    let dir = std::env::temp_dir().join(format!("qnllm-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let mut engine = engine();
    for (step, x) in inputs(5).iter().enumerate() {
        engine.learn(x, step as u32).unwrap();
    }
    engine.model().save(&path).unwrap();
    let loaded = SpikingEngine::new(Model::load(&path).unwrap());
    assert_eq!(loaded.info(), engine.info());
    assert_eq!(loaded.model(), engine.model());
    assert_eq!(
        loaded.model().served_readout(),
        engine.model().served_readout()
    );
    let x = &inputs(6)[5];
    assert_eq!(loaded.reason(x).unwrap(), engine.reason(x).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_exported_model_imported_into_a_fresh_replica_is_the_same_state() {
    let mut taught = engine();
    for (step, x) in inputs(5).iter().enumerate() {
        taught.learn(x, step as u32).unwrap();
    }
    let bytes = taught.export_model().unwrap();
    let mut replica = engine();
    assert_ne!(replica.digest(), taught.digest());
    replica.import_model(&bytes).unwrap();
    assert_eq!(replica.info(), taught.info());
    // And both learn on from there identically.
    let x = &inputs(6)[5];
    assert_eq!(replica.learn(x, 3).unwrap(), taught.learn(x, 3).unwrap());
    assert_eq!(replica.reason(x).unwrap(), taught.reason(x).unwrap());
}

#[test]
fn importing_garbage_or_another_shape_is_refused_and_leaves_the_model() {
    let mut replica = engine();
    let before = replica.info();
    let err = replica.import_model(b"not a model").unwrap_err();
    assert!(err.to_string().contains("not a safetensors file"), "{err}");
    let small = Params {
        hidden: 64,
        ..Params::default()
    };
    let other = SpikingEngine::from_seed(1, small).unwrap();
    let err = replica
        .import_model(&other.export_model().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("parameters"), "{err}");
    assert_eq!(replica.info(), before);
}

#[test]
fn replicas_that_learn_the_same_sequence_stay_identical() {
    let (mut a, mut b) = (engine(), engine());
    let mut digests = std::collections::HashSet::new();
    let mut changed = 0;
    for (step, x) in NormalInputs::new(5, 768).take(60).enumerate() {
        let label = (step * 7 % 10) as u32;
        let la = a.learn(&x, label).unwrap();
        let lb = b.learn(&x, label).unwrap();
        assert_eq!(la, lb);
        assert_eq!(la.version, step as u64 + 1);
        digests.insert(la.digest);
        changed += usize::from(la.changed);
    }
    assert_eq!(digests.len(), 60, "every update gives a new digest");
    assert!(
        changed > 10,
        "most random labels disagree with the prediction: {changed}"
    );
    assert_eq!(a.model(), b.model());
}

#[test]
fn learning_moves_the_model_toward_the_taught_label() {
    let mut engine = engine();
    let x = inputs(1).remove(0);
    let before = engine.reason(&x).unwrap();
    let target = (before.label + 1) % 10;
    let mut steps = 0;
    while engine.reason(&x).unwrap().label != target {
        engine.learn(&x, target).unwrap();
        steps += 1;
        assert!(steps < 100, "the update never reached the taught label");
    }
    assert!(steps >= 1);
}

#[test]
fn replicas_on_every_kernel_learn_past_the_warm_start_identically() {
    // 300 steps: past the 255 where the served readout's shift settles at 8.
    let kernels = available_kernels();
    let mut replicas: Vec<SpikingEngine> = kernels
        .iter()
        .map(|&k| {
            engine()
                .with_kernel(k)
                .with_threads(NonZeroUsize::new(2).unwrap())
        })
        .collect();
    let probe = &inputs(3)[2];
    let (mut moved, mut kept) = (0, 0);
    // Twelve encodings taught again and again, so the margin is met on some steps.
    let taught: Vec<Vec<f32>> = NormalInputs::new(8, 768).take(12).collect();
    for step in 0..300 {
        let (x, label) = (&taught[step % 12], (step % 12 % 10) as u32);
        let first = replicas[0].learn(x, label).unwrap();
        for replica in &mut replicas[1..] {
            assert_eq!(replica.learn(x, label).unwrap(), first, "step {step}");
        }
        if first.changed {
            moved += 1;
        } else {
            kept += 1;
        }
        if step % 50 == 49 {
            let want = replicas[0].reason(probe).unwrap();
            for replica in &replicas[1..] {
                assert_eq!(replica.reason(probe).unwrap(), want, "step {step}");
            }
        }
    }
    for replica in &replicas[1..] {
        assert_eq!(replica.model(), replicas[0].model());
        assert_eq!(
            replica.model().served_readout(),
            replicas[0].model().served_readout()
        );
    }
    let model = replicas[0].model();
    assert_eq!(model.version(), 300);
    assert!(
        moved > 0 && kept > 0,
        "both branches of the margin: {moved} moved, {kept} kept"
    );
    // Reasoning serves the average, which lags the latest readout.
    assert_ne!(model.reasoning_readout(), model.readout());
    // And a replica that took the file learns on identically.
    let mut copy = engine();
    copy.import_model(&replicas[0].export_model().unwrap())
        .unwrap();
    assert_eq!(copy.model(), model);
    let x = &inputs(4)[3];
    assert_eq!(copy.learn(x, 7).unwrap(), replicas[0].learn(x, 7).unwrap());
    assert_eq!(copy.model(), replicas[0].model());
}
