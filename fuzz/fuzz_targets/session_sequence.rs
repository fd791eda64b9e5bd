//! Feeds a hub session a random sequence of frames (hello as client or worker, register,
//! heartbeats, status, requests, cancels, subscriptions, broadcasts, goodbyes, garbage) in
//! random order over a socket pair, then closes its side. The hub must never panic (the
//! fuzzer aborts on any panic, spawned tasks included), every byte it sends back must
//! decode as whole, valid frames, and the session must end by itself once the peer has
//! closed: nothing may hang.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qnllm_hub::{Hub, HubConfig, Stream};
use qnllm_protocol::{
    encode_frame, Batch, Call, Deadline, EngineRole, EngineStatus, FrameDecoder, Goodbye, Heartbeat, Hello,
    Learn, Message, Register, Subscribe, Topic,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a session may take to end after its peer closed; far above any real case.
const END_LIMIT: Duration = Duration::from_secs(20);

fn runtime() -> &'static (tokio::runtime::Runtime, Hub) {
    static HUB: OnceLock<(tokio::runtime::Runtime, Hub)> = OnceLock::new();
    HUB.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = HubConfig {
            listen: Some("127.0.0.1:0".into()), // never bound: sessions come from the target
            max_frame_bytes: 1 << 16,
            default_deadline_ms: 50,
            ..HubConfig::default()
        };
        let hub = runtime.block_on(async { Hub::new(config).expect("a valid config") });
        (runtime, hub)
    })
}

/// Reads bytes from `data`, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.byte()) | (u64::from(self.byte()) << 8)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn deadline(input: &mut Input<'_>) -> Deadline {
    match input.byte() % 4 {
        0 => Deadline::NONE,
        1 => Deadline::from_remaining(Duration::from_micros(1)),
        2 => Deadline::from_remaining(Duration::from_millis(u64::from(input.byte()))),
        _ => Deadline::from_remaining(Duration::from_secs(1)),
    }
}

/// One frame (or raw bytes) chosen by the input, appended to `wire`.
fn op(input: &mut Input<'_>, wire: &mut BytesMut) {
    let kind = input.byte();
    let id = input.u64() % 8; // few ids: duplicates and cancels of live ids happen
    let deadline = deadline(input);
    let message = match kind % 18 {
        0 | 1 => Message::Hello(Hello {
            protocol: if kind & 0x80 == 0 { 1 } else { 2 },
            role: ["client", "worker", "martian"][usize::from(input.byte() % 3)].into(),
            name: "fuzz".into(),
            token: None,
        }),
        2 => Message::Register(Register {
            name: "fuzz".into(),
            model_digest: if kind & 0x40 == 0 { "00".repeat(32) } else { "zz".into() },
            model_version: input.u64(),
            input_size: u32::from(input.byte()) * 4,
            labels: u32::from(input.byte() % 12),
            max_in_flight: u32::from(input.byte()),
            role: if kind & 0x20 == 0 { EngineRole::Engine } else { EngineRole::Teacher },
        }),
        3 => Message::Heartbeat(Heartbeat { in_flight: 0, served: input.u64() }),
        4 => Message::Status(EngineStatus {
            state: ["serving", "draining", "stopped"][usize::from(input.byte() % 3)].into(),
            in_flight: 0,
            served: 0,
            model_version: 0,
        }),
        5..=7 => {
            let n = [768usize, 767, 0, 3][usize::from(input.byte() % 4)];
            let x = f32::from(input.byte()) / 255.0;
            Message::Reason(vec![x; n].into())
        }
        8 => match Batch::new(768, vec![0.5; 768 * usize::from(input.byte() % 3)]) {
            Some(batch) => Message::Batch(batch),
            None => Message::Ping,
        },
        9 => Message::Cancel,
        10 => Message::Ping,
        11 => Message::Subscribe(Subscribe { topics: vec!["*".into()] }),
        12 => Message::Broadcast(Topic { topic: "t".into(), payload: input.bytes(64) }),
        13 => Message::Call(Call { handler: "echo".into(), payload: input.bytes(16) }),
        14 => Message::Learn(Learn {
            label: u32::from(input.byte()),
            base_version: 0,
            encoding: vec![0.1; 768].into(),
        }),
        15 => Message::MetricsQuery,
        16 => Message::Goodbye(Goodbye { reason: "fuzz".into() }),
        _ => {
            // Raw bytes: a torn or hostile frame.
            let n = usize::from(input.byte() % 40);
            wire.extend_from_slice(&input.bytes(n));
            return;
        }
    };
    encode_frame(&message, id, deadline, wire);
}

fuzz_target!(|data: &[u8]| {
    let (runtime, hub) = runtime();
    let mut input = Input(data);
    let mut wire = BytesMut::new();
    let mut ops = 0;
    while !input.empty() && ops < 32 {
        op(&mut input, &mut wire);
        ops += 1;
    }
    runtime.block_on(async {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let session = tokio::spawn({
            let hub = hub.clone();
            async move { hub.serve_connection(Stream::Unix(theirs), "fuzz").await }
        });
        let (mut read, mut write) = ours.into_split();
        let feed = async move {
            // The hub may close first (a protocol error): a failed write is fine.
            let _ = write.write_all(&wire).await;
            let _ = write.shutdown().await;
        };
        let drain = async move {
            let mut got = Vec::new();
            let _ = read.read_to_end(&mut got).await;
            got
        };
        let ((), got) = tokio::time::timeout(END_LIMIT, async { tokio::join!(feed, drain) })
            .await
            .expect("the hub did not close the connection after the peer closed its side");
        tokio::time::timeout(END_LIMIT, session)
            .await
            .expect("the session did not end")
            .expect("the session panicked");
        // Whatever the hub sent is whole, valid frames.
        let mut buf = BytesMut::from(&got[..]);
        let mut decoder = FrameDecoder::new(u32::MAX);
        while !buf.is_empty() {
            let frame = decoder
                .decode(&mut buf)
                .expect("the hub sent a bad frame")
                .expect("the hub sent a torn frame");
            frame.message().expect("the hub sent an undecodable body");
        }
    });
});
