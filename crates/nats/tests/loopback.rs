//! One real nats-server on 127.0.0.1 (a random port), NATS workers, and a router whose
//! engines are found through discovery: results, errors, "any engine", learning in one
//! order, and a worker leaving. Skips, saying why, when nats-server is not installed.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_nats::{
    connect, decode_one, subject, worker, Discovery, DiscoveryConfig, NatsOptions, WorkerConfig,
};
use qnllm_protocol::{encode_reason_frame, Deadline, ErrorCode, Message, DEFAULT_MAX_FRAME_BYTES};
use qnllm_router::{Backend, Coordinator, LocalBackend, Router, RouterError};
use tokio_util::sync::CancellationToken;

const BUDGET: Duration = Duration::from_secs(5);

/// A nats-server child, killed on drop; its JetStream directory removed.
struct Server {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    })
}

/// Starts nats-server with JetStream on a free loopback port; returns once it logs that
/// it is ready.
async fn start_server(bin: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("qnllm-nats-test-{}-{port}", std::process::id()));
    let mut child = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        dir,
    };
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("Server is ready"));
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ready
    })
    .await
    .unwrap();
    assert!(
        ready,
        "nats-server exited before it was ready (port {port})"
    );
    server
}

fn engine(seed: u64) -> SpikingEngine {
    SpikingEngine::from_seed(seed, Params::default()).unwrap()
}

/// A worker task serving `engine` as `name`; cancelled (and finished) on drop.
struct Worker {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    async fn start(url: &str, name: &str, engine: impl Engine + 'static) -> Worker {
        let client = connect(&NatsOptions::new(url)).await.unwrap();
        let stop = CancellationToken::new();
        let mut config = WorkerConfig::new(name);
        config.heartbeat = Duration::from_millis(200);
        let backend = LocalBackend::new(name, engine);
        let task = tokio::spawn(worker::run(client, config, backend, stop.clone()));
        Worker {
            stop,
            task: Some(tokio::spawn(async move {
                task.await.unwrap().unwrap();
            })),
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

macro_rules! require_server {
    () => {
        match nats_server() {
            Some(bin) => bin,
            None => {
                eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
                return;
            }
        }
    };
}

async fn discovering(url: &str, router: &Arc<Router>) -> Discovery {
    let client = connect(&NatsOptions::new(url)).await.unwrap();
    let config = DiscoveryConfig {
        heartbeat: Duration::from_millis(200),
        ..DiscoveryConfig::default()
    };
    Discovery::start(client, router.clone(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_found_by_discovery_answers_like_the_local_engine() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let worker = Worker::start(&server.url, "w1", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    discovery.wait_for(1).await;
    let local = engine(1);
    for x in NormalInputs::new(3, 768).take(20) {
        let answer = router.reason(&x, BUDGET).await.unwrap();
        assert_eq!(answer.engine, "w1");
        assert_eq!(
            answer.reasoning.result_digest,
            local.reason(&x).unwrap().result_digest
        );
        assert_eq!(answer.reasoning.model_digest, local.digest());
    }
    // A batch too.
    let xs: Vec<f32> = NormalInputs::new(4, 768).take(5).flatten().collect();
    let answers = router.reason_batch(&xs, 768, BUDGET).await.unwrap();
    assert_eq!(answers.len(), 5);
    for (answer, x) in answers.iter().zip(xs.chunks(768)) {
        assert_eq!(
            answer.reasoning.result_digest,
            local.reason(x).unwrap().result_digest
        );
    }
    // The backend names the model it was told about.
    let backends = router.backends();
    assert_eq!(backends.len(), 1);
    assert_eq!(backends[0].describe().model_digest, local.digest());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_broken_frames_get_errors_and_the_worker_keeps_serving() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let worker = Worker::start(&server.url, "w1", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    discovery.wait_for(1).await;

    let err = router.reason(&[0.5; 3], BUDGET).await.unwrap_err();
    assert!(matches!(err, RouterError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("768"), "{err}");

    // Garbage straight to the worker's subject: an error frame naming the bad magic.
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let reply = client
        .request(subject::engine("w1"), "not a frame at all, sorry".into())
        .await
        .unwrap();
    let frame = decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES).unwrap();
    match frame.message().unwrap() {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::BadMagic),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // A learn sent to one replica is refused: it would diverge from the others.
    let mut learn = BytesMut::new();
    qnllm_protocol::encode_frame(
        &Message::Learn(qnllm_protocol::Learn {
            label: 1,
            base_version: 0,
            encoding: vec![0.0; 768].into(),
        }),
        5,
        Deadline::NONE,
        &mut learn,
    );
    let reply = client
        .request(subject::engine("w1"), learn.freeze())
        .await
        .unwrap();
    match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .message()
        .unwrap()
    {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::UnexpectedMessage);
            assert!(e.message.contains("update log"), "{}", e.message);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }

    let x: Vec<f32> = NormalInputs::new(1, 768).next().unwrap();
    let answer = router.reason(&x, BUDGET).await.unwrap();
    assert_eq!(
        answer.reasoning.result_digest,
        engine(1).reason(&x).unwrap().result_digest
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_engine_of_a_model_answers_on_its_queue_group_subject() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let local = engine(1);
    let w1 = Worker::start(&server.url, "w1", engine(1)).await;
    let w2 = Worker::start(&server.url, "w2", engine(1)).await;
    // Both are subscribed once discovery hears both.
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    discovery.wait_for(2).await;
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let mut engines = std::collections::HashSet::new();
    for (i, x) in NormalInputs::new(9, 768).take(40).enumerate() {
        let mut out = BytesMut::new();
        encode_reason_frame(&x, i as u64, Deadline::from_remaining(BUDGET), &mut out);
        let reply = client
            .request(subject::model(&local.digest().short()), out.freeze())
            .await
            .unwrap();
        let frame = decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(frame.header.request_id, i as u64);
        match frame.message().unwrap() {
            Message::Result(body) => {
                assert_eq!(
                    body.result_digest,
                    local.reason(&x).unwrap().result_digest.0
                );
                engines.insert(body.engine);
            }
            other => panic!("expected a result, got {other:?}"),
        }
    }
    // Each request reached exactly one engine; over 40 the queue group used both.
    assert_eq!(engines.len(), 2, "{engines:?}");
    w1.stop().await;
    w2.stop().await;
}

/// Teaches `xs` in turn through `c`; the state after the last.
async fn teach(c: &Coordinator, xs: &[Vec<f32>], offset: u32) -> qnllm_router::ModelState {
    let mut last = None;
    for (i, x) in xs.iter().enumerate() {
        let label = (i as u32 + offset) % 10;
        last = c.learn(x, label, BUDGET).await.unwrap();
    }
    last.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_learn_in_the_log_order_and_a_late_worker_replays_it() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let w1 = Worker::start(&server.url, "w1", engine(1)).await;
    let w2 = Worker::start(&server.url, "w2", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    discovery.wait_for(2).await;
    // Two coordinators, as two hubs would have, over the same workers.
    let students: Vec<Arc<dyn Backend>> = router.backends();
    let a = Coordinator::new(Vec::new(), students.clone());
    let b = Coordinator::new(Vec::new(), students.clone());
    let samples: Vec<Vec<f32>> = NormalInputs::new(21, 768).take(12).collect();
    let (left, right) = samples.split_at(6);
    let (sa, sb) = tokio::join!(teach(&a, left, 0), teach(&b, right, 3));
    assert_ne!(
        sa, sb,
        "each coordinator reports the state after its own update"
    );
    // The log holds the 12 updates once each, in one order; replaying it on a local
    // engine gives what every replica has.
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let log = qnllm_nats::LearnLog::new(client.clone(), 1);
    let lineage = engine(1).digest().short();
    let mut replay = engine(1);
    let mut seq = 1;
    while let Some(entry) = log.read(&lineage, seq).await.unwrap() {
        replay.learn(&entry.encoding, entry.label).unwrap();
        seq += 1;
    }
    assert_eq!(seq - 1, 12, "one entry per update, not one per replica");
    let final_state = std::cmp::max_by_key(sa, sb, |s| s.version);
    assert_eq!(replay.digest(), final_state.digest);
    assert_eq!(replay.info().version, final_state.version);

    // A worker that joins now replays the log and reaches the same model.
    let w3 = Worker::start(&server.url, "w3", engine(1)).await;
    discovery.wait_for(3).await;
    for name in ["w1", "w2", "w3"] {
        let mut ask = Vec::new();
        ask.extend_from_slice(&12u64.to_le_bytes());
        ask.extend_from_slice(&5_000u32.to_le_bytes());
        let reply = client
            .request(subject::applied(name), ask.into())
            .await
            .unwrap();
        match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .message()
            .unwrap()
        {
            Message::Learned(l) => assert_eq!(l.model_digest, replay.digest().0, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        // And it reasons with that model.
        let x = &samples[0];
        let mut out = BytesMut::new();
        encode_reason_frame(x, 1, Deadline::NONE, &mut out);
        let reply = client
            .request(subject::engine(name), out.freeze())
            .await
            .unwrap();
        match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .message()
            .unwrap()
        {
            Message::Result(r) => {
                assert_eq!(r.result_digest, replay.reason(x).unwrap().result_digest.0)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    w1.stop().await;
    w2.stop().await;
    w3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_leaves_is_removed_and_requests_go_to_the_other() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let w1 = Worker::start(&server.url, "w1", engine(1)).await;
    let w2 = Worker::start(&server.url, "w2", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    discovery.wait_for(2).await;
    w1.stop().await;
    // The leaving announcement removes it at once, not after missed heartbeats.
    discovery.wait_until(|known| known == 1).await;
    assert_eq!(router.backends().len(), 1);
    let x: Vec<f32> = NormalInputs::new(2, 768).next().unwrap();
    for _ in 0..5 {
        assert_eq!(router.reason(&x, BUDGET).await.unwrap().engine, "w2");
    }
    w2.stop().await;
}
