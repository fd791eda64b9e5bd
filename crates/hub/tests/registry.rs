//! The registry and routing over real sockets: a malformed registration is refused, two
//! workers with one name are two engines, and `NO_CACHE` reaches the router.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use qnllm_hub::Client;
use qnllm_protocol::{
    encode_frame, encode_frame_with_flags, Deadline, ErrorCode, Flags, FrameDecoder, Hello,
    Message, Register,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A worker speaking the protocol by hand.
struct RawWorker {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawWorker {
    async fn connect(addr: std::net::SocketAddr, name: &str) -> RawWorker {
        RawWorker::connect_as(addr, "worker", name).await
    }

    async fn connect_as(addr: std::net::SocketAddr, role: &str, name: &str) -> RawWorker {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut peer = RawWorker {
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
        assert!(matches!(peer.recv().await, Some(Message::Welcome(_))));
        peer
    }

    async fn send(&mut self, message: &Message) {
        let mut out = BytesMut::new();
        encode_frame(message, 0, Deadline::NONE, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next message, or `None` once the hub has closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(frame.message().unwrap());
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }
}

fn register(name: &str, digest: String) -> Message {
    Message::Register(Register {
        name: name.into(),
        model_digest: digest,
        model_version: 0,
        input_size: 768,
        labels: 10,
        max_in_flight: 4,
        role: qnllm_protocol::EngineRole::Engine,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_a_malformed_model_digest_is_refused_not_zeroed() {
    let (running, stop) = start(config()).await;
    let mut bad = RawWorker::connect(addr(&running), "bad").await;
    bad.send(&register("bad", "not-a-digest".into())).await;
    match bad.recv().await {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::MalformedBody);
            assert!(e.message.contains("model_digest"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(bad.recv().await.is_none(), "the connection closes");
    // The hub keeps serving: a good worker joins and answers.
    let good = worker(tcp(&running), "good", None);
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    let metrics = wait_for_engines(&client, 1).await;
    assert_eq!(metrics["engines"][0]["name"], "good", "{metrics}");
    let x = qnllm_engine::NormalInputs::new(1, 768).next().unwrap();
    assert_eq!(client.reason(&x, WAIT).await.unwrap().engine, "good");
    good.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_one_name_are_two_engines_and_one_leaving_keeps_the_other() {
    let (running, stop) = start(config()).await;
    let digest = "ab".repeat(32);
    let mut first = RawWorker::connect(addr(&running), "dup").await;
    let mut second = RawWorker::connect(addr(&running), "dup").await;
    first.send(&register("dup", digest.clone())).await;
    second.send(&register("dup", digest)).await;
    assert!(matches!(first.recv().await, Some(Message::Registered(_))));
    assert!(matches!(second.recv().await, Some(Message::Registered(_))));
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    let metrics = wait_for_engines(&client, 2).await;
    let names: Vec<String> = metrics["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(names[0], names[1], "{names:?}");
    // The first leaves; its namesake stays.
    first
        .send(&Message::Goodbye(qnllm_protocol::Goodbye {
            reason: "done".into(),
        }))
        .await;
    drop(first);
    let metrics = wait_for_engines(&client, 1).await;
    assert_eq!(metrics["engines"].as_array().unwrap().len(), 1, "{metrics}");
    drop(second);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flagged_no_cache_neither_reads_nor_fills_the_hub_cache() {
    let (running, stop) = start(qnllm_hub::HubConfig {
        cache_capacity: 100,
        ..config()
    })
    .await;
    let w = worker(tcp(&running), "w", None);
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    wait_for_engines(&client, 1).await;
    let x = qnllm_engine::NormalInputs::new(1, 768).next().unwrap();
    let mut raw = RawWorker::connect_as(addr(&running), "client", "raw").await;
    let reason = |id: u64, flags: Flags| {
        let mut out = BytesMut::new();
        let message = Message::Reason(x.clone().into());
        encode_frame_with_flags(
            &message,
            id,
            Deadline::from_remaining(WAIT),
            flags,
            &mut out,
        );
        out
    };
    for id in 1..=2 {
        raw.stream
            .write_all(&reason(id, Flags::NO_CACHE))
            .await
            .unwrap();
        assert!(matches!(raw.recv().await, Some(Message::Result(_))));
    }
    let cache = &client.metrics(WAIT).await.unwrap()["router"]["cache"];
    assert_eq!(
        (cache["hits"].as_u64(), cache["entries"].as_u64()),
        (Some(0), Some(0)),
        "{cache}"
    );
    // Without the flag the same request fills the cache, then hits it.
    for id in 3..=4 {
        raw.stream
            .write_all(&reason(id, Flags::EMPTY))
            .await
            .unwrap();
        assert!(matches!(raw.recv().await, Some(Message::Result(_))));
    }
    let cache = &client.metrics(WAIT).await.unwrap()["router"]["cache"];
    assert_eq!(
        (cache["hits"].as_u64(), cache["entries"].as_u64()),
        (Some(1), Some(1)),
        "{cache}"
    );
    w.cancel();
    stop.cancel();
}
