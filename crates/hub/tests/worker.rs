//! A real worker (`qnllm_hub::worker::run`) against a scripted hub on 127.0.0.1:0: what it
//! answers when frames arrive in bursts, mixed with other kinds and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::BytesMut;
use common::*;
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_hub::Endpoint;
use qnllm_protocol::{
    encode_frame, Deadline, ErrorCode, Frame, FrameDecoder, Message, Registered, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct ScriptedHub {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl ScriptedHub {
    async fn recv(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return frame;
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the worker closed the connection");
        }
    }

    async fn send(&mut self, message: &Message) {
        let mut out = BytesMut::new();
        encode_frame(message, 0, Deadline::NONE, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_in_one_write_gets_every_answer_right_and_in_place() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let stop = worker(endpoint, "burst", None);
    let (stream, _) = listener.accept().await.unwrap();
    let mut hub = ScriptedHub {
        stream,
        buf: BytesMut::new(),
        decoder: FrameDecoder::default(),
    };
    assert!(matches!(
        hub.recv().await.message().unwrap(),
        Message::Hello(_)
    ));
    hub.send(&Message::Welcome(Welcome {
        session: 1,
        server: "scripted".into(),
        max_frame_bytes: 1 << 24,
        heartbeat_interval_ms: 60_000,
    }))
    .await;
    assert!(matches!(
        hub.recv().await.message().unwrap(),
        Message::Register(_)
    ));
    hub.send(&Message::Registered(Registered {
        engine_id: 1,
        heartbeat_interval_ms: 60_000,
    }))
    .await;

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
    hub.stream.write_all(&wire).await.unwrap();

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
