//! Fairness across client connections against a real hub on 127.0.0.1:0, counted, not
//! timed: a client that pipelines to its budget and never reads cannot queue ahead of a
//! quiet client's request; the quiet one is served after at most one of the neighbour's per
//! slot, while the neighbour's queue stays full; and a neighbour whose replies wait for room
//! in its full queue holds none of the router's slots meanwhile.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use qnllm_hub::{Client, HubConfig};
use qnllm_protocol::{Encoding, Message};

const NEIGHBOUR: f32 = 0.25;
const QUIET: f32 = 0.75;

/// Answers request `id` correctly, as the worker's model would.
async fn answer(worker: &mut Peer, id: u64, encoding: &Encoding) {
    let model = engine("holder");
    let answer = model.reason_now(encoding.as_slice()).unwrap();
    worker
        .send(
            &Message::Result(qnllm_hub::convert::result_body(&answer)),
            id,
        )
        .await;
}

/// The next request the worker is sent.
async fn next_reason(worker: &mut Peer) -> (u64, Encoding) {
    loop {
        match worker.recv().await.expect("the hub closed the worker") {
            (id, Message::Reason(encoding)) => return (id, encoding),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_is_served_while_a_neighbour_that_never_reads_has_its_queue_full() {
    let (running, stop) = start(HubConfig {
        max_routed_requests: 2,
        metrics_interval_ms: 10,
        // The scripted worker sends no heartbeats.
        heartbeat_timeout_ms: 600_000,
        ..config()
    })
    .await;
    let mut holder = Peer::worker(addr(&running), "holder").await;
    assert!(matches!(
        holder.recv().await,
        Some((_, Message::Registered(_)))
    ));
    let watcher = Client::connect(&tcp(&running), "watcher", None)
        .await
        .unwrap();
    wait_for_engines(&watcher, 1).await;
    let mut metrics = watcher.subscribe(&["metrics"], WAIT).await.unwrap();

    // The neighbour pipelines 50 requests and never reads a reply.
    let mut neighbour = Peer::hello(addr(&running), "client", "neighbour").await;
    for id in 1..=50 {
        neighbour
            .send(&Message::Reason(vec![NEIGHBOUR; 768].into()), id)
            .await;
    }
    // The router takes two at once: the worker is sent two, and holds them.
    let mut held = std::collections::VecDeque::new();
    for _ in 0..2 {
        let (id, encoding) = next_reason(&mut holder).await;
        assert_eq!(encoding.as_slice()[0], NEIGHBOUR);
        held.push_back((id, encoding));
    }
    let quiet = Client::connect(&tcp(&running), "quiet", None)
        .await
        .unwrap();
    let asked = tokio::spawn(async move { quiet.reason(&[QUIET; 768], WAIT).await });
    // Everything else waits in the hub: the neighbour's 48 and the quiet one.
    let all_waiting = async {
        loop {
            let event = metrics.recv().await.unwrap();
            if event.data["routed"]["waiting"] == 49 {
                assert_eq!(event.data["routed"]["in_router"], 2, "{}", event.data);
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, all_waiting)
        .await
        .expect("the requests never queued in the hub");
    // Each answer frees a slot; the ring of connections hands the next ones out in turn.
    let mut neighbours_answered = 0;
    let quiet_request = loop {
        let (id, encoding) = held.pop_front().unwrap();
        answer(&mut holder, id, &encoding).await;
        neighbours_answered += 1;
        let (id, encoding) = next_reason(&mut holder).await;
        if encoding.as_slice()[0] == QUIET {
            break (id, encoding);
        }
        held.push_back((id, encoding));
    };
    assert!(
        neighbours_answered <= 2,
        "{neighbours_answered} of the neighbour's requests went first"
    );
    answer(&mut holder, quiet_request.0, &quiet_request.1).await;
    let answer = asked.await.unwrap().unwrap();
    assert_eq!(answer.engine, "holder");
    // The neighbour's queue is still nearly full: it went on waiting its turn.
    let event = metrics.recv().await.unwrap();
    assert!(
        event.data["routed"]["waiting"].as_u64().unwrap() >= 45,
        "{}",
        event.data
    );
    drop(neighbour);
    drop(holder);
    stop.cancel();
}

/// An engine with many labels and almost no work: each result is about 8 KB.
fn wide_engine(name: &str) -> qnllm_router::LocalBackend {
    let params = qnllm_engine::Params {
        inputs: 4,
        hidden: 2,
        steps: 1,
        labels: 1_000,
        ..qnllm_engine::Params::default()
    };
    qnllm_router::LocalBackend::new(
        name,
        qnllm_engine::SpikingEngine::from_seed(1, params).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_whose_unread_replies_fill_its_queue_holds_no_router_slot() {
    let (running, stop) = start(HubConfig {
        max_routed_requests: 2,
        max_requests_per_connection: 64,
        metrics_interval_ms: 10,
        ..config()
    })
    .await;
    let _worker = worker_serving(tcp(&running), "wide", None, wide_engine("wide")).drop_guard();
    let watcher = Client::connect(&tcp(&running), "watcher", None)
        .await
        .unwrap();
    wait_for_engines(&watcher, 1).await;
    let mut metrics = watcher.subscribe(&["metrics"], WAIT).await.unwrap();

    // The neighbour reads nothing, with a small receive buffer: its replies (8 KB each)
    // soon fill the socket, then the hub's queue for it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    let mut neighbour = socket.connect(addr(&running)).await.unwrap();
    let mut wire = bytes::BytesMut::new();
    let hello = Message::Hello(qnllm_protocol::Hello {
        protocol: qnllm_protocol::PROTOCOL_VERSION,
        role: "client".into(),
        name: "neighbour".into(),
        token: None,
    });
    qnllm_protocol::encode_frame(&hello, 0, qnllm_protocol::Deadline::NONE, &mut wire);
    // Far more replies than the queue (4 MiB) and the socket buffers hold.
    for id in 1..=4_000 {
        let reason = Message::Reason(vec![0.5f32; 4].into());
        qnllm_protocol::encode_frame(&reason, id, qnllm_protocol::Deadline::NONE, &mut wire);
    }
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // The hub stops reading at the neighbour's budget: this write may never end.
        let _ = neighbour.write_all(&wire).await;
        neighbour
    });

    // The neighbour ends up at its budget, every one of its requests routed and answered
    // and waiting for room in its queue; none of them may keep a slot in the router.
    let stuck = async {
        loop {
            let event = metrics.recv().await.unwrap();
            let data = &event.data;
            let paused = data["connections"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "neighbour" && c["paused"] == true && c["in_flight"] == 64);
            if paused && data["routed"]["waiting"] == 0 && data["routed"]["in_router"] == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, stuck).await.expect(
        "the neighbour never stood still at its budget with the router free: its replies, \
         waiting for room, kept the router's slots",
    );
    // And a quiet client is served.
    let quiet = Client::connect(&tcp(&running), "quiet", None)
        .await
        .unwrap();
    let answer = quiet.reason(&[0.25; 4], WAIT).await.unwrap();
    assert_eq!(answer.engine, "wide");
    flood.abort();
    stop.cancel();
}
