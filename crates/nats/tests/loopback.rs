//! One real nats-server on 127.0.0.1 (a random port), NATS workers, and a router whose
//! engines are found through discovery: results, errors, "any engine", learning in one
//! order, and a worker leaving. Skips, saying why, when nats-server is not installed.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_nats::{
    connect, decode_one, subject, worker, Announce, Discovery, DiscoveryConfig, NatsOptions,
    WorkerConfig,
};
use qnllm_protocol::{encode_reason_frame, Deadline, ErrorCode, Message, DEFAULT_MAX_FRAME_BYTES};
use qnllm_router::{Backend, Coordinator, LocalBackend, Router, RouterError};
use tokio_util::sync::CancellationToken;

const BUDGET: Duration = Duration::from_secs(5);
/// Longest wait for a server, a worker or discovery; a test stuck longer fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// `wait`, or a failure naming `what` after [`PATIENCE`].
async fn within<T>(what: &str, wait: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

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

/// Starts nats-server with JetStream on a loopback port it picks itself; returns once it
/// logs that it is ready.
async fn start_server(bin: &std::path::Path) -> Server {
    start_server_with(bin, "").await
}

/// [`start_server`] with `config` (nats-server configuration lines, e.g. `max_payload`).
async fn start_server_with(bin: &std::path::Path, config: &str) -> Server {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qnllm-nats-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(&conf, config).unwrap();
    let mut child = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-c"])
        .arg(&conf)
        .arg("-sd")
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut server = Server {
        child,
        url: String::new(),
        dir,
    };
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let (mut url, mut ready) = (None, false);
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some((_, at)) = line.split_once("Listening for client connections on ") {
                url = Some(format!("nats://{}", at.trim()));
            }
            if line.contains("Server is ready") {
                ready = true;
                break;
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        url.filter(|_| ready)
    });
    // On a timeout the server is dropped (killed), which ends the reader too.
    let url = within("nats-server ready", ready).await.unwrap();
    server.url = url.expect("nats-server exited before it was ready");
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
        Worker::start_with(url, name, engine, |_| {}).await
    }

    /// [`Worker::start`] with `configure` applied to its configuration.
    async fn start_with(
        url: &str,
        name: &str,
        engine: impl Engine + 'static,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Worker {
        let client = connect(&NatsOptions::new(url)).await.unwrap();
        let stop = CancellationToken::new();
        let mut config = WorkerConfig::new(name);
        config.heartbeat = Duration::from_millis(200);
        configure(&mut config);
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
            within("the worker stopping", task).await.unwrap();
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
    within("discovery of 1 workers", discovery.wait_for(1)).await;
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
    within("discovery of 1 workers", discovery.wait_for(1)).await;

    let err = router.reason(&[0.5; 3], BUDGET).await.unwrap_err();
    assert!(matches!(err, RouterError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("768"), "{err}");

    // Garbage straight to the worker's subject: an error frame naming the bad magic.
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let reply = within(
        "a reply",
        client.request(subject::engine("w1"), "not a frame at all, sorry".into()),
    )
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
    let reply = within(
        "a reply",
        client.request(subject::engine("w1"), learn.freeze()),
    )
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
    within("discovery of 2 workers", discovery.wait_for(2)).await;
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let mut engines = std::collections::HashSet::new();
    for (i, x) in NormalInputs::new(9, 768).take(40).enumerate() {
        let mut out = BytesMut::new();
        encode_reason_frame(&x, i as u64, Deadline::from_remaining(BUDGET), &mut out);
        let reply = within(
            "a reply",
            client.request(subject::model(&local.digest().short()), out.freeze()),
        )
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
    within("discovery of 2 workers", discovery.wait_for(2)).await;
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
    within("discovery of 3 workers", discovery.wait_for(3)).await;
    for name in ["w1", "w2", "w3"] {
        let mut ask = Vec::new();
        ask.extend_from_slice(&12u64.to_le_bytes());
        ask.extend_from_slice(&5_000u32.to_le_bytes());
        let reply = within(
            "a reply",
            client.request(subject::applied(name), ask.into()),
        )
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
        let reply = within(
            "a reply",
            client.request(subject::engine(name), out.freeze()),
        )
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

/// A server, a client of it, and the client's subscription to every worker's announcements
/// (flushed: none is missed from here on).
async fn listening(bin: &std::path::Path) -> (Server, async_nats::Client, async_nats::Subscriber) {
    let server = start_server(bin).await;
    let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let announcements = client.subscribe(subject::ANNOUNCE).await.unwrap();
    client.flush().await.unwrap();
    (server, client, announcements)
}

/// The trim tests' snapshot interval and trim margin (see `trimming`).
const TRIM_EVERY: u64 = 4;
const TRIM_MARGIN: u64 = 2;

/// A worker that offers a snapshot every `TRIM_EVERY` entries and trims the log
/// `TRIM_MARGIN` below it.
fn trimming(c: &mut WorkerConfig) {
    c.snapshot_every = TRIM_EVERY;
    c.trim_margin = Some(TRIM_MARGIN);
}

/// The first announcement on `announcements` that `ok` accepts.
async fn announced(
    announcements: &mut async_nats::Subscriber,
    mut ok: impl FnMut(&Announce) -> bool,
) -> Announce {
    while let Some(message) = announcements.next().await {
        let announce: Announce = serde_json::from_slice(&message.payload).unwrap();
        if ok(&announce) {
            return announce;
        }
    }
    panic!("the announcements ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_worker_starts_from_the_snapshot_and_replays_only_the_entries_after_it() {
    const EVERY: u64 = 5;
    const UPDATES: u64 = 8;
    let bin = require_server!();
    let (server, client, mut announcements) = listening(&bin).await;
    let every = |c: &mut WorkerConfig| c.snapshot_every = EVERY;
    let w1 = Worker::start_with(&server.url, "w1", engine(1), every).await;
    let w2 = Worker::start_with(&server.url, "w2", engine(1), every).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 2 workers", discovery.wait_for(2)).await;
    let coordinator = Coordinator::new(Vec::new(), router.backends());
    let samples: Vec<Vec<f32>> = NormalInputs::new(31, 768).take(UPDATES as usize).collect();
    let taught = teach(&coordinator, &samples, 0).await;
    assert_eq!(taught.version, UPDATES);
    within(
        "a replica storing the snapshot at entry 5",
        announced(&mut announcements, |a| a.snapshot == EVERY),
    )
    .await;
    // The same model, by replaying the whole log locally.
    let mut replay = engine(1);
    for (i, x) in samples.iter().enumerate() {
        replay.learn(x, i as u32 % 10).unwrap();
    }
    assert_eq!(replay.digest(), taught.digest);

    // A worker joining now loads the snapshot and applies entries 6 to 8 only.
    let w3 = Worker::start(&server.url, "w3", engine(1)).await;
    let joined = within(
        "w3 at the last update",
        announced(&mut announcements, |a| {
            a.name == "w3" && a.model_version == UPDATES
        }),
    )
    .await;
    assert_eq!(joined.snapshot, EVERY, "{joined:?}");
    assert_eq!(joined.replayed, UPDATES - EVERY, "{joined:?}");
    assert_eq!(joined.model_digest, replay.digest().to_hex(), "{joined:?}");
    let x = NormalInputs::new(32, 768).next().unwrap();
    let mut out = BytesMut::new();
    encode_reason_frame(&x, 1, Deadline::NONE, &mut out);
    let reply = within(
        "w3's answer",
        client.request(subject::engine("w3"), out.freeze()),
    )
    .await
    .unwrap();
    match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .message()
        .unwrap()
    {
        Message::Result(r) => {
            assert_eq!(r.result_digest, replay.reason(&x).unwrap().result_digest.0)
        }
        other => panic!("w3: {other:?}"),
    }

    // A snapshot that is not what it says (its model is entry 5's, its headers claim entry
    // 6 and another digest) is refused: the next worker falls back to the older snapshot
    // kept, the true one at entry 5, and still reaches the same model.
    let log = qnllm_nats::LearnLog::new(client.clone(), 1);
    let lineage = engine(1).digest().short();
    let real = log.latest_snapshot(&lineage).await.unwrap().unwrap();
    assert_eq!(real.seq, EVERY);
    let lie = qnllm_nats::Snapshot {
        seq: EVERY + 1,
        state: qnllm_router::ModelState {
            version: EVERY + 1,
            digest: qnllm_engine::Digest([7; 32]),
        },
        model: real.model.clone(),
    };
    log.put_snapshot(&lineage, &lie).await.unwrap();
    assert_eq!(log.latest_snapshot(&lineage).await.unwrap(), Some(lie));
    let w4 = Worker::start(&server.url, "w4", engine(1)).await;
    let joined = within(
        "w4 at the last update",
        announced(&mut announcements, |a| {
            a.name == "w4" && a.model_version == UPDATES
        }),
    )
    .await;
    assert_eq!(
        (joined.snapshot, joined.replayed),
        (EVERY, UPDATES - EVERY),
        "{joined:?}"
    );
    assert_eq!(joined.model_digest, replay.digest().to_hex(), "{joined:?}");
    for w in [w1, w2, w3, w4] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_leaves_is_removed_and_requests_go_to_the_other() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    let w1 = Worker::start(&server.url, "w1", engine(1)).await;
    let w2 = Worker::start(&server.url, "w2", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 2 workers", discovery.wait_for(2)).await;
    w1.stop().await;
    // The leaving announcement removes it at once, not after missed heartbeats.
    within("w1 removed", discovery.wait_until(|known| known == 1)).await;
    assert_eq!(router.backends().len(), 1);
    let x: Vec<f32> = NormalInputs::new(2, 768).next().unwrap();
    for _ in 0..5 {
        assert_eq!(router.reason(&x, BUDGET).await.unwrap().engine, "w2");
    }
    w2.stop().await;
}

/// Sends a batch of `count` encodings through a router whose one engine is a NATS worker on
/// `server`, while watching the worker's subject: the answers, in order, must be the local
/// engine's, and every request NATS carried must fit the server's `max_payload`. Returns
/// the `max_payload` the client read from the server and the batch requests seen.
async fn batch_through(server: &Server, count: usize) -> (usize, usize) {
    let worker = Worker::start(&server.url, "w1", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 1 worker", discovery.wait_for(1)).await;
    // A plain subscriber on the worker's subject sees a copy of every request sent to it.
    let watcher = connect(&NatsOptions::new(&server.url)).await.unwrap();
    let max_payload = watcher.server_info().max_payload;
    let mut seen = watcher.subscribe(subject::engine("w1")).await.unwrap();
    watcher.flush().await.unwrap();

    let xs: Vec<f32> = NormalInputs::new(12, 768).take(count).flatten().collect();
    let answers = router.reason_batch(&xs, 768, BUDGET).await.unwrap();
    assert_eq!(answers.len(), count);
    let local = engine(1);
    for (i, (answer, x)) in answers.iter().zip(xs.chunks(768)).enumerate() {
        assert_eq!(
            answer.reasoning.result_digest,
            local.reason(x).unwrap().result_digest,
            "answer {i} is not the one for encoding {i}"
        );
    }
    // Every request is on the subject by now: the replies to all of them came back.
    watcher.flush().await.unwrap();
    let mut requests = 0;
    let mut encodings = 0;
    while let Some(Some(message)) = seen.next().now_or_never() {
        assert!(
            message.payload.len() <= max_payload,
            "a request of {} bytes, over max_payload {max_payload}",
            message.payload.len()
        );
        let frame = decode_one(&message.payload, DEFAULT_MAX_FRAME_BYTES).unwrap();
        match frame.message().unwrap() {
            Message::Batch(batch) => encodings += batch.values().len() / 768,
            other => panic!("expected batch requests, got {other:?}"),
        }
        requests += 1;
    }
    assert_eq!(encodings, count, "the parts add up to the batch");
    worker.stop().await;
    (max_payload, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_default_max_payload_is_split_and_answered_in_order() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    // 400 encodings of 768 values: 1.2 MB, over the default 1 MiB.
    let (max_payload, requests) = batch_through(&server, 400).await;
    assert_eq!(max_payload, 1024 * 1024);
    assert_eq!(requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_by_the_max_payload_the_server_announces() {
    let bin = require_server!();
    let server = start_server_with(&bin, "max_payload: 65536\n").await;
    // 21 encodings (64 KiB less the frame's header) fit one message: 50 take three.
    let (max_payload, requests) = batch_through(&server, 50).await;
    assert_eq!(max_payload, 65536);
    assert_eq!(requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_max_payload_holds_no_encoding_gets_an_error_naming_it() {
    let bin = require_server!();
    let server = start_server_with(&bin, "max_payload: 2048\n").await;
    let _worker = Worker::start(&server.url, "w1", engine(1)).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 1 worker", discovery.wait_for(1)).await;
    let xs: Vec<f32> = NormalInputs::new(12, 768).take(2).flatten().collect();
    let err = router.backends()[0]
        .reason_batch(&xs, 768, BUDGET)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("max_payload is 2048 bytes") && text.contains("3072 bytes"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_lists_nats_workers_with_their_kind_transport_and_figures() {
    let bin = require_server!();
    let server = start_server(&bin).await;
    // A real hub on a loopback port with an engine of each transport: in its process, a
    // socket worker, and a NATS worker found by discovery.
    let config = qnllm_hub::HubConfig {
        listen: Some("127.0.0.1:0".into()),
        ..qnllm_hub::HubConfig::default()
    };
    let hub = qnllm_hub::Hub::new(config).unwrap();
    hub.add_local(LocalBackend::new("here", engine(1)));
    let mut events = hub.events();
    let stop = CancellationToken::new();
    let _stop_hub = stop.clone().drop_guard();
    let running = hub.clone().start(stop.clone()).await.unwrap();
    let endpoint = qnllm_hub::Endpoint::parse(&running.tcp.unwrap().to_string());
    let mut socket = qnllm_hub::WorkerConfig::new(endpoint.clone());
    socket.name = "sock".into();
    let _socket_worker = tokio::spawn(qnllm_hub::worker::run(
        socket,
        LocalBackend::new("sock", engine(1)),
        stop.clone(),
    ));
    within("the socket worker joining", async {
        while let Ok((topic, body)) = events.recv().await {
            if topic == "engines" && body["joined"] == "sock" {
                break;
            }
        }
    })
    .await;
    let worker = Worker::start(&server.url, "w1", engine(1)).await;
    let mut discovery = discovering(&server.url, hub.router()).await;
    within("discovery of 1 worker", discovery.wait_for(1)).await;

    let client = qnllm_hub::Client::connect(&endpoint, "lister", None)
        .await
        .unwrap();
    let metrics = client.metrics(BUDGET).await.unwrap();
    let listed = |list: &serde_json::Value| -> Vec<(String, String, String)> {
        let mut rows: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or("?").to_string();
                (field("name"), field("kind"), field("transport"))
            })
            .collect();
        rows.sort();
        rows
    };
    let want = [
        ("here", "local", "in-process"),
        ("sock", "remote", "socket"),
        ("w1", "remote", "nats"),
    ]
    .map(|(n, k, t)| (n.to_string(), k.to_string(), t.to_string()));
    // The hub's engine list and its router's, as `qnllm stats` prints it.
    assert_eq!(listed(&metrics["engines"]), want);
    assert_eq!(listed(&metrics["router"]["engines"]), want);
    // And the `engines` handler.
    let reply = client.call("engines", b"", BUDGET).await.unwrap();
    assert_eq!(listed(&serde_json::from_slice(&reply).unwrap()), want);

    // The NATS worker's figures are filled as the socket worker's are: one request and a
    // batch of three through it are four encodings served, none left in flight, and the
    // hub has heard from it.
    let w1 = hub
        .router()
        .backends()
        .into_iter()
        .find(|b| b.name() == "w1");
    let w1 = w1.unwrap();
    let xs: Vec<f32> = NormalInputs::new(5, 768).take(4).flatten().collect();
    w1.reason(&xs[..768], BUDGET).await.unwrap();
    w1.reason_batch(&xs[768..], 768, BUDGET).await.unwrap();
    let metrics = client.metrics(BUDGET).await.unwrap();
    let row = |list: &serde_json::Value, name: &str| -> serde_json::Value {
        let mut rows = list.as_array().unwrap().iter();
        rows.find(|e| e["name"] == name).unwrap().clone()
    };
    for name in ["sock", "w1"] {
        let e = row(&metrics["engines"], name);
        assert!(e["last_heard_ms"].is_u64(), "{name}: {e}");
        assert_eq!(e["in_flight"], 0, "{name}: {e}");
        assert!(e["served"].is_u64(), "{name}: {e}");
    }
    assert_eq!(row(&metrics["engines"], "w1")["served"], 4);
    let routed = row(&metrics["router"]["engines"], "w1");
    assert_eq!(routed["activity"]["served"], 4, "{routed}");
    assert!(routed["activity"]["last_heard_ms"].is_u64(), "{routed}");
    let reply = client.call("engines", b"", BUDGET).await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(row(&listed, "w1")["served"], 4, "{listed}");
    worker.stop().await;
}

/// A TCP relay on a loopback port in front of the server: a worker connected through it is
/// cut off (its connections dropped, new ones refused) and let back at the test's word.
struct Relay {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
    _stop: tokio_util::sync::DropGuard,
}

impl Relay {
    async fn start(server_url: &str) -> Relay {
        let target = server_url.trim_start_matches("nats://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let (up, watch) = tokio::sync::watch::channel(true);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                if !*watch.borrow() {
                    continue; // cut off: the connection is dropped at once
                }
                let mut watch = watch.clone();
                let target = target.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Relay {
            url,
            up,
            _stop: stop.drop_guard(),
        }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// The `learned` state (version, digest) `name` reports after log entry `seq`, or the
/// message of the error it answers.
async fn applied_state(
    client: &async_nats::Client,
    name: &str,
    seq: u64,
) -> Result<(u64, [u8; 32]), String> {
    let mut ask = Vec::new();
    ask.extend_from_slice(&seq.to_le_bytes());
    ask.extend_from_slice(&5_000u32.to_le_bytes());
    let reply = within(
        "an applied answer",
        client.request(subject::applied(name), ask.into()),
    )
    .await
    .unwrap();
    match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .message()
        .unwrap()
    {
        Message::Learned(l) => Ok((l.model_version, l.model_digest)),
        Message::Error(e) => Err(e.message),
        other => panic!("{name}: {other:?}"),
    }
}

/// The result digest `name` answers for `x`.
async fn answer_of(client: &async_nats::Client, name: &str, x: &[f32]) -> [u8; 32] {
    let mut out = BytesMut::new();
    encode_reason_frame(x, 1, Deadline::NONE, &mut out);
    let reply = within(
        "an answer",
        client.request(subject::engine(name), out.freeze()),
    )
    .await
    .unwrap();
    match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .message()
        .unwrap()
    {
        Message::Result(r) => r.result_digest,
        other => panic!("{name}: {other:?}"),
    }
}

/// A local engine that learned `samples` in turn (labels as [`teach`] gives them from 0),
/// and its state after each: what every replica must hold after each log entry.
fn replayed(samples: &[Vec<f32>]) -> (SpikingEngine, Vec<qnllm_router::ModelState>) {
    let mut replay = engine(1);
    let mut states = Vec::new();
    for (i, x) in samples.iter().enumerate() {
        replay.learn(x, i as u32 % 10).unwrap();
        states.push(qnllm_router::ModelState {
            version: replay.info().version,
            digest: replay.digest(),
        });
    }
    (replay, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_trimmed_after_each_snapshot_and_a_later_worker_loads_it() {
    let bin = require_server!();
    let (server, client, mut announcements) = listening(&bin).await;
    let w1 = Worker::start_with(&server.url, "w1", engine(1), trimming).await;
    let w2 = Worker::start_with(&server.url, "w2", engine(1), trimming).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 2 workers", discovery.wait_for(2)).await;
    let coordinator = Coordinator::new(Vec::new(), router.backends());
    let samples: Vec<Vec<f32>> = NormalInputs::new(41, 768).take(10).collect();
    let (replay, _) = replayed(&samples);
    let log = qnllm_nats::LearnLog::new(client.clone(), 1);
    let lineage = engine(1).digest().short();

    // Entries 1-5: the snapshot at 4 trims the log below 4 - 2.
    teach(&coordinator, &samples[..5], 0).await;
    // A replica announces a snapshot only once its trim is done.
    within(
        "a replica storing the snapshot at entry 4",
        announced(&mut announcements, |a| a.snapshot == TRIM_EVERY),
    )
    .await;
    assert_eq!(
        log.bounds(&lineage).await.unwrap(),
        (TRIM_EVERY - TRIM_MARGIN, 5)
    );
    assert_eq!(log.read(&lineage, 1).await.unwrap(), None);
    assert_eq!(
        log.fetch(&lineage, 1).await.unwrap(),
        qnllm_nats::Fetched::Trimmed { first: 2 }
    );
    assert_eq!(
        log.fetch(&lineage, 6).await.unwrap(),
        qnllm_nats::Fetched::NotWritten
    );
    // Entries 6-10: the snapshot at 8 trims it below 6.
    let taught = teach(&coordinator, &samples[5..], 5).await;
    assert_eq!(taught.digest, replay.digest());
    within(
        "a replica storing the snapshot at entry 8",
        announced(&mut announcements, |a| a.snapshot == 2 * TRIM_EVERY),
    )
    .await;
    assert_eq!(
        log.bounds(&lineage).await.unwrap(),
        (2 * TRIM_EVERY - TRIM_MARGIN, 10)
    );

    // A worker started now cannot replay from entry 1: it loads the snapshot at 8 and
    // applies 9 and 10, to the model of a replica that saw every entry.
    let w3 = Worker::start_with(&server.url, "w3", engine(1), trimming).await;
    let joined = within(
        "w3 at the last update",
        announced(&mut announcements, |a| {
            a.name == "w3" && a.model_version == 10
        }),
    )
    .await;
    assert_eq!((joined.snapshot, joined.replayed), (8, 2), "{joined:?}");
    assert_eq!(joined.model_digest, replay.digest().to_hex(), "{joined:?}");
    let x = NormalInputs::new(42, 768).next().unwrap();
    let want = replay.reason(&x).unwrap().result_digest.0;
    for name in ["w1", "w3"] {
        assert_eq!(answer_of(&client, name, &x).await, want, "{name}");
    }
    for w in [w1, w2, w3] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_past_the_trim_loads_the_snapshot_and_one_a_little_behind_loses_nothing() {
    let bin = require_server!();
    let (server, client, mut announcements) = listening(&bin).await;
    let w1 = Worker::start_with(&server.url, "w1", engine(1), trimming).await;
    // Two replicas behind relays the test can cut.
    let (near_link, far_link) = (
        Relay::start(&server.url).await,
        Relay::start(&server.url).await,
    );
    let near = Worker::start_with(&near_link.url, "near", engine(1), trimming).await;
    let far = Worker::start_with(&far_link.url, "far", engine(1), trimming).await;
    let router = Arc::new(Router::new());
    let mut discovery = discovering(&server.url, &router).await;
    within("discovery of 3 workers", discovery.wait_for(3)).await;
    // Updates go through w1 only: the cut replicas cannot answer for theirs.
    let w1_backend = router.backends().into_iter().filter(|b| b.name() == "w1");
    let coordinator = Coordinator::new(Vec::new(), w1_backend.collect());
    let samples: Vec<Vec<f32>> = NormalInputs::new(43, 768).take(10).collect();
    let (replay, states) = replayed(&samples);
    let log = qnllm_nats::LearnLog::new(client.clone(), 1);
    let lineage = engine(1).digest().short();

    teach(&coordinator, &samples[..2], 0).await;
    for name in ["near", "far"] {
        within(
            &format!("{name} at entry 2"),
            announced(&mut announcements, |a| {
                a.name == name && a.model_version == 2
            }),
        )
        .await;
    }
    near_link.cut();
    far_link.cut();

    // Entries 3-5; the snapshot at 4 trims below 2: `near` (at 2) is only a little behind.
    teach(&coordinator, &samples[2..5], 2).await;
    within(
        "w1 storing the snapshot at entry 4",
        announced(&mut announcements, |a| {
            a.name == "w1" && a.snapshot == TRIM_EVERY
        }),
    )
    .await;
    assert_eq!(
        log.bounds(&lineage).await.unwrap().0,
        TRIM_EVERY - TRIM_MARGIN
    );
    near_link.restore();
    let back = within(
        "near at entry 5",
        announced(&mut announcements, |a| {
            a.name == "near" && a.model_version == 5
        }),
    )
    .await;
    // It applied every entry itself, and can say what each left.
    assert_eq!(back.replayed, 5, "{back:?}");
    for seq in 3..=5 {
        let want = &states[seq as usize - 1];
        assert_eq!(
            applied_state(&client, "near", seq).await,
            Ok((want.version, want.digest.0)),
            "near after entry {seq}"
        );
    }

    // Entries 6-10; the snapshot at 8 trims below 6: `far` (at 2) needs entries gone.
    teach(&coordinator, &samples[5..], 5).await;
    within(
        "w1 storing the snapshot at entry 8",
        announced(&mut announcements, |a| {
            a.name == "w1" && a.snapshot == 2 * TRIM_EVERY
        }),
    )
    .await;
    assert_eq!(
        log.bounds(&lineage).await.unwrap(),
        (2 * TRIM_EVERY - TRIM_MARGIN, 10)
    );
    far_link.restore();
    let back = within(
        "far at entry 10",
        announced(&mut announcements, |a| {
            a.name == "far" && a.model_version == 10
        }),
    )
    .await;
    // It loaded the snapshot at 8 and applied 9 and 10 (after its 2 before the cut).
    assert_eq!((back.snapshot, back.replayed), (8, 4), "{back:?}");
    assert_eq!(back.model_digest, replay.digest().to_hex(), "{back:?}");
    // The entries it passed over have no state to report; the ones it applied do.
    let passed = applied_state(&client, "far", 5).await.unwrap_err();
    assert!(passed.contains("later snapshot"), "{passed}");
    let want = &states[9];
    assert_eq!(
        applied_state(&client, "far", 10).await,
        Ok((want.version, want.digest.0))
    );
    let x = NormalInputs::new(44, 768).next().unwrap();
    let want = replay.reason(&x).unwrap().result_digest.0;
    for name in ["w1", "near", "far"] {
        assert_eq!(answer_of(&client, name, &x).await, want, "{name}");
    }
    for w in [w1, near, far] {
        w.stop().await;
    }
}
