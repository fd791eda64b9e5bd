//! What the hub does with a worker's replies, against a real hub on 127.0.0.1:0 and a
//! scripted worker over a real socket: a reply that does not decode closes that worker (its
//! requests go elsewhere), and every result a client gets names the engine that answered.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use qnllm_engine::NormalInputs;
use qnllm_hub::Client;
use qnllm_protocol::{Deadline, ErrorCode, Flags, Header, Message, MessageKind};

/// A frame of `kind` whose payload is `payload`, whatever it holds.
fn raw_frame(kind: MessageKind, request_id: u64, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: kind as u8,
        flags: Flags::EMPTY,
        request_id,
        deadline: Deadline::NONE,
        payload_len: payload.len() as u32,
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A hub that never closes a worker for its silence: the scripted workers send no
/// heartbeats, so whatever closes them is what they sent.
fn quiet_workers() -> qnllm_hub::HubConfig {
    qnllm_hub::HubConfig {
        heartbeat_timeout_ms: 600_000,
        ..config()
    }
}

/// What a scripted worker saw before the hub closed it.
#[derive(Debug, Default)]
struct Seen {
    reasons: usize,
    errors: Vec<ErrorCode>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_an_undecodable_result_is_closed_and_its_requests_go_elsewhere() {
    let (running, stop) = start(quiet_workers()).await;
    let client = Arc::new(Client::connect(&tcp(&running), "c", None).await.unwrap());
    // The garbling worker joins first, alone, so the first requests surely reach it.
    let mut garbler = Peer::worker(addr(&running), "garbler").await;
    assert!(matches!(
        garbler.recv().await,
        Some((_, Message::Registered(_)))
    ));
    wait_for_engines(&client, 1).await;
    let good = worker(tcp(&running), "good", None);
    wait_for_engines(&client, 2).await;
    // Every reason it is sent gets a `result` frame whose body is 7 bytes of junk.
    let garbling = tokio::spawn(async move {
        let mut seen = Seen::default();
        while let Some((id, message)) = garbler.recv().await {
            match message {
                Message::Reason(_) => {
                    seen.reasons += 1;
                    garbler
                        .send_bytes(&raw_frame(MessageKind::Result, id, b"garbage"))
                        .await;
                }
                Message::Error(e) => seen.errors.push(e.code),
                _ => {}
            }
        }
        seen
    });
    let inputs: Vec<Vec<f32>> = NormalInputs::new(3, 768).take(40).collect();
    let answers = futures::future::join_all(inputs.iter().map(|x| client.reason(x, WAIT))).await;
    // The hub closed the garbling worker (the loop above ends only on its close), after
    // telling it why.
    let seen = tokio::time::timeout(WAIT, garbling)
        .await
        .expect("the hub never closed the worker that sent an undecodable result")
        .unwrap();
    assert!(seen.reasons >= 1, "the garbler was never sent a request");
    // Seven bytes are too few for any result body.
    assert_eq!(seen.errors, [ErrorCode::TruncatedBody], "{seen:?}");
    // One answer for every request: a result from the good worker, or an error that says
    // what happened to the worker.
    for answer in &answers {
        match answer {
            Ok(answer) => assert_eq!(answer.engine, "good", "{answer:?}"),
            Err(e) => assert!(e.to_string().contains("undecodable"), "unclear error: {e}"),
        }
    }
    let served = answers.iter().filter(|a| a.is_ok()).count();
    assert!(served >= 1, "nothing was served: {answers:?}");
    // The garbler is gone; the good worker serves everyone, this client and others.
    let metrics = wait_for_engines(&client, 1).await;
    assert!(
        metrics["protocol_errors"].as_u64().unwrap() >= 1,
        "{metrics}"
    );
    let other = Client::connect(&tcp(&running), "other", None)
        .await
        .unwrap();
    for x in &inputs[..5] {
        assert_eq!(other.reason(x, WAIT).await.unwrap().engine, "good");
        assert_eq!(client.reason(x, WAIT).await.unwrap().engine, "good");
    }
    good.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_names_the_engine_that_answered_even_when_the_worker_leaves_it_empty() {
    let (running, stop) = start(quiet_workers()).await;
    let client = Client::connect(&tcp(&running), "c", None).await.unwrap();
    let mut scripted = Peer::worker(addr(&running), "scripted").await;
    assert!(matches!(
        scripted.recv().await,
        Some((_, Message::Registered(_)))
    ));
    wait_for_engines(&client, 1).await;
    // Right answers, computed by the same model, with the `engine` field left empty as a
    // worker may leave it.
    let answering = tokio::spawn(async move {
        let model = engine("scripted");
        while let Some((id, message)) = scripted.recv().await {
            if let Message::Reason(encoding) = message {
                let answer = model.reason_now(encoding.as_slice()).unwrap();
                let mut body = qnllm_hub::convert::result_body(&answer);
                body.engine = String::new();
                scripted.send(&Message::Result(body), id).await;
            }
        }
    });
    let x = NormalInputs::new(5, 768).next().unwrap();
    let answer = client.reason(&x, WAIT).await.unwrap();
    assert_eq!(answer.engine, "scripted", "{answer:?}");
    stop.cancel();
    running.wait().await;
    answering.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_one_name_are_told_apart_in_their_results() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "c", None).await.unwrap();
    let first = worker(tcp(&running), "twin", None);
    wait_for_engines(&client, 1).await;
    let second = worker(tcp(&running), "twin", None);
    let metrics = wait_for_engines(&client, 2).await;
    // The hub's names for them: the second is renamed, since names are unique on a hub.
    let mut listed: Vec<String> = metrics["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed.len(), 2);
    assert_ne!(listed[0], listed[1], "{metrics}");
    // Round-robin sends these to both; each result names the engine as `metrics` does,
    // though both workers call their own engine `twin`.
    let mut named: Vec<String> = Vec::new();
    for x in NormalInputs::new(6, 768).take(8) {
        let answer = client.reason(&x, WAIT).await.unwrap();
        if !named.contains(&answer.engine) {
            named.push(answer.engine);
        }
    }
    named.sort();
    assert_eq!(named, listed);
    first.cancel();
    second.cancel();
    stop.cancel();
}
