//! The hub's sessions over real sockets on 127.0.0.1:0 and a temporary Unix path, with
//! in-process workers: routing, handshake refusals, limits, raw-socket abuse.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};

use bytes::BytesMut;
use common::*;
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_hub::{Client, ClientError, Endpoint, HubConfig};
use qnllm_protocol::{encode_frame, Deadline, ErrorCode, FrameDecoder, Hello, Message};

/// Reads frames from a blocking socket until EOF; returns the messages.
fn read_all(stream: &mut std::net::TcpStream) -> Vec<Message> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        out.push(frame.message().unwrap());
    }
    out
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(message, 9, Deadline::NONE, &mut out);
    out.to_vec()
}

fn hello(token: Option<&str>) -> Vec<u8> {
    frame(&Message::Hello(Hello {
        protocol: 1,
        role: "client".into(),
        name: "raw".into(),
        token: token.map(str::to_string),
    }))
}

fn error_code(messages: &[Message]) -> Option<ErrorCode> {
    messages.iter().find_map(|m| match m {
        Message::Error(e) => Some(e.code),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_to_two_workers_over_tcp_and_unix_matches_the_local_engine() {
    let dir = std::env::temp_dir().join(format!("qnllm-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.sock");
    let (running, stop) = start(HubConfig {
        unix: Some(path.clone()),
        ..config()
    })
    .await;
    let unix = Endpoint::Unix(path.clone());
    let w1 = worker(tcp(&running), "w1", None);
    let w2 = worker(unix.clone(), "w2", None);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the Unix socket must be private to its owner");
    }
    let local = SpikingEngine::from_seed(1, Params::default()).unwrap();
    for endpoint in [tcp(&running), unix] {
        let client = Client::connect(&endpoint, "test", None).await.unwrap();
        wait_for_engines(&client, 2).await;
        let mut engines = std::collections::BTreeSet::new();
        for x in NormalInputs::new(7, 768).take(10) {
            let answer = client.reason(&x, WAIT).await.unwrap();
            assert_eq!(answer.reasoning, local.reason(&x).unwrap());
            engines.insert(answer.engine);
        }
        assert_eq!(
            engines.into_iter().collect::<Vec<_>>(),
            ["w1", "w2"],
            "round-robin reaches both workers"
        );
        let batch: Vec<Vec<f32>> = NormalInputs::new(8, 768).take(5).collect();
        let answers = client.reason_batch(&batch, WAIT).await.unwrap();
        for (x, a) in batch.iter().zip(&answers) {
            assert_eq!(a.reasoning, local.reason(x).unwrap());
        }
    }
    w1.cancel();
    w2.cancel();
    stop.cancel();
    running.wait().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_an_error_and_the_hub_keeps_serving() {
    let (running, stop) = start(config()).await;
    let w = worker(tcp(&running), "w", None);
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 1).await;
    let err = client.reason(&[0.0; 767], WAIT).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Remote {
            code: ErrorCode::InvalidInput,
            message: "encoding has 767 values, the model takes 768".into()
        }
    );
    let mut nan = vec![0.0; 768];
    nan[5] = f32::NAN;
    let err = client.reason(&nan, WAIT).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { code: ErrorCode::InvalidInput, message } if message.contains("index 5 is NaN")),
        "{err}"
    );
    assert!(client.reason(&[0.0; 768], WAIT).await.is_ok());
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_engine_is_a_clear_error_naming_what_to_start() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    let err = client.reason(&[0.0; 768], WAIT).await.unwrap_err();
    match err {
        ClientError::Remote {
            code: ErrorCode::NoEngineAvailable,
            message,
        } => assert!(message.contains("qnllm worker --connect"), "{message}"),
        other => panic!("{other}"),
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_answer_calls_and_unknown_ones_are_named() {
    let (running, stop) = start(config()).await;
    running.hub().register_handler(
        "double",
        std::sync::Arc::new(|_, args: &[u8]| Ok(args.iter().map(|b| b.wrapping_mul(2)).collect())),
    );
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    assert_eq!(
        client.call("echo", b"\x00\xffbinary", WAIT).await.unwrap(),
        b"\x00\xffbinary"
    );
    assert_eq!(
        client.call("double", &[1, 2, 3], WAIT).await.unwrap(),
        [2, 4, 6]
    );
    let engines: serde_json::Value =
        serde_json::from_slice(&client.call("engines", b"", WAIT).await.unwrap()).unwrap();
    assert_eq!(engines, serde_json::json!([]));
    match client.call("nope", b"", WAIT).await.unwrap_err() {
        ClientError::Remote {
            code: ErrorCode::UnknownHandler,
            message,
        } => assert!(message.contains("double, echo, engines"), "{message}"),
        other => panic!("{other}"),
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_the_right_one_accepted() {
    let (running, stop) = start(HubConfig {
        token: Some("s3cret".into()),
        ..config()
    })
    .await;
    for token in [None, Some("wrong"), Some("s3cret-but-longer")] {
        match Client::connect(&tcp(&running), "test", token)
            .await
            .unwrap_err()
        {
            ClientError::Remote { code, .. } => assert_eq!(code, ErrorCode::Unauthorized),
            other => panic!("{other}"),
        }
    }
    let client = Client::connect(&tcp(&running), "test", Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(client.call("echo", b"in", WAIT).await.unwrap(), b"in");
    // A worker with the wrong token stops at once instead of retrying forever.
    let mut config = qnllm_hub::WorkerConfig::new(tcp(&running));
    config.token = Some("wrong".into());
    let err = qnllm_hub::worker::run(
        config,
        engine("w"),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_after_connecting_is_refused_with_hello_timeout() {
    let (running, stop) = start(HubConfig {
        hello_timeout_ms: 200,
        ..config()
    })
    .await;
    let addr = addr(&running);
    let messages = tokio::task::spawn_blocking(move || {
        read_all(&mut std::net::TcpStream::connect(addr).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(error_code(&messages), Some(ErrorCode::HelloTimeout));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_cleanly() {
    let (running, stop) = start(HubConfig {
        max_connections: 3,
        worker_reserved_connections: 0,
        ..config()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&tcp(&running), "test", None).await.unwrap());
    }
    match Client::connect(&tcp(&running), "extra", None)
        .await
        .unwrap_err()
    {
        ClientError::Remote {
            code: ErrorCode::TooManyConnections,
            message,
        } => assert!(message.contains("cap of 3"), "{message}"),
        other => panic!("{other}"),
    }
    // The ones inside still work, and a slot frees when one leaves.
    assert_eq!(clients[0].call("echo", b"x", WAIT).await.unwrap(), b"x");
    let metrics = clients[0].metrics(WAIT).await.unwrap();
    assert_eq!(metrics["connections"]["refused"], 1);
    // The closed connection's slot is released when the hub notices the close, which it
    // announces on the `connections` topic.
    let mut events = clients[0].subscribe(&["connections"], WAIT).await.unwrap();
    drop(clients.pop());
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if event.data["closed"].is_string() {
            break;
        }
    }
    let again = Client::connect(&tcp(&running), "again", None)
        .await
        .unwrap();
    assert_eq!(again.call("echo", b"y", WAIT).await.unwrap(), b"y");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_abuse_gets_an_error_frame_and_a_close_while_others_are_served() {
    let (running, stop) = start(HubConfig {
        max_frame_bytes: 1 << 20,
        ..config()
    })
    .await;
    let w = worker(tcp(&running), "w", None);
    let client = Client::connect(&tcp(&running), "good", None).await.unwrap();
    wait_for_engines(&client, 1).await;

    let mut bad_version = hello(None);
    bad_version[4] = 2;
    let mut unknown_kind = frame(&Message::Ping);
    unknown_kind[5] = 0xee;
    let mut huge = frame(&Message::Reason(vec![0.0; 4].into()));
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let truncated_body = {
        let mut f = frame(&Message::Ping);
        f[5] = 0x21; // a result header with an empty body
        f
    };
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, ErrorCode)> = vec![
        (
            "bad magic",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![],
            ErrorCode::BadMagic,
        ),
        (
            "wrong version",
            bad_version,
            vec![],
            ErrorCode::UnsupportedVersion,
        ),
        (
            "unknown kind after hello",
            hello(None),
            unknown_kind,
            ErrorCode::UnknownKind,
        ),
        (
            "4 GiB header after hello",
            hello(None),
            huge,
            ErrorCode::FrameTooLarge,
        ),
        (
            "truncated body after hello",
            hello(None),
            truncated_body,
            ErrorCode::TruncatedBody,
        ),
        (
            "hello with an empty JSON body",
            frame(&Message::Ping)[..5]
                .to_vec()
                .into_iter()
                .chain([1u8, 0, 0])
                .chain([0; 16])
                .collect(),
            vec![],
            ErrorCode::MalformedBody,
        ),
        (
            "reason before hello",
            frame(&Message::Reason(vec![0.0; 768].into())),
            vec![],
            ErrorCode::UnexpectedMessage,
        ),
    ];
    let addr = addr(&running);
    for (name, first, second, want) in cases {
        let messages = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(&first).unwrap();
            stream.write_all(&second).unwrap();
            read_all(&mut stream) // returns at EOF: the hub closed the connection
        })
        .await
        .unwrap();
        assert_eq!(error_code(&messages), Some(want), "{name}: {messages:?}");
        // Other clients are unaffected.
        assert!(client.reason(&[0.0; 768], WAIT).await.is_ok(), "{name}");
    }
    // The 4 GiB header was refused from its header alone, before any allocation: the
    // FrameTooLarge case above is the proof (the decoder checks the length first).
    let metrics = client.metrics(WAIT).await.unwrap();
    assert!(
        metrics["protocol_errors"].as_u64().unwrap() >= 5,
        "{metrics}"
    );
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_message_is_answered_and_closes_the_connection() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "rude", None).await.unwrap();
    // A message a client may not send: a protocol failure (code < 16), so the hub closes.
    let registered = Message::Registered(qnllm_protocol::Registered {
        engine_id: 1,
        heartbeat_interval_ms: 1,
    });
    let err = client.request(&registered, WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnexpectedMessage,
                ..
            }
        ),
        "{err}"
    );
    let after = client.call("echo", b"x", WAIT).await.unwrap_err();
    assert!(matches!(after, ClientError::Closed(_)), "{after}");
    // Everyone else goes on.
    let other = Client::connect(&tcp(&running), "polite", None)
        .await
        .unwrap();
    assert_eq!(other.call("echo", b"y", WAIT).await.unwrap(), b"y");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_with_requests_in_flight() {
    let (running, stop) = start(config()).await;
    let w1 = worker(tcp(&running), "w1", None);
    let w2 = worker(tcp(&running), "w2", None);
    let probe = Client::connect(&tcp(&running), "probe", None)
        .await
        .unwrap();
    wait_for_engines(&probe, 2).await;
    let endpoint = tcp(&running);
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&endpoint, "many", None).await.unwrap();
            let inputs: Vec<Vec<f32>> = NormalInputs::new(c, 768).take(5).collect();
            // All five are sent before any answer comes back: the client multiplexes them.
            let answers =
                futures::future::join_all(inputs.iter().map(|x| client.reason(x, WAIT))).await;
            answers.into_iter().filter(Result::is_ok).count()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    assert_eq!(ok, 1_000);
    let metrics = probe.metrics(WAIT).await.unwrap();
    assert!(
        metrics["connections"]["total"].as_u64().unwrap() >= 203,
        "{metrics}"
    );
    w1.cancel();
    w2.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_says_goodbye() {
    let (running, stop) = start(config()).await;
    let w = worker(tcp(&running), "w", None);
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 1).await;
    let batch: Vec<Vec<f32>> = NormalInputs::new(3, 768).take(2_000).collect();
    let hub = running.hub().clone();
    let (answers, ()) = tokio::join!(client.reason_batch(&batch, WAIT), async {
        // Ask the hub to stop only once the batch is in flight on it.
        while hub.metrics()["requests_in_flight"] == 0 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
    });
    assert_eq!(
        answers.unwrap().len(),
        2_000,
        "the in-flight batch was answered during shutdown"
    );
    running.wait().await;
    w.cancel();
}

/// A peer speaking the protocol by hand, to see exactly what the hub sends.
struct RawPeer {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawPeer {
    async fn connect(addr: std::net::SocketAddr, role: &str, name: &str) -> RawPeer {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
        };
        peer.send(&Message::Hello(Hello {
            protocol: 1,
            role: role.into(),
            name: name.into(),
            token: None,
        }))
        .await;
        assert!(matches!(peer.recv().await, Message::Welcome(_)));
        peer
    }

    async fn send(&mut self, message: &Message) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&frame(message)).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return frame.message().unwrap();
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the hub closed the connection");
        }
    }

    /// Receives until a message of the wanted kind, skipping heartbeat-driven noise.
    async fn recv_broadcast(&mut self) -> Vec<u8> {
        loop {
            if let Message::Broadcast(topic) = self.recv().await {
                return topic.payload;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_worker_in_one_order_and_subscribers_hear_of_engines() {
    let (running, stop) = start(config()).await;
    let addr = addr(&running);
    let mut watcher = RawPeer::connect(addr, "client", "watcher").await;
    watcher
        .send(&Message::Subscribe(qnllm_protocol::Subscribe {
            topics: vec!["engines".into()],
        }))
        .await;
    assert!(matches!(watcher.recv().await, Message::Event(e) if e.topic == "subscribed"));

    let register = |name: &str| {
        Message::Register(qnllm_protocol::Register {
            name: name.into(),
            model_digest: "00".repeat(32),
            model_version: 0,
            input_size: 768,
            labels: 10,
            max_in_flight: 1,
            role: qnllm_protocol::EngineRole::Engine,
        })
    };
    let mut workers = Vec::new();
    for name in ["raw1", "raw2"] {
        let mut w = RawPeer::connect(addr, "worker", name).await;
        w.send(&register(name)).await;
        assert!(matches!(w.recv().await, Message::Registered(_)));
        match watcher.recv().await {
            Message::Event(e) => assert_eq!(e.data["joined"], name),
            other => panic!("{other:?}"),
        }
        workers.push(w);
    }
    // Two clients broadcast 50 messages each, concurrently.
    let mut senders = Vec::new();
    for c in 0..2u8 {
        senders.push(tokio::spawn(async move {
            let mut client = RawPeer::connect(addr, "client", "b").await;
            for i in 0..50u8 {
                client
                    .send(&Message::Broadcast(qnllm_protocol::Topic {
                        topic: "sync".into(),
                        payload: vec![c, i],
                    }))
                    .await;
            }
            client // keep the connection open until all are sent
        }));
    }
    let mut orders = Vec::new();
    for w in &mut workers {
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen.push(w.recv_broadcast().await);
        }
        orders.push(seen);
    }
    for s in senders {
        drop(s.await.unwrap());
    }
    assert_eq!(
        orders[0], orders[1],
        "both workers saw the broadcasts in the same order"
    );
    for c in 0..2u8 {
        let from_c: Vec<u8> = orders[0]
            .iter()
            .filter(|p| p[0] == c)
            .map(|p| p[1])
            .collect();
        assert_eq!(
            from_c,
            (0..50).collect::<Vec<u8>>(),
            "each sender's order is kept"
        );
    }
    drop(workers.pop());
    match watcher.recv().await {
        Message::Event(e) => assert_eq!(e.data["left"], "raw2"),
        other => panic!("{other:?}"),
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_with_idle_timeout() {
    let (running, stop) = start(HubConfig {
        idle_timeout_ms: 200,
        ..config()
    })
    .await;
    let mut peer = RawPeer::connect(addr(&running), "client", "idle").await;
    match peer.recv().await {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_frames_and_bytes_per_connection() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "counted", None)
        .await
        .unwrap();
    for _ in 0..3 {
        client.call("echo", &[0; 100], WAIT).await.unwrap();
    }
    let metrics = client.metrics(WAIT).await.unwrap();
    let list = metrics["connections"]["list"].as_array().unwrap();
    let me = list.iter().find(|c| c["name"] == "counted").unwrap();
    assert_eq!(me["role"], "client");
    // Counted after the handshake: three calls and the metrics query itself.
    assert_eq!(me["frames_in"], 4, "{me}");
    let call_bytes = 24 + 2 + "echo".len() + 100;
    assert_eq!(me["bytes_in"], 3 * call_bytes + 24, "{me}");
    assert_eq!(me["in_flight"], 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_catches_a_worker_serving_the_wrong_model() {
    let cfg = HubConfig {
        mode: "redundant".into(),
        redundancy: 3,
        ..config()
    };
    let (running, stop) = start(cfg).await;
    let good: Vec<_> = ["g1", "g2", "g3"]
        .iter()
        .map(|n| worker(tcp(&running), n, None))
        .collect();
    let faulty = worker_serving(tcp(&running), "faulty", None, engine_with_seed("faulty", 2));
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 4).await;
    let local = SpikingEngine::from_seed(1, Params::default()).unwrap();
    for x in NormalInputs::new(5, 768).take(30) {
        let answer = client.reason(&x, WAIT).await.unwrap();
        assert_eq!(
            answer.reasoning,
            local.reason(&x).unwrap(),
            "the majority (right model) wins"
        );
        assert_ne!(answer.engine, "faulty");
    }
    // Another model never gets into the vote: it is kept in the router's foreign pool.
    let router = &client.metrics(WAIT).await.unwrap()["router"];
    let engines = router["engines"].as_array().unwrap();
    let faulty_row = engines.iter().find(|e| e["name"] == "faulty").unwrap();
    assert_eq!(faulty_row["pool"], "foreign", "{router}");
    assert_eq!(faulty_row["requests"], 0, "{router}");
    assert_eq!(router["disagreements"], 0, "{router}");
    for token in good.into_iter().chain([faulty]) {
        token.cancel();
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_cache_answers_repeats_and_reports_its_statistics() {
    let (running, stop) = start(HubConfig {
        cache_capacity: 100,
        ..config()
    })
    .await;
    let w = worker(tcp(&running), "w", None);
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 1).await;
    let x = NormalInputs::new(1, 768).next().unwrap();
    let first = client.reason(&x, WAIT).await.unwrap();
    let second = client.reason(&x, WAIT).await.unwrap();
    assert_eq!(first.reasoning, second.reasoning);
    let stats = client.request(&Message::CacheQuery, WAIT).await.unwrap();
    assert!(
        matches!(&stats, Message::CacheStats(s) if s.hits == 1 && s.misses == 1 && s.entries == 1),
        "{stats:?}"
    );
    let cleared = client.request(&Message::CacheClear, WAIT).await.unwrap();
    assert!(
        matches!(&cleared, Message::CacheStats(s) if s.entries == 0),
        "{cleared:?}"
    );
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_batching_sends_workers_fewer_larger_frames() {
    async fn worker_frames(batch_max: usize) -> u64 {
        // Heartbeats far apart: the worker's frames are then its replies (one per distinct
        // request id it was sent) and its first heartbeat, nothing else.
        let cfg = HubConfig {
            batch_max,
            batch_delay_us: 2_000,
            heartbeat_interval_ms: 600_000,
            heartbeat_timeout_ms: 1_200_000,
            ..config()
        };
        let (running, stop) = start(cfg).await;
        let w = worker(tcp(&running), "w", None);
        let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
        wait_for_engines(&client, 1).await;
        let inputs: Vec<Vec<f32>> = NormalInputs::new(9, 768).take(200).collect();
        let local = SpikingEngine::from_seed(1, Params::default()).unwrap();
        let answers =
            futures::future::join_all(inputs.iter().map(|x| client.reason(x, WAIT))).await;
        for (x, a) in inputs.iter().zip(answers) {
            assert_eq!(
                a.unwrap().reasoning,
                local.reason(x).unwrap(),
                "each caller gets its own answer"
            );
        }
        let metrics = client.metrics(WAIT).await.unwrap();
        let frames = metrics["connections"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["role"] == "worker")
            .unwrap()["frames_in"]
            .as_u64()
            .unwrap();
        w.cancel();
        stop.cancel();
        frames
    }
    let unbatched = worker_frames(0).await;
    let batched = worker_frames(16).await;
    assert_eq!(
        unbatched,
        200 + 1,
        "one reply per request id, and the first heartbeat"
    );
    assert!(
        batched < 100,
        "200 concurrent requests reached the worker in batches: {batched} frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_coordinate_teachers_and_teach_every_engine_through_the_hub() {
    let cfg = HubConfig {
        teachers: vec!["seed:2".into(), "seed:3".into(), "seed:4".into()],
        ..config()
    };
    let (running, stop) = start(cfg).await;
    let (w1, w2) = (
        worker(tcp(&running), "w1", None),
        worker(tcp(&running), "w2", None),
    );
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 2).await;
    let mut learned = 0;
    for x in NormalInputs::new(12, 768).take(20) {
        let coordinate = Message::Coordinate(qnllm_protocol::Coordinate {
            teachers: 0,
            learn: true,
            encoding: x.into(),
        });
        match client.request(&coordinate, WAIT).await.unwrap() {
            Message::CoordinationResult(r) => {
                assert_eq!(r.teachers.len(), 3);
                assert!(r.agreement > 0.0 && r.agreement <= 1.0);
                learned += usize::from(r.learned);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(learned, 20);
    let x = NormalInputs::new(13, 768).next().unwrap();
    let stale = Message::Learn(qnllm_protocol::Learn {
        label: 1,
        base_version: 3,
        encoding: x.clone().into(),
    });
    let err = client.request(&stale, WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::VersionConflict,
                ..
            }
        ),
        "{err}"
    );
    let fresh = Message::Learn(qnllm_protocol::Learn {
        label: 1,
        base_version: 20,
        encoding: x.into(),
    });
    let state = match client.request(&fresh, WAIT).await.unwrap() {
        Message::Learned(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(state.model_version, 21);
    // Both workers learned the same 21 updates: identical models, identical answers.
    let engines = client.metrics(WAIT).await.unwrap()["engines"].clone();
    for e in engines.as_array().unwrap() {
        assert_eq!(e["model_version"], 21);
        assert_eq!(
            e["model_digest"].as_str().unwrap(),
            hex(&state.model_digest)
        );
    }
    w1.cancel();
    w2.cancel();
    stop.cancel();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_cannot_hold_requests_past_their_deadline() {
    // Heartbeats would declare it dead after a minute: long after these deadlines.
    let cfg = HubConfig {
        heartbeat_interval_ms: 30_000,
        heartbeat_timeout_ms: 60_000,
        ..config()
    };
    let (running, stop) = start(cfg).await;
    let mut stuck = RawPeer::connect(addr(&running), "worker", "stuck").await;
    stuck
        .send(&Message::Register(qnllm_protocol::Register {
            name: "stuck".into(),
            model_digest: "00".repeat(32),
            model_version: 0,
            input_size: 768,
            labels: 10,
            max_in_flight: 1,
            role: qnllm_protocol::EngineRole::Engine,
        }))
        .await;
    assert!(matches!(stuck.recv().await, Message::Registered(_)));
    // From here on the worker reads nothing. Depending on how far the kernel lets the socket
    // buffers grow, these 18 MB may also fill the hub's 4 MiB queue toward the worker, so
    // that later requests wait for room; either way each must be answered by its deadline.
    // (The full queue itself is tested in `connection.rs`.)
    // The client sends 6 000 requests with a 300 ms deadline and waits far longer itself, so
    // every answer it reads is the hub's own verdict, not the client giving up.
    let mut client = RawPeer::connect(addr(&running), "client", "flood").await;
    let mut wire = BytesMut::new();
    for id in 1..=6_000u64 {
        encode_frame(
            &Message::Reason(vec![0.01f32; 768].into()),
            id,
            Deadline::from_micros(300_000),
            &mut wire,
        );
    }
    {
        use tokio::io::AsyncWriteExt;
        client.stream.write_all(&wire).await.unwrap();
    }
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 6_000 {
        match client.recv().await {
            Message::Error(e) => assert!(
                matches!(
                    e.code,
                    ErrorCode::DeadlineExceeded | ErrorCode::NoEngineAvailable
                ),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        answered.insert(answered.len());
    }
    drop(stuck);
    stop.cancel();
}
