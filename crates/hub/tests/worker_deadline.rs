//! A real worker (`qnllm_hub::worker::run`) against a scripted hub on 127.0.0.1:0: a request
//! queued behind slow work is answered `DeadlineExceeded` at its deadline, not when its turn
//! comes.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::WAIT;
use qnllm_engine::{Params, SpikingEngine};
use qnllm_hub::Endpoint;
use qnllm_protocol::{
    encode_frame, Deadline, ErrorCode, Frame, FrameDecoder, Message, Registered, Welcome,
};
use qnllm_router::LocalBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hub played by the test: it reads and writes frames on the worker's connection.
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

    /// The next reply that is not a heartbeat: its request id and message.
    async fn reply(&mut self) -> (u64, Message) {
        loop {
            let frame = self.recv().await;
            let message = frame.message().unwrap();
            if !matches!(message, Message::Heartbeat(_)) {
                return (frame.header.request_id, message);
            }
        }
    }
}

/// An engine with four inputs (small frames: a burst arrives in one read), the largest
/// hidden layer its 16 steps allow, and many labels: each reason takes a while.
fn slow_engine() -> LocalBackend {
    let params = Params {
        inputs: 4,
        hidden: 4096,
        steps: 16,
        labels: 1000,
        ..Params::default()
    };
    LocalBackend::new("slow", SpikingEngine::from_seed(1, params).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_slow_work_is_answered_at_its_deadline_not_at_its_turn() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let mut config = qnllm_hub::WorkerConfig::new(endpoint);
    config.name = "slow".into();
    tokio::spawn(qnllm_hub::worker::run(config, slow_engine(), stop.clone()));

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

    // In one write: slow reasons without a deadline, then one that may wait 2 ms. The
    // worker reads them together and serves them as one group, in order, on the task that
    // read them; their replies leave together when the group is done.
    const AHEAD: u64 = 12;
    const URGENT: u64 = 1_000;
    let reason = Message::Reason(vec![0.5f32; 4].into());
    let mut wire = BytesMut::new();
    for id in 1..=AHEAD {
        encode_frame(&reason, id, Deadline::NONE, &mut wire);
    }
    let budget = Duration::from_millis(2);
    encode_frame(&reason, URGENT, Deadline::from_remaining(budget), &mut wire);
    hub.stream.write_all(&wire).await.unwrap();

    // The urgent request's DeadlineExceeded comes at its deadline, before the results of
    // the work ahead of it; at its turn it would come after all of them.
    let mut results_before = 0;
    loop {
        match hub.reply().await {
            (URGENT, Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message);
                break;
            }
            (id, Message::Result(_)) if (1..=AHEAD).contains(&id) => results_before += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        results_before, 0,
        "the DeadlineExceeded came after {results_before} of the {AHEAD} results ahead of it"
    );
    // The work ahead is still computed and answered, and the urgent request is not
    // answered a second time at its turn.
    let mut results = 0;
    while results < AHEAD {
        match hub.reply().await {
            (id, Message::Result(_)) if (1..=AHEAD).contains(&id) => results += 1,
            other => panic!("{other:?}"),
        }
    }
    hub.send(&Message::Ping).await;
    assert!(matches!(hub.reply().await, (0, Message::Pong)));
}
