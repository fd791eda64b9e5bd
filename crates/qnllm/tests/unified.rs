//! `UnifiedEngine` end to end: embedded hub on 127.0.0.1:0, in-process workers over TCP.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use qnllm::{Model, NormalInputs, Params, SpikingEngine, UnifiedEngine};
use qnllm_engine::Engine;
use qnllm_hub::{Endpoint, WorkerConfig};
use qnllm_router::LocalBackend;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn worker(addr: std::net::SocketAddr, name: &str) -> CancellationToken {
    let stop = CancellationToken::new();
    let mut config = WorkerConfig::new(Endpoint::Tcp(addr.to_string()));
    config.name = name.into();
    let engine = LocalBackend::new(
        name,
        SpikingEngine::from_seed(1, Params::default()).unwrap(),
    );
    tokio::spawn(qnllm_hub::worker::run(config, engine, stop.clone()));
    stop
}

async fn wait_for_engines(engine: &UnifiedEngine, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while engine.router().backends().len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never had {n} engines"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn variant(readout_seed: u64) -> Model {
    let p = Params::default();
    let backbone = Model::from_seed(1, p).unwrap();
    let head = Model::from_seed(readout_seed, p).unwrap();
    Model::from_parts(
        format!("head:{readout_seed}"),
        p,
        backbone.input_weights().to_vec(),
        head.readout().to_vec(),
        0,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_a_hub_that_workers_join_and_answers_like_the_local_engine() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .build()
        .unwrap();
    engine.start().await.unwrap();
    let addr = engine.tcp_addr().unwrap();
    let (w1, w2) = (worker(addr, "w1"), worker(addr, "w2"));
    wait_for_engines(&engine, 3).await;
    let reference = SpikingEngine::from_seed(1, Params::default()).unwrap();
    let mut engines = std::collections::BTreeSet::new();
    for x in NormalInputs::new(3, 768).take(12) {
        let answer = engine.reason(&x).await.unwrap();
        assert_eq!(answer.reasoning, reference.reason(&x).unwrap());
        assert!(!answer.cached);
        engines.insert(answer.engine);
    }
    assert_eq!(
        engines.len(),
        3,
        "local and both workers answered: {engines:?}"
    );
    let err = engine.reason(&[f32::NAN; 768]).await.unwrap_err();
    assert!(err.to_string().contains("index 0 is NaN"), "{err}");
    let batch: Vec<Vec<f32>> = NormalInputs::new(4, 768).take(8).collect();
    assert_eq!(engine.reason_batch(&batch).await.unwrap().len(), 8);
    let metrics = engine.metrics();
    assert_eq!(metrics.router.engines.len(), 3);
    assert!(metrics.router.requests >= 12);
    w1.cancel();
    w2.cancel();
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_coordinated_steps_keep_local_and_remote_students_identical() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .teacher(variant(2))
        .teacher(variant(3))
        .teacher(variant(4))
        .build()
        .unwrap();
    engine.start().await.unwrap();
    let addr = engine.tcp_addr().unwrap();
    let (w1, w2) = (worker(addr, "w1"), worker(addr, "w2"));
    wait_for_engines(&engine, 3).await;
    let mut last = None;
    for x in NormalInputs::new(8, 768).take(1_000) {
        last = engine.coordinate(&x, true).await.unwrap().learned;
    }
    let state = last.unwrap();
    assert_eq!(state.version, 1_000);
    // Every replica reports its own digest: the local one directly, the workers in their
    // `learned` replies.
    for backend in engine.router().backends() {
        let info = backend.describe();
        assert_eq!(
            (info.model_version, info.model_digest),
            (1_000, state.digest),
            "{}",
            info.name
        );
    }
    assert_eq!(engine.locals()[0].info().digest, state.digest);
    // And they answer identically.
    let x = NormalInputs::new(99, 768).next().unwrap();
    let answers: Vec<_> = futures::future::join_all(engine.router().backends().iter().map(|b| {
        let b = b.clone();
        let x = x.clone();
        async move { b.reason(&x, WAIT).await.unwrap().reasoning.result_digest }
    }))
    .await;
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let coordination = engine.metrics().coordination.unwrap();
    assert_eq!(coordination.steps, 1_000);
    assert_eq!(coordination.student_agreement.len(), 10);
    w1.cancel();
    w2.cancel();
    engine.stop().await;
}

#[test]
fn the_blocking_engine_needs_no_runtime() {
    let mut engine =
        qnllm::blocking::UnifiedEngine::new(UnifiedEngine::builder().listen("127.0.0.1:0"))
            .unwrap();
    engine.start().unwrap();
    let x = NormalInputs::new(1, 768).next().unwrap();
    let answer = engine.reason(&x).unwrap();
    assert_eq!(answer.engine, "local-0");
    assert_eq!(engine.metrics().router.requests, 1);
    engine.stop(WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_learn_and_a_hub_clients_learn_are_one_order_on_the_same_replicas() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .build()
        .unwrap();
    engine.start().await.unwrap();
    let endpoint = Endpoint::Tcp(engine.tcp_addr().unwrap().to_string());
    let client = qnllm_hub::Client::connect(&endpoint, "test", None)
        .await
        .unwrap();
    let mut xs = NormalInputs::new(31, 768);
    // In-process, then a hub client, then in-process again: three updates, one lineage.
    let first = engine.learn(&xs.next().unwrap(), 1).await.unwrap().unwrap();
    assert_eq!(first.version, 1);
    let learn = qnllm_protocol::Message::Learn(qnllm_protocol::Learn {
        label: 2,
        base_version: 1,
        encoding: xs.next().unwrap().into(),
    });
    match client.request(&learn, WAIT).await.unwrap() {
        qnllm_protocol::Message::Learned(l) => assert_eq!(l.model_version, 2),
        other => panic!("{other:?}"),
    }
    let third = engine.learn(&xs.next().unwrap(), 3).await.unwrap().unwrap();
    assert_eq!(third.version, 3);
    assert_eq!(engine.locals()[0].info().digest, third.digest);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teachers_from_the_toml_config_are_the_ones_engine_coordinate_asks() {
    let dir = std::env::temp_dir().join(format!("qnllm-teachers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nteachers = [\"seed:2\", \"seed:3\"]\n",
    )
    .unwrap();
    let engine = UnifiedEngine::builder()
        .config_file(&path)
        .unwrap()
        .teacher(variant(4))
        .build()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let x = NormalInputs::new(41, 768).next().unwrap();
    let step = engine.coordinate(&x, false).await.unwrap();
    let names: Vec<_> = step.votes.iter().map(|v| v.engine.as_str()).collect();
    assert_eq!(names, ["teacher-0", "teacher-1", "teacher-2"]);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_after_500_of_1000_steps_catches_up_and_ends_bit_identical() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .teacher(variant(2))
        .teacher(variant(3))
        .teacher(variant(4))
        .build()
        .unwrap();
    engine.start().await.unwrap();
    let addr = engine.tcp_addr().unwrap();
    let early = worker(addr, "early");
    wait_for_engines(&engine, 2).await;
    let mut inputs = NormalInputs::new(8, 768);
    for x in inputs.by_ref().take(500) {
        engine.coordinate(&x, true).await.unwrap();
    }
    // A replica of the same student at version 0 joins halfway.
    let late = worker(addr, "late");
    wait_for_engines(&engine, 3).await;
    let mut last = None;
    for x in inputs.take(500) {
        last = engine.coordinate(&x, true).await.unwrap().learned;
    }
    let state = last.unwrap();
    assert_eq!(state.version, 1_000);
    for backend in engine.router().backends() {
        let info = backend.describe();
        assert_eq!(
            (info.model_version, info.model_digest),
            (1_000, state.digest),
            "{}",
            info.name
        );
    }
    let x = NormalInputs::new(99, 768).next().unwrap();
    let answers: Vec<_> = futures::future::join_all(engine.router().backends().iter().map(|b| {
        let b = b.clone();
        let x = x.clone();
        async move { b.reason(&x, WAIT).await.unwrap().reasoning.result_digest }
    }))
    .await;
    assert_eq!(answers.len(), 3);
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    early.cancel();
    late.cancel();
    engine.stop().await;
}
