//! A real hub and real worker processes on 127.0.0.1:0, with real signals: failover under
//! SIGKILL, death by SIGSTOP, restarts, and clean exits on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::NormalInputs;
use qnllm_hub::Client;

mod common;

use common::hub::{hub, runtime, wait_for_engines};
use common::proc::Proc;

const WAIT: Duration = Duration::from_secs(30);

fn worker(addr: &str, name: &str) -> Proc {
    common::hub::worker(addr, name, &[])
}

async fn client(addr: &str) -> Client {
    common::hub::client(addr, "test").await
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reason_through_the_hub_reaches_both_workers_with_the_local_digests() {
    // One thread each for the hub and one worker: the answers do not depend on it.
    let (_hub, addr) = hub(&["--threads", "1"]);
    let _w1 = Proc::spawn(&[
        "worker",
        "--connect",
        &addr,
        "--name",
        "w1",
        "--threads",
        "1",
    ])
    .0;
    let _w2 = worker(&addr, "w2");
    runtime().block_on(async { wait_for_engines(&client(&addr).await, &["w1", "w2"]).await });
    let qnllm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qnllm"))
            .args(args)
            .output()
            .unwrap()
    };
    let remote = qnllm(&["reason", "--connect", &addr, "--random", "10", "--json"]);
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let local = qnllm(&["reason", "--random", "10", "--json"]);
    let (remote, local) = (json_lines(&remote.stdout), json_lines(&local.stdout));
    assert_eq!(remote.len(), 10);
    for (r, l) in remote.iter().zip(&local) {
        assert_eq!(r["result_digest"], l["result_digest"]);
    }
    let engines: std::collections::BTreeSet<&str> = remote
        .iter()
        .map(|r| r["engine"].as_str().unwrap())
        .collect();
    assert_eq!(engines.into_iter().collect::<Vec<_>>(), ["w1", "w2"]);
}

#[test]
fn sigkill_of_a_worker_with_1000_requests_in_flight_loses_none() {
    let (_hub, addr) = hub(&[]);
    let (w1, _w2) = (worker(&addr, "w1"), worker(&addr, "w2"));
    runtime().block_on(async {
        let client = Arc::new(client(&addr).await);
        wait_for_engines(&client, &["w1", "w2"]).await;
        let inputs: Vec<Vec<f32>> = NormalInputs::new(11, 768).take(1_000).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for x in inputs {
            let (client, done) = (client.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = client.reason(&x, WAIT).await;
                done.fetch_add(1, Ordering::Relaxed);
                outcome
            }));
        }
        // Kill one worker while most requests are still in flight.
        while done.load(Ordering::Relaxed) < 50 {
            tokio::task::yield_now().await;
        }
        w1.signal("KILL");
        let mut ok = 0;
        let mut engines = std::collections::BTreeMap::<String, usize>::new();
        for task in tasks {
            // Every request ends with exactly one outcome; the join cannot hang past WAIT.
            if let Ok(answer) = task.await.unwrap() {
                ok += 1;
                *engines.entry(answer.engine).or_default() += 1;
            }
        }
        assert_eq!(ok, 1_000, "failover answered every request: {engines:?}");
        assert!(engines.get("w2").copied().unwrap_or(0) > 0);
        let metrics = wait_for_engines(&client, &["w2"]).await;
        assert_eq!(metrics["engines_lost"], 1, "{metrics}");
        assert!(
            metrics["failed_over"].as_u64().unwrap() > 0,
            "requests were in flight on the killed worker: {metrics}"
        );
        assert!(
            client.reason(&[0.0; 768], WAIT).await.is_ok(),
            "the hub keeps serving"
        );
    });
}

#[test]
fn a_stopped_worker_is_declared_dead_and_comes_back_when_continued() {
    let (hub, addr) = hub(&[
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "400",
    ]);
    let w = worker(&addr, "w");
    runtime().block_on(async {
        let client = client(&addr).await;
        wait_for_engines(&client, &["w"]).await;
        w.signal("STOP");
        wait_for_engines(&client, &[]).await;
        hub.wait_for_log("missed heartbeats");
        w.signal("CONT");
        // The hub closed the dead session, so the worker reconnects and registers again.
        wait_for_engines(&client, &["w"]).await;
        assert!(client.reason(&[0.0; 768], WAIT).await.is_ok());
    });
}

#[test]
fn workers_come_back_by_themselves_when_the_hub_restarts() {
    let (mut first, addr) = hub(&[]);
    let (_w1, _w2) = (worker(&addr, "w1"), worker(&addr, "w2"));
    let rt = runtime();
    rt.block_on(async { wait_for_engines(&client(&addr).await, &["w1", "w2"]).await });
    first.signal("TERM");
    assert_eq!(
        first.exit_code(),
        Some(0),
        "graceful shutdown exits 0:\n{}",
        first.log()
    );
    first.wait_for_log("hub stopped");
    let (_second, again) = hub(&["--listen", &addr]);
    assert_eq!(again, addr);
    rt.block_on(async {
        let client = client(&addr).await;
        wait_for_engines(&client, &["w1", "w2"]).await;
        assert!(client.reason(&[0.0; 768], WAIT).await.is_ok());
    });
}

#[test]
fn sigterm_makes_a_worker_drain_and_leave_cleanly() {
    let (hub, addr) = hub(&[]);
    let mut w = worker(&addr, "w");
    runtime().block_on(async { wait_for_engines(&client(&addr).await, &["w"]).await });
    w.signal("TERM");
    assert_eq!(w.exit_code(), Some(0), "{}", w.log());
    runtime().block_on(async { wait_for_engines(&client(&addr).await, &[]).await });
    hub.wait_for_log("worker said goodbye");
}

#[test]
fn a_worker_that_cannot_reach_a_hub_gives_up_after_max_retries() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut w, _) = Proc::spawn(&[
        "worker",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--max-retries",
        "2",
    ]);
    assert_eq!(w.exit_code(), Some(1));
    assert!(
        w.log().contains("gave up after 3 failed attempts"),
        "{}",
        w.log()
    );
}

#[test]
fn serving_beyond_loopback_without_a_token_is_refused_with_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("QNLLM_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without an auth token") && err.contains("--token"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_all_seven_scenarios_and_passes_them() {
    // As on a machine without the Python bindings or the C++ worker: Rust teachers only.
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(["demo", "--requests", "100", "--steps", "200", "--json"])
        .env("QNLLM_PYTHON", "/nonexistent/python")
        .env("QNLLM_CPP_WORKER", "/nonexistent/qnllm-cpp-worker")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scenarios = report.as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "basic reasoning",
            "batch processing",
            "redundant verification",
            "multi-teacher coordination",
            "strategy comparison",
            "cache effectiveness",
            "server monitoring"
        ]
    );
    for s in scenarios {
        assert_eq!(s["passed"], true, "{s}");
        assert!(!s["lines"].as_array().unwrap().is_empty());
    }
    // Scenario 4 says which teachers it ran and why not the others.
    let lines: Vec<&str> = scenarios[3]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines.contains(&"teachers: teacher-0 Rust (the hub's process), teacher-1 Rust (qnllm worker --teacher), teacher-2 Rust (qnllm worker --teacher)"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("no Python teacher (a Rust worker instead): --python /nonexistent/python: cannot run it")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("no C++ teacher (a Rust worker instead): --cpp-worker /nonexistent/qnllm-cpp-worker: no such file")),
        "{lines:?}"
    );
}

#[test]
fn stats_shows_the_engines_of_a_running_hub() {
    let (_hub, addr) = hub(&["--local", "1"]);
    let _w = worker(&addr, "w1");
    runtime().block_on(async {
        let client = client(&addr).await;
        wait_for_engines(&client, &["local-0", "w1"]).await;
        for x in NormalInputs::new(1, 768).take(4) {
            client.reason(&x, WAIT).await.unwrap();
        }
    });
    let qnllm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qnllm"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = qnllm(&["stats", "--connect", &addr, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let engines = metrics["router"]["engines"].as_array().unwrap();
    let requests: u64 = engines
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 4);
    let table = qnllm(&["stats", "--connect", &addr]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("local-0") && text.contains("w1") && text.contains("p99 µs"),
        "{text}"
    );
    let refused = qnllm(&["stats", "--connect", "127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot connect"));
}

#[test]
fn bench_smoke_run_reports_every_path_with_ratios() {
    let chart = std::env::temp_dir().join(format!("qnllm-bench-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args([
            "bench",
            // The socket paths only: the C++, front and NATS rows have their own smoke test
            // in crates/bench/tests/smoke.rs.
            "--no-cpp",
            "--no-front",
            "--requests",
            "20",
            "--pipelined",
            "200",
            "--window",
            "8",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--connections",
            "20",
            "--plot",
            chart.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["window"], 8);
    assert_eq!(report["clients"], 2);
    assert_eq!(report["rounds"], 2);
    let memory = &report["memory"];
    assert_eq!(memory["connections"], 20);
    assert!(memory["idle_kib"].as_u64().unwrap() > 0, "{memory}");
    assert!(
        memory["loaded_kib"].as_u64().unwrap() >= memory["idle_kib"].as_u64().unwrap(),
        "{memory}"
    );
    assert!(
        report["request_bytes"].as_u64().unwrap() > 3_072,
        "a 768-value reason frame"
    );
    let rows = report["rows"].as_array().unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    // One reason_batch row per thread count: one thread, and every core if there are more;
    // and the saturated-deadline row.
    let cores = std::thread::available_parallelism().unwrap().get();
    // And two abusive-neighbour rows: a quiet client alone, and beside a flood.
    let expected = if cores > 1 { 18 } else { 17 };
    assert_eq!(paths.len(), expected, "{paths:?}");
    assert!(report["engine_share"].as_f64().unwrap() > 0.0);
    assert!(paths.contains(&"qnllm Unix, fixed, busy-poll"), "{paths:?}");
    let beside = rows
        .iter()
        .find(|r| r["path"] == "abusive neighbour: quiet client beside a flood")
        .unwrap();
    assert!(beside["p99_ratio"].as_f64().unwrap() > 0.0, "{beside}");
    // The saturated-deadline row accounts for every request it sent: on time, late, or
    // DeadlineExceeded (its latency columns, which are lateness after the deadline).
    let (saturated, rows): (Vec<_>, Vec<_>) = rows
        .iter()
        .partition(|r| r["path"].as_str().unwrap().starts_with("saturated"));
    let saturated = saturated[0];
    let exceeded = saturated["latency"]["count"].as_u64().unwrap_or(0);
    let answered =
        saturated["on_time"].as_u64().unwrap() + saturated["past_deadline"].as_u64().unwrap();
    assert_eq!(exceeded + answered, 200, "{saturated}");
    // The hub counted, on its own clock, every DeadlineExceeded its alarm gave and every
    // late answer it held back, as the client saw them.
    let by = |who: &str| saturated["deadline_exceeded_by"][who].as_u64().unwrap_or(0);
    let hub = &saturated["hub_deadlines"];
    let counted =
        by("hub alarm, routed") + by("hub alarm, waiting for a router slot") + by("router");
    let hub_exceeded = hub["exceeded"].as_u64().unwrap();
    assert!(
        (counted..=counted + by("other")).contains(&hub_exceeded),
        "{saturated}"
    );
    assert_eq!(
        hub["held_back"].as_u64().unwrap(),
        by("hub, a late answer held back"),
        "{saturated}"
    );
    if hub_exceeded > 0 {
        // Recorded lateness is at least 1 µs.
        assert!(hub["p50_us"].as_u64().unwrap() >= 1, "{saturated}");
    }
    for row in rows.iter().copied() {
        let (p50, p99) = (
            row["latency"]["p50_us"].as_f64().unwrap(),
            row["latency"]["p99_us"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{row}");
        let distribution = row["distribution"].as_array().unwrap();
        assert_eq!(distribution.len(), 201, "{row}");
        let points: Vec<f64> = distribution.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(points.windows(2).all(|w| w[0] <= w[1]), "not sorted: {row}");
    }
    // Two rounds of 10 round trips on every path over a socket; the batch path sends one
    // batch of 64 per round for them.
    for row in rows.iter().filter(|r| {
        let path = r["path"].as_str().unwrap();
        path.starts_with("raw") || path.starts_with("qnllm")
    }) {
        let batch = row["path"].as_str().unwrap().contains("batch 64");
        assert_eq!(row["latency"]["count"], if batch { 2 } else { 20 }, "{row}");
        assert!(row["throughput"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["cpu_us_per_request"].as_f64().unwrap() >= 0.0, "{row}");
        // Every pipelined request's round trip is measured too.
        let loaded = &row["loaded"];
        let least = if batch { 2 } else { 200 };
        assert!(loaded["count"].as_u64().unwrap() >= least, "{row}");
        assert!(loaded["p99_us"].as_f64().unwrap() >= loaded["p50_us"].as_f64().unwrap());
    }
    // Every qnllm path of single requests is reported against its ping-pong, and those
    // with a worker hop against the relay too; the batch path is compared with the
    // in-process batch through the engine's share instead.
    assert!(report["engine_share_batched"].as_f64().unwrap() > 0.0);
    for row in rows.iter().filter(|r| {
        let path = r["path"].as_str().unwrap();
        path.starts_with("qnllm") && !path.contains("batch 64")
    }) {
        assert!(row["p50_ratio"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["throughput_ratio"].as_f64().unwrap() > 0.0, "{row}");
        let worker_hop = !row["path"].as_str().unwrap().contains("engine in hub");
        assert_eq!(row["relay_p50_ratio"].is_f64(), worker_hop, "{row}");
        assert_eq!(row["relay_p99_ratio"].is_f64(), worker_hop, "{row}");
        assert_eq!(row["relay_throughput_ratio"].is_f64(), worker_hop, "{row}");
    }
    // --duration stops starting rounds: with no time at all, exactly one round runs.
    let bounded = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args([
            "bench",
            "--requests",
            "6",
            "--pipelined",
            "12",
            "--window",
            "2",
            "--rounds",
            "3",
            "--duration",
            "0",
            "--connections",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(bounded.status.success());
    let bounded: serde_json::Value = serde_json::from_slice(&bounded.stdout).unwrap();
    assert_eq!(bounded["rounds"], 1, "{bounded}");

    // The table a person reads: both sections, every path, the engine's share and memory.
    let table = Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args([
            "bench",
            "--requests",
            "10",
            "--pipelined",
            "40",
            "--window",
            "4",
            "--rounds",
            "1",
            "--connections",
            "5",
        ])
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for needle in [
        "one request at a time",
        "pipelined: 1 connection(s) × 4 requests in flight",
        "of the in-process engine's best throughput on these cores",
        "with requests that are reason_batch of 64",
        "hub memory:",
        "results past their deadline",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    for path in &paths {
        assert!(text.contains(path), "{path} missing from\n{text}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    let _ = std::fs::remove_file(&chart);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // A curve per path of round trips (the saturated-deadline row's figures are lateness).
    assert_eq!(
        svg.matches("<polyline").count(),
        expected - 1,
        "a curve per path"
    );
    for path in paths.iter().filter(|p| !p.starts_with("saturated")) {
        assert!(svg.contains(path), "{path} missing from the legend");
    }
}
