//! The `qnllm` binary, run as a user runs it.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn qnllm(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn digests(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["result_digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn random_reasoning_prints_the_same_digests_on_every_run() {
    let first = qnllm(&["reason", "--random", "3", "--seed", "7", "--json"], "");
    assert!(first.status.success(), "{}", stderr(&first));
    let again = qnllm(
        &[
            "reason",
            "--random",
            "3",
            "--seed",
            "7",
            "--json",
            "--threads",
            "2",
        ],
        "",
    );
    assert_eq!(digests(&first).len(), 3);
    assert_eq!(digests(&first), digests(&again));
    let other_seed = qnllm(&["reason", "--random", "3", "--seed", "8", "--json"], "");
    assert_ne!(digests(&first), digests(&other_seed));
    // The first result is the engine's first golden vector (model seed 1, input seed 7, #0).
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/engine/golden.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        digests(&first)[0],
        golden["cases"][0]["result_digest"].as_str().unwrap()
    );
}

#[test]
fn the_table_has_a_row_per_encoding() {
    let out = qnllm(&["reason", "--random", "4"], "");
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("result digest"));
    assert!(text.contains("4 encodings"));
}

#[test]
fn json_lines_on_stdin_are_reasoned_over() {
    let encoding: Vec<f32> = (0..768).map(|i| ((i % 7) as f32 - 3.0) * 0.03).collect();
    let line = serde_json::to_string(&encoding).unwrap();
    let object = serde_json::json!({ "encoding": encoding }).to_string();
    let out = qnllm(&["reason", "--json"], &format!("{line}\n\n{object}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let digests = digests(&out);
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn a_wrong_length_is_one_clear_line_and_a_failure_exit() {
    let short = serde_json::to_string(&vec![0.0f32; 767]).unwrap();
    let out = qnllm(&["reason"], &format!("{short}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: encoding 0 of the batch: encoding has 767 values, the model takes 768"
    );
}

#[test]
fn non_numbers_and_non_json_name_the_line() {
    let out = qnllm(&["reason"], "[1, 2]\n[1, \"x\"]\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 2: value 1 is not a number"),
        "{}",
        stderr(&out)
    );
    let out = qnllm(&["reason"], "NaN\n");
    assert!(
        stderr(&out).contains("line 1: not JSON"),
        "{}",
        stderr(&out)
    );
    let out = qnllm(&["reason"], "");
    assert!(
        stderr(&out).contains("no encodings given"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_nan_in_an_npy_file_is_named_by_index() {
    let dir = std::env::temp_dir().join(format!("qnllm-cli-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.npy");
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 768), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    let mut values = vec![0.05f32; 2 * 768];
    values[768 + 9] = f32::NAN;
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(&path, bytes).unwrap();
    let out = qnllm(&["reason", "--npy", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("encoding 1 of the batch: value at index 9 is NaN"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_model_names_and_files_are_refused_clearly() {
    let out = qnllm(&["info", "--model", "seed:x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the seed must be an unsigned integer"));
    let out = qnllm(&["info", "--model", "/nonexistent/model.safetensors"], "");
    assert!(stderr(&out).contains("neither seed:N nor an existing file"));
    let out = qnllm(&["info", "--model", env!("CARGO_MANIFEST_DIR")], "");
    assert_eq!(out.status.code(), Some(1));
    let out = qnllm(&["reason", "--random"], "");
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn an_exported_model_loads_with_the_same_digest() {
    let dir = std::env::temp_dir().join(format!("qnllm-cli-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let out = qnllm(&["export", "--model", "seed:3", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let info = |model: &str| {
        let out = qnllm(&["info", "--json", "--model", model], "");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["model"]["digest"].clone()
    };
    assert_eq!(info(path.to_str().unwrap()), info("seed:3"));
    assert_ne!(info("seed:3"), info("seed:4"));
    std::fs::write(&path, b"not a model").unwrap();
    let out = qnllm(&["info", "--model", path.to_str().unwrap()], "");
    assert!(
        stderr(&out).contains("not a safetensors file"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
