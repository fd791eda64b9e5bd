//! `qnllm learn` as a user runs it: real worker processes hold student replicas that learn
//! only from the teachers' consensus; held-out accuracy rises, replicas stay identical, and a
//! second run gives the same figures and digests.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::process::Command;

use serde_json::Value;

fn learn(extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(["learn", "--json", "--passes", "2", "--workers", "2"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Everything that must repeat exactly: accuracies, counts and digests (not the seconds).
fn deterministic(story: &Value) -> Value {
    let mut story = story.clone();
    story.as_object_mut().unwrap().remove("seconds");
    story
}

#[test]
fn the_student_gains_40_points_from_the_teachers_alone_with_identical_replicas_every_run() {
    let dir = std::env::temp_dir().join(format!("qnllm-learn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("learn.svg");
    let first = learn(&["--plot", plot.to_str().unwrap()]);
    let before = first["student_before"].as_f64().unwrap();
    let after = first["student_after"].as_f64().unwrap();
    assert!(
        after >= before + 0.40,
        "held-out accuracy {before:.3} → {after:.3}: the student must gain 40 points"
    );
    let passes = first["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 2);
    for pass in passes {
        let digests = pass["digests"].as_array().unwrap();
        assert_eq!(digests.len(), 3, "the local engine and two workers");
        assert!(digests.windows(2).all(|w| w[0][1] == w[1][1]), "{pass}");
        assert_eq!(pass["identical"], true);
    }
    assert_eq!(first["teachers"].as_array().unwrap().len(), 3);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let second = learn(&[]);
    assert_eq!(deterministic(&first), deterministic(&second));
}

#[test]
fn a_bad_policy_or_split_is_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(["learn", "--policy", "loudest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown consensus policy `loudest`"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(["learn", "--labels", "1000", "--unlabelled", "900"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every part needs one"), "{err}");
}
