//! The router against a real hub and real worker processes on 127.0.0.1:0: a worker of
//! another model never answers, and a short SIGSTOP stall ejects a worker once.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_hub::Client;

mod common;

use common::hub::{runtime, wait_for_engines};
use common::proc::Proc;

const WAIT: Duration = Duration::from_secs(30);

fn hub() -> (Proc, String) {
    common::hub::hub(&[])
}

fn worker(addr: &str, name: &str, model: &str) -> Proc {
    common::hub::worker(addr, name, &["--model", model])
}

async fn client(addr: &str) -> Client {
    common::hub::client(addr, "test").await
}

fn engine_row<'a>(metrics: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    metrics["router"]["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no engine {name}: {metrics}"))
}

#[test]
fn a_worker_with_another_model_is_kept_apart_and_never_answers() {
    let (_hub, addr) = hub();
    let _w1 = worker(&addr, "w1", "seed:1");
    let rt = runtime();
    let client = Arc::new(rt.block_on(client(&addr)));
    // The first engine sets the hub's model lineage; then another model joins.
    rt.block_on(wait_for_engines(&client, &["w1"]));
    let _w2 = worker(&addr, "w2", "seed:2");
    let metrics = rt.block_on(wait_for_engines(&client, &["w1", "w2"]));
    let pools: Vec<(&str, &str)> = metrics["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["pool"].as_str().unwrap()))
        .collect();
    assert!(pools.contains(&("w2", "foreign")), "{pools:?}");
    let seed1 = SpikingEngine::from_seed(1, Params::default()).unwrap();
    let answers = rt.block_on(async {
        let tasks: Vec<_> = NormalInputs::new(3, 768)
            .take(2_000)
            .map(|x| {
                let client = client.clone();
                tokio::spawn(async move { client.reason(&x, WAIT).await.unwrap() })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let mixed = answers
        .iter()
        .filter(|a| a.engine != "w1" || a.reasoning.model_digest != seed1.digest())
        .count();
    assert_eq!(mixed, 0, "answers of another model reached the client");
    let metrics = rt.block_on(client.metrics(WAIT)).unwrap();
    let w2 = engine_row(&metrics, "w2");
    assert_eq!(
        (w2["pool"].as_str(), w2["requests"].as_u64()),
        (Some("foreign"), Some(0))
    );
}

#[test]
fn a_one_second_sigstop_ejects_a_worker_once_and_it_serves_again() {
    let (_hub, addr) = hub();
    let (w1, _w2) = (worker(&addr, "w1", "seed:1"), worker(&addr, "w2", "seed:1"));
    let rt = runtime();
    let client = Arc::new(rt.block_on(client(&addr)));
    rt.block_on(wait_for_engines(&client, &["w1", "w2"]));
    let stop = Arc::new(AtomicBool::new(false));
    // 32 closed-loop callers with a 200 ms deadline: each try gets at most 100 ms.
    let load: Vec<_> = (0..32)
        .map(|i| {
            let (client, stop) = (client.clone(), stop.clone());
            rt.spawn(async move {
                let mut inputs = NormalInputs::new(100 + i, 768);
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let x = inputs.next().unwrap();
                    if client.reason(&x, Duration::from_millis(200)).await.is_err() {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let served = |name: &str| {
        let metrics = rt.block_on(client.metrics(WAIT)).unwrap();
        engine_row(&metrics, name)["requests"].as_u64().unwrap()
    };
    // Traffic reaches w1 before the stall.
    let deadline = std::time::Instant::now() + WAIT;
    while served("w1") < 100 {
        assert!(std::time::Instant::now() < deadline, "w1 never served");
    }
    w1.signal("STOP");
    std::thread::sleep(Duration::from_secs(1)); // the stall itself, shorter than the heartbeat timeout
    w1.signal("CONT");
    let after_stall = served("w1");
    // It is back in rotation once its first ejection (1 s) ends, well within `WAIT`.
    let deadline = std::time::Instant::now() + WAIT;
    while served("w1") < after_stall + 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "w1 kept out after a 1 s stall"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        rt.block_on(task).unwrap();
    }
    let metrics = rt.block_on(client.metrics(WAIT)).unwrap();
    let ejections = engine_row(&metrics, "w1")["ejections"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&ejections),
        "one stall, one failure episode: {ejections} ejections"
    );
}
