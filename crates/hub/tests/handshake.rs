//! The handshake budget against a real hub on 127.0.0.1:0: a connection has its floor to say
//! hello before it can be closed to make room, so a burst of peers that all say hello gets
//! in, however small the budget.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use qnllm_hub::HubConfig;
use qnllm_protocol::{Deadline, Hello, Message};

fn hello_bytes(name: &str) -> Vec<u8> {
    let hello = Message::Hello(Hello {
        protocol: 1,
        role: "client".into(),
        name: name.into(),
        token: None,
    });
    let mut out = bytes::BytesMut::new();
    qnllm_protocol::encode_frame(&hello, 0, Deadline::NONE, &mut out);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_halfway_through_its_hello_is_not_evicted_by_the_next_one() {
    // A budget of one, and a floor longer than the test: no connection is old enough to be
    // closed for room, whatever the machine's speed.
    let (running, stop) = start(HubConfig {
        max_handshakes: 1,
        handshake_floor_ms: 600_000,
        hello_timeout_ms: 600_000,
        ..config()
    })
    .await;
    let mut first = Peer::silent(addr(&running)).await;
    let hello = hello_bytes("first");
    let half = hello.len() / 2;
    first.send_bytes(&hello[..half]).await;
    // A second connection arrives while the first is in the middle of its hello: the
    // budget is over, but neither has had its floor.
    let mut second = Peer::silent(addr(&running)).await;
    second.send_bytes(&hello_bytes("second")).await;
    let (_, welcome) = second.recv().await.expect("the second was closed");
    assert!(matches!(welcome, Message::Welcome(_)), "{welcome:?}");
    first.send_bytes(&hello[half..]).await;
    let (_, welcome) = first.recv().await.expect("the first was closed");
    assert!(matches!(welcome, Message::Welcome(_)), "{welcome:?}");
    let client = qnllm_hub::Client::connect(&tcp(&running), "probe", None)
        .await
        .unwrap();
    let metrics = client.metrics(WAIT).await.unwrap();
    assert_eq!(metrics["connections"]["handshakes_evicted"], 0, "{metrics}");
    assert_eq!(metrics["connections"]["handshaking"], 0, "{metrics}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_larger_than_the_budget_all_get_in() {
    let (running, stop) = start(HubConfig {
        max_handshakes: 2,
        handshake_floor_ms: 600_000,
        hello_timeout_ms: 600_000,
        ..config()
    })
    .await;
    // Twenty connect at once, each sending the first byte of its hello only...
    let mut peers = Vec::new();
    for i in 0..20 {
        let mut peer = Peer::silent(addr(&running)).await;
        peer.send_bytes(&hello_bytes(&format!("c{i}"))[..1]).await;
        peers.push(peer);
    }
    // ...then the rest: every one is welcomed.
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.send_bytes(&hello_bytes(&format!("c{i}"))[1..]).await;
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let (_, welcome) = peer
            .recv()
            .await
            .unwrap_or_else(|| panic!("c{i} was closed"));
        assert!(matches!(welcome, Message::Welcome(_)), "c{i}: {welcome:?}");
    }
    stop.cancel();
}
