//! Smoke tests of `qnllm_bench::run`: a very short run of every row produces that row, with
//! its ratios over the baselines it names, or a skip that says what is missing; and the
//! bench leaves no server process behind. No figure is judged: speed lives in the report.
//!
//! The bench starts its servers from its own executable with the hidden `bench-server`
//! subcommand, so this test binary (no libtest harness) serves that subcommand too.

use std::path::PathBuf;
use std::process::ExitCode;

use qnllm_bench::{BenchConfig, BenchError, Group, Report, Row};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(qnllm_bench::SUBCOMMAND) {
        return match qnllm_bench::serve(args.get(2).map_or("", String::as_str)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in TESTS {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("test result: {passed} passed; {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

const TESTS: [(&str, fn()); 5] = [
    (
        "a_short_run_reports_every_row_or_says_why_not",
        a_short_run_reports_every_row_or_says_why_not,
    ),
    (
        "a_cpp_worker_not_built_is_skipped_with_how_to_build_it",
        a_cpp_worker_not_built_is_skipped_with_how_to_build_it,
    ),
    (
        "a_bad_server_role_is_a_clear_error",
        a_bad_server_role_is_a_clear_error,
    ),
    (
        "a_missing_executable_is_a_clear_error",
        a_missing_executable_is_a_clear_error,
    ),
    (
        "a_failed_run_removes_its_folder",
        a_failed_run_removes_its_folder,
    ),
];

/// The workspace's root, where the C++ worker is built.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A run of 3 round trips and 6 pipelined requests per path and round, 2 rounds.
fn short(dir: &str) -> BenchConfig {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut config = BenchConfig::new(exe, 6, 12);
    config.window = 2;
    config.rounds = 2;
    config.idle_connections = 4;
    config.dir =
        std::env::temp_dir().join(format!("qnllm-bench-smoke-{dir}-{}", std::process::id()));
    config
}

fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(qnllm_bench::run(config, |_, _| {}))
}

/// This process's children still alive (or not yet reaped).
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Field 4, after the command name in parentheses, is the parent's pid.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                    .unwrap_or(false)
            })
        })
        .collect()
}

fn find<'a>(report: &'a Report, path: &str) -> &'a Row {
    report
        .rows
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no row {path:?} in {:?}", names(report)))
}

fn names(report: &Report) -> Vec<&str> {
    report.rows.iter().map(|r| r.path.as_str()).collect()
}

/// A row measured in the rounds: 2 × 3 round trips, pipelined requests answered, and its
/// ratios over the baselines it names.
fn measured(row: &Row, group: Group, baseline: Option<&str>, second: Option<&str>) {
    assert_eq!(row.group, group, "{row:?}");
    let latency = row.latency.unwrap_or_else(|| panic!("no latency: {row:?}"));
    assert_eq!(latency.count, 6, "{row:?}");
    assert!(
        latency.p50_us > 0.0 && latency.p99_us >= latency.p50_us,
        "{row:?}"
    );
    assert!(row.throughput.is_some_and(|t| t > 0.0), "{row:?}");
    assert!(row.loaded.is_some_and(|l| l.count >= 12), "{row:?}");
    assert_eq!(
        row.distribution.len(),
        qnllm_bench::DISTRIBUTION_POINTS,
        "{row:?}"
    );
    assert_eq!(row.baseline.as_deref(), baseline, "{row:?}");
    assert_eq!(row.p50_ratio.is_some(), baseline.is_some(), "{row:?}");
    assert_eq!(row.second_baseline.as_deref(), second, "{row:?}");
    assert_eq!(row.relay_p50_ratio.is_some(), second.is_some(), "{row:?}");
}

fn a_short_run_reports_every_row_or_says_why_not() {
    let mut config = short("all");
    config.nats = true;
    config.cpp_worker = Some(root().join(qnllm_bench::default_cpp_worker()));
    let cpp_built = config.cpp_worker.as_ref().is_some_and(|p| p.is_file());
    let report = run(&config).expect("the short run completes");
    assert_eq!(report.rounds, 2);

    let hub = "qnllm TCP, fixed engine";
    let (pp, relay) = ("raw TCP ping-pong", "raw TCP relay");
    measured(find(&report, pp), Group::Socket, None, None);
    measured(find(&report, relay), Group::Socket, Some(pp), None);
    measured(find(&report, hub), Group::Socket, Some(pp), Some(relay));
    let unix = "raw Unix ping-pong";
    measured(
        find(&report, "qnllm Unix, default engine"),
        Group::Socket,
        Some(unix),
        Some("raw Unix relay"),
    );
    assert!(report.engine_share.is_some_and(|s| s > 0.0));
    assert!(report.memory.is_some_and(|m| m.connections == 4));

    // The front: each protocol over its own floor, and over that floor plus the hub path.
    let (echo, empty) = ("axum echo, binary body", "tonic empty service");
    measured(find(&report, echo), Group::Front, None, None);
    measured(find(&report, empty), Group::Front, None, None);
    for (path, floor) in [
        ("HTTP JSON → hub → worker", echo),
        ("HTTP binary → hub → worker", echo),
        ("gRPC → hub → worker", empty),
    ] {
        let sum = format!("{floor} + {hub}");
        measured(find(&report, path), Group::Front, Some(floor), Some(&sum));
    }

    // The C++ worker, over the Rust worker on the same path, or a skip saying how to build it.
    let rust = "Rust worker, TCP, default engine";
    if cpp_built {
        measured(find(&report, rust), Group::Cpp, None, Some(relay));
        measured(
            find(&report, "C++ worker, TCP, default engine"),
            Group::Cpp,
            Some(rust),
            Some(relay),
        );
    } else {
        assert!(!names(&report).contains(&rust), "{:?}", names(&report));
        let skip = report.skipped.iter().find(|s| s.rows == "C++ worker");
        assert!(
            skip.is_some_and(|s| s.reason.contains(qnllm_bench::CPP_BUILD)),
            "{:?}",
            report.skipped
        );
    }

    // NATS, over raw NATS request-reply and the direct hub path, or a skip saying why.
    let raw_nats = "raw NATS request-reply";
    if let Some(skip) = report.skipped.iter().find(|s| s.rows == "NATS") {
        assert!(skip.reason.contains("nats-server"), "{skip:?}");
        assert!(!names(&report).contains(&raw_nats));
    } else {
        measured(find(&report, raw_nats), Group::Nats, None, None);
        measured(
            find(&report, "NATS → worker, fixed engine"),
            Group::Nats,
            Some(raw_nats),
            Some(hub),
        );
    }

    // Every server the run started has ended with it.
    assert_eq!(
        children(),
        Vec::<u32>::new(),
        "server processes left behind"
    );
    assert!(!config.dir.exists(), "the socket directory is removed");
}

fn a_cpp_worker_not_built_is_skipped_with_how_to_build_it() {
    let mut config = short("nocpp");
    config.core = false;
    config.front = false;
    config.cpp_worker = Some(PathBuf::from("/nonexistent/qnllm-cpp-worker"));
    let report = run(&config).expect("a run without the C++ worker completes");
    let skip = report
        .skipped
        .iter()
        .find(|s| s.rows == "C++ worker")
        .expect("the C++ rows are skipped");
    assert!(
        skip.reason.contains("/nonexistent/qnllm-cpp-worker"),
        "{skip:?}"
    );
    assert!(skip.reason.contains(qnllm_bench::CPP_BUILD), "{skip:?}");
    assert!(skip.reason.contains("--cpp-worker"), "{skip:?}");
    assert!(report.rows.iter().all(|r| r.group != Group::Cpp));
    // Without the core rows: the TCP baselines and the hub path the others compare with.
    assert_eq!(
        names(&report),
        [
            "raw TCP ping-pong",
            "raw TCP relay",
            "qnllm TCP, fixed engine"
        ]
    );
    assert_eq!(
        children(),
        Vec::<u32>::new(),
        "server processes left behind"
    );
}

fn a_bad_server_role_is_a_clear_error() {
    let err = qnllm_bench::serve(r#"{"role":"teapot"}"#).expect_err("an unknown role");
    assert!(matches!(err, BenchError::Role { .. }), "{err:?}");
    assert!(err.to_string().contains("teapot"), "{err}");
}

fn a_missing_executable_is_a_clear_error() {
    let mut config = short("noexe");
    config.exe = PathBuf::from("/nonexistent/qnllm");
    let err = run(&config).expect_err("no servers can start");
    assert!(matches!(err, BenchError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/qnllm"), "{err}");
}

fn a_failed_run_removes_its_folder() {
    let mut config = short("failed");
    config.exe = PathBuf::from("/nonexistent/qnllm");
    run(&config).expect_err("no servers can start");
    assert!(
        !config.dir.exists(),
        "a failed run leaves its folder behind: {}",
        config.dir.display()
    );
}
