//! Peers that misbehave, against a real hub on 127.0.0.1:0: silent sockets, clients that
//! hog the connection cap, duplicate request ids, spent deadlines, stalled workers,
//! malformed worker frames, too many subscriptions; the hub's count of the deadlines it
//! answers, and the cancel its worker gets; and the order of `registered`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use qnllm_engine::NormalInputs;
use qnllm_hub::{Client, ClientError, HubConfig};
use qnllm_protocol::{Deadline, ErrorCode, Learn, Message, MessageKind, Topic};

/// Makes sure this process may open `n` more files (sockets), raising its soft limit with
/// `prlimit` if needed.
fn allow_open_files(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    if soft < n + 256 {
        let want = format!("--nofile={}", n + 1_024);
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), &want])
            .status()
            .unwrap();
        assert!(status.success(), "cannot raise RLIMIT_NOFILE to {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_lock_out_neither_a_worker_nor_a_client() {
    allow_open_files(2_100);
    // A long hello timeout: silence alone would hold every slot for the whole test.
    let (running, stop) = start(HubConfig {
        hello_timeout_ms: 600_000,
        ..config()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..2_000 {
        silent.push(Peer::silent(addr(&running)).await);
    }
    // A client still gets in at once...
    let client = Client::connect(&tcp(&running), "late", None).await.unwrap();
    // ...and so does a worker, on its first attempt.
    let stop_worker = tokio_util::sync::CancellationToken::new();
    let mut worker_config = qnllm_hub::WorkerConfig::new(tcp(&running));
    worker_config.name = "w".into();
    worker_config.max_retries = Some(0);
    let worker = tokio::spawn(qnllm_hub::worker::run(
        worker_config,
        engine("w"),
        stop_worker.clone(),
    ));
    wait_for_engines(&client, 1).await;
    assert!(client.reason(&[0.1; 768], WAIT).await.is_ok());
    // Once they have had their floor, all but the budget's 64 are closed, each told why.
    use futures::StreamExt;
    let mut told: futures::stream::FuturesUnordered<_> =
        silent.iter_mut().map(|peer| peer.recv()).collect();
    for _ in 0..2_000 - 64 {
        let (_, message) = told.next().await.unwrap().expect("closed without a word");
        assert!(
            matches!(&message, Message::Error(e) if e.code == ErrorCode::HelloTimeout),
            "{message:?}"
        );
    }
    drop(told);
    let metrics = client.metrics(WAIT).await.unwrap();
    let connections = &metrics["connections"];
    assert!(
        connections["handshaking"].as_u64().unwrap() <= 64,
        "{connections}"
    );
    assert!(
        connections["handshakes_evicted"].as_u64().unwrap() >= 2_000 - 64,
        "{connections}"
    );
    stop_worker.cancel();
    worker.await.unwrap().unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_take_the_connections_kept_for_workers() {
    let (running, stop) = start(HubConfig {
        max_connections: 4,
        worker_reserved_connections: 1,
        ..config()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&tcp(&running), "c", None).await.unwrap());
    }
    match Client::connect(&tcp(&running), "extra", None).await {
        Err(ClientError::Remote {
            code: ErrorCode::TooManyConnections,
            message,
        }) => assert!(message.contains("kept for workers"), "{message}"),
        other => panic!("{other:?}"),
    }
    let w = worker(tcp(&running), "w", None);
    wait_for_engines(&clients[0], 1).await;
    assert!(clients[1].reason(&[0.1; 768], WAIT).await.is_ok());
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_id_in_flight_gets_its_own_error() {
    let (running, stop) = start(config()).await;
    let w = worker(tcp(&running), "w", None);
    let probe = Client::connect(&tcp(&running), "probe", None)
        .await
        .unwrap();
    wait_for_engines(&probe, 1).await;
    let mut peer = Peer::hello(addr(&running), "client", "dup").await;
    // Both in one write: the second is read while the first is still at the worker.
    let mut both = bytes::BytesMut::new();
    let reason = Message::Reason(vec![0.2; 768].into());
    for _ in 0..2 {
        qnllm_protocol::encode_frame(&reason, 5, Deadline::NONE, &mut both);
    }
    peer.send_bytes(&both).await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (id, message) = peer.recv().await.unwrap();
        assert_eq!(id, 5);
        kinds.push(match message {
            Message::Result(_) => "result".to_string(),
            Message::Error(e) => format!("{:?}", e.code),
            other => panic!("{other:?}"),
        });
    }
    kinds.sort();
    assert_eq!(kinds, ["DuplicateRequestId", "result"]);
    // The connection goes on.
    peer.send(&Message::Ping, 6).await;
    assert!(matches!(peer.recv().await, Some((6, Message::Pong))));
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_deadline_is_answered_at_once_and_never_computed() {
    let (running, stop) = start(config()).await;
    let w = worker(tcp(&running), "w", None);
    let probe = Client::connect(&tcp(&running), "probe", None)
        .await
        .unwrap();
    wait_for_engines(&probe, 1).await;
    let mut peer = Peer::hello(addr(&running), "client", "hasty").await;
    for id in 1..=50u64 {
        let reason = Message::Reason(vec![0.3; 768].into());
        peer.send_with(
            &reason,
            id,
            Deadline::from_remaining(Duration::from_micros(1)),
        )
        .await;
        match peer.recv().await.unwrap() {
            (got, Message::Error(e)) => {
                assert_eq!(got, id);
                assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message);
            }
            other => panic!("a 1 µs deadline came back as {other:?}"),
        }
    }
    let metrics = probe.metrics(WAIT).await.unwrap();
    assert_eq!(metrics["engines"][0]["served"], 0, "{metrics}");
    assert_eq!(metrics["expired_on_arrival"], 50, "{metrics}");
    // Spent deadlines are the requester's doing: the healthy engine is not ejected.
    assert_eq!(metrics["router"]["ejections"], 0, "{metrics}");
    w.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_counts_each_deadline_it_answers_and_how_late_it_said_so() {
    let (running, stop) = start_without_heartbeats().await;
    // A worker that takes requests and never answers: every deadline passes in the hub.
    let mute = registered_worker(addr(&running), "mute").await;
    let mut peer = Peer::hello(addr(&running), "client", "patient").await;
    for id in 1..=20u64 {
        let reason = Message::Reason(vec![0.3; 768].into());
        peer.send_with(
            &reason,
            id,
            Deadline::from_remaining(Duration::from_millis(20)),
        )
        .await;
    }
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 20 {
        match peer.recv().await.unwrap() {
            (id, Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message);
                assert!(answered.insert(id), "request {id} answered twice");
            }
            other => panic!("{other:?}"),
        }
    }
    peer.send(&Message::MetricsQuery, 99).await;
    let metrics = match peer.recv().await {
        Some((99, Message::Metrics(metrics))) => metrics,
        other => panic!("{other:?}"),
    };
    let deadlines = &metrics["deadlines"];
    assert_eq!(deadlines["exceeded"], 20, "{metrics}");
    assert_eq!(deadlines["held_back"], 0, "{metrics}");
    assert_eq!(metrics["expired_on_arrival"], 0, "{metrics}");
    let lateness = &deadlines["lateness_us"];
    assert_eq!(lateness["count"], 20, "{metrics}");
    let (p50, p99, max) = (
        lateness["p50"].as_u64().unwrap(),
        lateness["p99"].as_u64().unwrap(),
        lateness["max"].as_u64().unwrap(),
    );
    assert!(1 <= p50 && p50 <= p99 && p99 <= max, "{metrics}");
    drop(mute);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_hub_answers_at_its_deadline_is_cancelled_at_the_worker() {
    let (running, stop) = start_without_heartbeats().await;
    let mut slow = registered_worker(addr(&running), "slow").await;
    let mut client = Peer::hello(addr(&running), "client", "hasty").await;
    let reason = Message::Reason(vec![0.3; 768].into());
    // The hub's alarm answers at the deadline, to the µs, before the router's own timer for
    // the try, which tokio rounds up to the next millisecond.
    client
        .send_with(
            &reason,
            1,
            Deadline::from_remaining(Duration::from_millis(100)),
        )
        .await;
    let first = within(next_request(&mut slow)).await;
    match within(client.recv()).await {
        Some((1, Message::Error(e))) => {
            assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message)
        }
        other => panic!("{other:?}"),
    }
    // The worker is told to drop the first request before it gets the second: the cancel
    // went into its queue before the client's error did.
    client
        .send_with(&reason, 2, Deadline::from_remaining(Duration::from_secs(5)))
        .await;
    let (id, kind) = loop {
        match within(slow.recv()).await {
            Some((id, Message::Cancel)) => break (id, "cancel"),
            Some((id, Message::Reason(_))) => break (id, "reason"),
            Some(_) => {}
            None => panic!("the hub closed the worker"),
        }
    };
    assert_eq!((id, kind), (first, "cancel"));
    drop(slow);
    stop.cancel();
}

/// An update a fresh student takes: label 1 on model version 0.
fn first_update() -> Message {
    Message::Learn(Learn {
        label: 1,
        base_version: 0,
        encoding: vec![0.3; 768].into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learn_the_hub_gives_up_on_is_never_cancelled_at_the_worker() {
    let (running, stop) = start_without_heartbeats().await;
    let mut slow = registered_worker(addr(&running), "slow").await;
    let model = engine("slow");
    let mut client = Peer::hello(addr(&running), "client", "teacher").await;
    let learn = first_update();
    client
        .send_with(&learn, 1, Deadline::from_remaining(Duration::from_secs(1)))
        .await;
    // The coordinator asks the student for its prediction first (the margin rule): that is
    // answered, as the model would; the update itself never is.
    let (_, first) = answer_reasons_until_a_learn(&mut slow, &model).await;
    match within(client.recv()).await {
        Some((1, Message::Error(e))) => {
            assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message)
        }
        other => panic!("{other:?}"),
    }
    // Replicas must apply the same updates: the one the worker has is not taken back. A
    // cancel would have been queued for the worker before the client's error; the pong to
    // a ping the worker sends now comes behind it on the same connection.
    slow.send(&Message::Ping, 3).await;
    loop {
        match within(slow.recv()).await {
            Some((id, Message::Cancel)) => {
                panic!("the hub cancelled request {id} (the learn was {first})")
            }
            Some((3, Message::Pong)) => break,
            Some(_) => {}
            None => panic!("the hub closed the worker"),
        }
    }
    drop(slow);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_a_worker_answers_after_its_client_gave_up_is_taken_and_learning_goes_on() {
    for gave_up in [GaveUp::Deadline, GaveUp::Cancel] {
        let (running, stop) = start_without_heartbeats().await;
        let mut slow = registered_worker(addr(&running), "slow").await;
        let model = engine("slow");
        let mut client = Peer::hello(addr(&running), "client", "teacher").await;
        let mut inputs = NormalInputs::new(3, 768);
        // The worker answers the first update in time, the second after its client gave up,
        // and the third in time again; in between it answers what it reads, in order.
        for (id, answer_late) in [(1, false), (2, true), (3, false)] {
            let learn = Message::Learn(Learn {
                label: id as u32,
                base_version: id - 1,
                encoding: inputs.next().unwrap().to_vec().into(),
            });
            let budget = match gave_up {
                GaveUp::Deadline if answer_late => Duration::from_millis(300),
                _ => WAIT,
            };
            client
                .send_with(&learn, id, Deadline::from_remaining(budget))
                .await;
            let (update, update_id) = tokio::select! {
                update = answer_reasons_until_a_learn(&mut slow, &model) => update,
                reply = client.recv() => {
                    panic!("{gave_up:?}, update {id}: the hub answered {reply:?} and sent the worker nothing")
                }
            };
            if answer_late {
                if gave_up == GaveUp::Cancel {
                    client.send(&Message::Cancel, id).await;
                }
                let want = match gave_up {
                    GaveUp::Deadline => ErrorCode::DeadlineExceeded,
                    GaveUp::Cancel => ErrorCode::Cancelled,
                };
                match within(client.recv()).await {
                    Some((2, Message::Error(e))) => assert_eq!(e.code, want, "{}", e.message),
                    other => panic!("{gave_up:?}: {other:?}"),
                }
            }
            let state = model
                .learn_at(
                    update.encoding.as_slice(),
                    update.label,
                    update.base_version,
                )
                .unwrap();
            let learned = Message::Learned(qnllm_protocol::Learned {
                model_version: state.version,
                model_digest: state.digest.0,
            });
            slow.send(&learned, update_id).await;
            if !answer_late {
                match within(client.recv()).await {
                    Some((got, Message::Learned(l))) if got == id => {
                        assert_eq!(l.model_version, id, "{gave_up:?}, update {id}")
                    }
                    other => panic!("{gave_up:?}, update {id}: {other:?}"),
                }
            }
        }
        drop(slow);
        stop.cancel();
    }
}

/// How a client stops waiting for its `learn`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GaveUp {
    Deadline,
    Cancel,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_its_limit_for_the_coordinator_is_sent_no_client_reason() {
    let (running, stop) = start_without_heartbeats().await;
    // The first engine in the rotation is the student the coordinator asks for its
    // prediction; it takes one request at a time.
    let mut full = registered_worker_taking(addr(&running), "full", 1).await;
    let mut free = registered_worker(addr(&running), "free").await;
    let model = engine("free");
    let mut client = Peer::hello(addr(&running), "client", "teacher").await;
    let learn = first_update();
    client
        .send_with(&learn, 1, Deadline::from_remaining(WAIT))
        .await;
    // It holds the prediction: at its limit, through no request of the router's own.
    next_reason(&mut full).await;
    let mut inputs = NormalInputs::new(4, 768);
    for id in 10..30 {
        let x = inputs.next().unwrap().to_vec();
        client.send(&Message::Reason(x.into()), id).await;
        let (sent, encoding) = tokio::select! {
            got = next_reason(&mut free) => got,
            (sent, _) = next_reason(&mut full) => {
                panic!("reason {id} went to the worker at its limit (its request {sent})")
            }
        };
        let answer = model.reason_now(encoding.as_slice()).unwrap();
        let reply = Message::Result(qnllm_hub::convert::result_body(&answer));
        free.send(&reply, sent).await;
        match within(client.recv()).await {
            Some((got, Message::Result(_))) if got == id => {}
            other => panic!("reason {id}: {other:?}"),
        }
    }
    drop((full, free));
    stop.cancel();
}

/// The next `reason` the hub sends `worker`, with its id.
async fn next_reason(worker: &mut Peer) -> (u64, qnllm_protocol::Encoding) {
    loop {
        match within(worker.recv()).await {
            Some((id, Message::Reason(encoding))) => return (id, encoding),
            Some(_) => {}
            None => panic!("the hub closed the worker"),
        }
    }
}

/// Answers the hub's `reason`s to `worker` with `model` until a `learn` comes, and returns it
/// with its id, unanswered.
async fn answer_reasons_until_a_learn(
    worker: &mut Peer,
    model: &qnllm_router::LocalBackend,
) -> (Learn, u64) {
    loop {
        match within(worker.recv()).await {
            Some((id, Message::Reason(encoding))) => {
                let answer = model.reason_now(encoding.as_slice()).unwrap();
                let reply = Message::Result(qnllm_hub::convert::result_body(&answer));
                worker.send(&reply, id).await;
            }
            Some((id, Message::Learn(learn))) => return (learn, id),
            Some(_) => {}
            None => panic!("the hub closed the worker"),
        }
    }
}

/// A hub whose workers need send no heartbeats: a scripted worker stays listed for the
/// whole test.
async fn start_without_heartbeats() -> (qnllm_hub::RunningHub, tokio_util::sync::CancellationToken)
{
    start(HubConfig {
        heartbeat_timeout_ms: 600_000,
        ..config()
    })
    .await
}

/// A scripted worker, once the hub has said `registered`.
async fn registered_worker(addr: std::net::SocketAddr, name: &str) -> Peer {
    registered_worker_taking(addr, name, 64).await
}

/// A scripted worker that takes `max_in_flight` requests at once, once registered.
async fn registered_worker_taking(
    addr: std::net::SocketAddr,
    name: &str,
    max_in_flight: u32,
) -> Peer {
    let mut worker = Peer::worker_taking(addr, name, max_in_flight).await;
    assert!(matches!(
        worker.recv().await,
        Some((_, Message::Registered(_)))
    ));
    worker
}

/// `step`'s output, or a failed test if it takes longer than `WAIT`.
async fn within<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, step)
        .await
        .unwrap_or_else(|_| panic!("nothing came within {WAIT:?}"))
}

/// The id of the next `reason` the hub sends this worker.
async fn next_request(worker: &mut Peer) -> u64 {
    next_reason(worker).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_holds_up_no_broadcast() {
    // Heartbeats are not needed to keep the stalled worker listed for the whole test.
    let (running, stop) = start_without_heartbeats().await;
    let addr = addr(&running);
    let _stalled = registered_worker(addr, "stalled").await;
    let mut listening = registered_worker(addr, "listening").await;
    // `stalled` never reads again. 64 broadcasts of 512 KiB (32 MiB) overfill its socket
    // buffers and its queue; `listening` reads each before the next is sent.
    let mut sender = Peer::hello(addr, "client", "announcer").await;
    for i in 0..64u8 {
        let topic = Topic {
            topic: "weights".into(),
            payload: vec![i; 512 * 1024],
        };
        sender.send(&Message::Broadcast(topic), 0).await;
        loop {
            match listening.recv().await {
                Some((_, Message::Broadcast(topic))) => {
                    assert_eq!(topic.payload[0], i, "broadcasts out of order");
                    break;
                }
                Some(_) => {}
                None => panic!("the listening worker was closed"),
            }
        }
    }
    // The client that broadcast is still served, and the worker that reads got them all.
    sender.send(&Message::MetricsQuery, 9).await;
    let metrics = match sender.recv().await {
        Some((9, Message::Metrics(metrics))) => metrics,
        other => panic!("{other:?}"),
    };
    assert!(
        metrics["broadcasts_dropped"].as_u64().unwrap() >= 1,
        "{metrics}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_a_malformed_heartbeat_is_closed() {
    let (running, stop) = start(config()).await;
    let mut peer = registered_worker(addr(&running), "sloppy").await;
    // A heartbeat header with a body that is not its JSON.
    let mut frame = bytes::BytesMut::new();
    qnllm_protocol::encode_frame(&Message::Ping, 0, Deadline::NONE, &mut frame);
    frame[5] = MessageKind::Heartbeat as u8;
    frame[20..24].copy_from_slice(&5u32.to_le_bytes());
    frame.extend_from_slice(b"{bad}");
    peer.send_bytes(&frame).await;
    let mut saw = None;
    while let Some((_, message)) = peer.recv().await {
        if let Message::Error(e) = message {
            saw = Some(e.code);
        }
    }
    assert_eq!(saw, Some(ErrorCode::MalformedBody));
    let probe = Client::connect(&tcp(&running), "probe", None)
        .await
        .unwrap();
    wait_for_engines(&probe, 0).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_what_only_clients_send_is_closed() {
    let (running, stop) = start(config()).await;
    let mut peer = registered_worker(addr(&running), "confused").await;
    peer.send(&Message::MetricsQuery, 3).await;
    let mut saw = None;
    while let Some((_, message)) = peer.recv().await {
        if let Message::Error(e) = message {
            saw = Some(e.code);
        }
    }
    assert_eq!(saw, Some(ErrorCode::UnexpectedMessage));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_bounded() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "greedy", None)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(client.subscribe(&["engines"], WAIT).await.unwrap());
    }
    let err = client.subscribe(&["engines"], WAIT).await.unwrap_err();
    assert!(err.to_string().contains("37"), "{err}");
    // The connection is still good.
    assert_eq!(client.call("echo", b"z", WAIT).await.unwrap(), b"z");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_joining_worker_hears_registered_before_any_request() {
    let (running, stop) = start(config()).await;
    let w = worker(tcp(&running), "steady", None);
    let client = std::sync::Arc::new(Client::connect(&tcp(&running), "load", None).await.unwrap());
    wait_for_engines(&client, 1).await;
    let load = tokio::spawn({
        let client = client.clone();
        async move {
            let inputs: Vec<Vec<f32>> = NormalInputs::new(1, 768).take(32).collect();
            let mut ok = 0;
            for _ in 0..40 {
                let answers =
                    futures::future::join_all(inputs.iter().map(|x| client.reason(x, WAIT))).await;
                ok += answers.into_iter().filter(Result::is_ok).count();
            }
            ok
        }
    });
    for i in 0..15 {
        let mut joining = Peer::worker(addr(&running), &format!("joining-{i}")).await;
        match joining.recv().await {
            Some((_, Message::Registered(_))) => {}
            other => panic!("join {i}: {other:?} before registered"),
        }
        // Leaves without answering: what it was sent fails over to `steady`.
    }
    assert_eq!(load.await.unwrap(), 40 * 32);
    w.cancel();
    stop.cancel();
}
