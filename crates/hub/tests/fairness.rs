//! Fairness across client connections against a real hub on 127.0.0.1:0, counted, not
//! timed: a client that pipelines to its budget and never reads cannot queue ahead of a
//! quiet client's request; the quiet one is served after at most one of the neighbour's per
//! slot, while the neighbour's queue stays full.

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
