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

/// Everything that must repeat exactly: accuracies, counts and digests (not the seconds, nor
/// the worker teachers' pids).
fn deterministic(story: &Value) -> Value {
    let mut story = story.clone();
    story.as_object_mut().unwrap().remove("seconds");
    for teacher in story["teachers"].as_array_mut().unwrap() {
        teacher.as_object_mut().unwrap().remove("pid");
    }
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
    let teachers = first["teachers"].as_array().unwrap();
    let kinds: Vec<&str> = teachers
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["rust", "rust", "rust-worker"],
        "the default teachers"
    );
    for t in teachers {
        assert_eq!(t["language"], "Rust");
        assert_eq!(t["same_as_rust"], first["held_out"], "{t}");
    }
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

/// `qnllm learn ARGS` without the discovery variables; its stderr, after checking it failed.
fn learn_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .arg("learn")
        .args(args)
        .env_remove("QNLLM_PYTHON")
        .env_remove("QNLLM_CPP_WORKER")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_python_or_cpp_teacher_without_its_program_is_an_error_naming_the_flag_to_set() {
    let err = learn_fails(&["--teacher-kinds", "rust,python"]);
    assert!(
        err.contains("a python teacher needs an interpreter that can import qnllm: set --python PATH (or QNLLM_PYTHON)"),
        "{err}"
    );
    let err = learn_fails(&["--teacher-kinds", "cpp,rust"]);
    assert!(
        err.contains("a cpp teacher needs the qnllm-cpp-worker binary: set --cpp-worker PATH (or QNLLM_CPP_WORKER)"),
        "{err}"
    );
    let err = learn_fails(&[
        "--teacher-kinds",
        "cpp",
        "--cpp-worker",
        "/nonexistent/qnllm-cpp-worker",
    ]);
    assert!(
        err.contains(
            "--cpp-worker /nonexistent/qnllm-cpp-worker: no such file; build it with `cmake"
        ),
        "{err}"
    );
    let err = learn_fails(&["--teacher-kinds", "cpp", "--cpp-worker", "/"]);
    assert!(
        err.contains("--cpp-worker / is not an executable file"),
        "{err}"
    );
    // An interpreter that cannot run `-m qnllm worker`.
    let err = learn_fails(&["--teacher-kinds", "python", "--python", "/bin/sh"]);
    assert!(
        err.contains("--python /bin/sh cannot run the qnllm worker")
            && err.contains("pip install ./bindings/python"),
        "{err}"
    );
    let err = learn_fails(&[
        "--teacher-kinds",
        "python",
        "--python",
        "/nonexistent/python",
    ]);
    assert!(
        err.contains("--python /nonexistent/python: cannot run it"),
        "{err}"
    );
    // The checks come first: nothing was trained or started.
    assert!(!err.contains("training"), "{err}");
}

#[test]
fn teacher_kinds_that_disagree_with_the_counts_are_one_clear_line() {
    let err = learn_fails(&[
        "--teachers",
        "2",
        "--teacher-kinds",
        "rust,rust-worker,rust",
    ]);
    assert!(
        err.contains("--teachers 2 but --teacher-kinds names 3: name one kind per teacher"),
        "{err}"
    );
    let err = learn_fails(&["--teacher-kinds", "rust,java"]);
    assert!(err.contains("invalid value 'java'"), "{err}");
    let err = learn_fails(&["--teacher-kinds", "rust", "--teacher-workers", "1"]);
    assert!(err.contains("cannot be used with"), "{err}");
}
