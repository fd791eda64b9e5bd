//! A real worker (`qnllm_hub::worker::run`) against a scripted hub on 127.0.0.1:0: what it
//! answers when frames arrive in bursts, mixed with other kinds and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::BytesMut;
use common::scripted::ScriptedHub;
use common::*;
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_hub::Endpoint;
use qnllm_protocol::{encode_frame, Deadline, ErrorCode, Message};

/// A scripted hub with a real worker that has said hello and registered.
async fn joined(max_in_flight: u32) -> (ScriptedHub, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut config = qnllm_hub::WorkerConfig::new(endpoint);
    config.name = "scripted".into();
    config.max_in_flight = max_in_flight;
    tokio::spawn(qnllm_hub::worker::run(config, engine("w"), stop.clone()));
    (ScriptedHub::accept(&listener).await, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_is_answered_deadline_exceeded_not_computed() {
    let (mut hub, stop) = joined(64).await;
    let reason = Message::Reason(vec![0.4; 768].into());
    let mut wire = BytesMut::new();
    encode_frame(
        &reason,
        1,
        Deadline::from_remaining(std::time::Duration::from_micros(1)),
        &mut wire,
    );
    encode_frame(&reason, 2, Deadline::NONE, &mut wire);
    hub.send_bytes(&wire).await;
    match hub.reply().await {
        (1, Message::Error(e)) => assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert!(matches!(hub.reply().await, (2, Message::Result(_))));
    stop.cancel();
}

// One thread: the worker's reader handles every frame of the write below before any task
// it spawns runs, so the cancel is read while its request waits for the one permit.
#[tokio::test(flavor = "current_thread")]
async fn a_request_cancelled_before_its_turn_is_never_computed_nor_answered() {
    // The hub forgot the id when it sent `cancel` (docs/protocol.md: the worker sends no
    // answer for it at all).
    let (mut hub, stop) = joined(1).await;
    let batch = |count: usize| {
        let values: Vec<f32> = NormalInputs::new(3, 768).take(count).flatten().collect();
        Message::Batch(qnllm_protocol::Batch::new(768, values).unwrap())
    };
    // In one write: a batch that takes the worker's one permit, a batch that waits for
    // it, the cancel of that one, and a last batch.
    let (first, cancelled, last) = (1, 2, 3);
    let mut wire = BytesMut::new();
    encode_frame(&batch(4), first, Deadline::NONE, &mut wire);
    encode_frame(&batch(1), cancelled, Deadline::NONE, &mut wire);
    encode_frame(&Message::Cancel, cancelled, Deadline::NONE, &mut wire);
    encode_frame(&batch(1), last, Deadline::NONE, &mut wire);
    hub.send_bytes(&wire).await;
    // The cancelled batch's turn comes between the other two: whatever it sent then
    // would come before the last batch's result.
    let mut answered = Vec::new();
    while answered.last() != Some(&last) {
        match hub.reply().await {
            (id, Message::BatchResult(r)) if id == first || id == last => {
                assert_eq!(r.results.len(), if id == first { 4 } else { 1 });
                answered.push(id);
            }
            (id, message) if id == cancelled => {
                panic!("the cancelled request was answered: {message:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, [first, last]);
    // Nothing for it comes later either: the next frame answers a ping.
    hub.send(&Message::Ping).await;
    assert!(matches!(hub.reply().await, (0, Message::Pong)));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_sigterm_says_draining_and_leaves_when_the_hub_releases_it() {
    let (mut hub, stop) = joined(64).await;
    stop.cancel();
    match hub.reply().await {
        (0, Message::Status(status)) => assert_eq!(status.state, "draining"),
        other => panic!("{other:?}"),
    }
    // Still serving what comes until released.
    hub.send_bytes(&{
        let mut wire = BytesMut::new();
        encode_frame(
            &Message::Reason(vec![0.1; 768].into()),
            7,
            Deadline::NONE,
            &mut wire,
        );
        wire
    })
    .await;
    assert!(matches!(hub.reply().await, (7, Message::Result(_))));
    hub.send(&Message::Goodbye(qnllm_protocol::Goodbye {
        reason: "drained".into(),
    }))
    .await;
    assert!(matches!(hub.reply().await, (0, Message::Goodbye(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_in_one_write_gets_every_answer_right_and_in_place() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let stop = worker(endpoint, "burst", None);
    let mut hub = ScriptedHub::accept(&listener).await;

    // 300 reasons in one write, with a ping after the 150th and a wrong-length encoding
    // after the 200th: the worker reads them in a few bites and serves them in groups.
    let inputs: Vec<Vec<f32>> = NormalInputs::new(11, 768).take(300).collect();
    let mut wire = BytesMut::new();
    for (i, x) in inputs.iter().enumerate() {
        let id = i as u64 + 1;
        encode_frame(
            &Message::Reason(x.clone().into()),
            id,
            Deadline::NONE,
            &mut wire,
        );
        if id == 150 {
            encode_frame(&Message::Ping, 1_000, Deadline::NONE, &mut wire);
        }
        if id == 200 {
            let short = Message::Reason(vec![0.5f32; 767].into());
            encode_frame(&short, 2_000, Deadline::NONE, &mut wire);
        }
    }
    hub.send_bytes(&wire).await;

    let local = SpikingEngine::from_seed(1, Params::default()).unwrap();
    let mut replies: HashMap<u64, Message> = HashMap::new();
    while replies.len() < 302 {
        let frame = hub.recv().await;
        let message = frame.message().unwrap();
        if matches!(message, Message::Heartbeat(_)) {
            continue;
        }
        let id = frame.header.request_id;
        assert!(replies.insert(id, message).is_none(), "two replies to {id}");
    }
    for (i, x) in inputs.iter().enumerate() {
        let expected = local.reason(x).unwrap();
        match &replies[&(i as u64 + 1)] {
            Message::Result(body) => {
                assert_eq!(body.label, expected.label, "request {}", i + 1);
                assert_eq!(
                    body.result_digest,
                    expected.result_digest.0,
                    "request {}",
                    i + 1
                );
                assert_eq!(body.scores, expected.scores, "request {}", i + 1);
            }
            other => panic!("request {}: {other:?}", i + 1),
        }
    }
    assert!(matches!(replies[&1_000], Message::Pong));
    match &replies[&2_000] {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidInput);
            assert!(e.message.contains("767"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    stop.cancel();
}
