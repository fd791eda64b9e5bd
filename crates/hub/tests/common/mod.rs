//! Shared helpers: an in-process hub on 127.0.0.1:0 with in-process workers.

#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod scripted;

use std::net::SocketAddr;
use std::time::Duration;

use qnllm_engine::{Params, SpikingEngine};
use qnllm_hub::{Client, Endpoint, Hub, HubConfig, RunningHub, WorkerConfig};
use qnllm_router::LocalBackend;
use tokio_util::sync::CancellationToken;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn config() -> HubConfig {
    HubConfig {
        listen: Some("127.0.0.1:0".into()),
        ..HubConfig::default()
    }
}

pub(crate) async fn start(config: HubConfig) -> (RunningHub, CancellationToken) {
    let stop = CancellationToken::new();
    let running = Hub::new(config).unwrap().start(stop.clone()).await.unwrap();
    (running, stop)
}

pub(crate) fn tcp(running: &RunningHub) -> Endpoint {
    Endpoint::Tcp(running.tcp.unwrap().to_string())
}

pub(crate) fn addr(running: &RunningHub) -> SocketAddr {
    running.tcp.unwrap()
}

pub(crate) fn engine(name: &str) -> LocalBackend {
    engine_with_seed(name, 1)
}

pub(crate) fn engine_with_seed(name: &str, seed: u64) -> LocalBackend {
    LocalBackend::new(
        name,
        SpikingEngine::from_seed(seed, Params::default()).unwrap(),
    )
}

/// Starts an in-process worker; cancel the token to stop it.
pub(crate) fn worker(endpoint: Endpoint, name: &str, token: Option<&str>) -> CancellationToken {
    worker_serving(endpoint, name, token, engine(name))
}

/// Starts an in-process worker serving `engine`.
pub(crate) fn worker_serving(
    endpoint: Endpoint,
    name: &str,
    token: Option<&str>,
    engine: LocalBackend,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let mut config = WorkerConfig::new(endpoint);
    config.name = name.into();
    config.token = token.map(str::to_string);
    let stop_ = stop.clone();
    tokio::spawn(async move {
        let _ = qnllm_hub::worker::run(config, engine, stop_).await;
    });
    stop
}

/// Waits on the hub's `engines` events until it has `n` engines (or panics after `WAIT`).
pub(crate) async fn wait_for_engines(client: &Client, n: usize) -> serde_json::Value {
    // Subscribed first, then checked: a join between the two is an event, not a miss.
    let mut events = client.subscribe(&["engines"], WAIT).await.unwrap();
    loop {
        let metrics = client.metrics(WAIT).await.unwrap();
        if metrics["engines"].as_array().unwrap().len() == n {
            return metrics;
        }
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("the hub never had {n} engines: {metrics}"))
            .expect("the hub closed the connection");
    }
}

/// A peer speaking the protocol by hand over TCP, to see exactly what the hub sends.
pub(crate) struct Peer {
    pub(crate) stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    decoder: qnllm_protocol::FrameDecoder,
}

impl Peer {
    /// Connects without saying anything.
    pub(crate) async fn silent(addr: SocketAddr) -> Peer {
        Peer {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: bytes::BytesMut::new(),
            decoder: qnllm_protocol::FrameDecoder::default(),
        }
    }

    /// Connects and says hello as `role`; returns after the welcome.
    pub(crate) async fn hello(addr: SocketAddr, role: &str, name: &str) -> Peer {
        let mut peer = Peer::silent(addr).await;
        peer.send(
            &qnllm_protocol::Message::Hello(qnllm_protocol::Hello {
                protocol: 1,
                role: role.into(),
                name: name.into(),
                token: None,
            }),
            0,
        )
        .await;
        let (_, welcome) = peer.recv().await.expect("closed before welcome");
        assert!(
            matches!(welcome, qnllm_protocol::Message::Welcome(_)),
            "{welcome:?}"
        );
        peer
    }

    /// Connects as a worker offering the default engine, and registers.
    pub(crate) async fn worker(addr: SocketAddr, name: &str) -> Peer {
        Peer::worker_taking(addr, name, 64).await
    }

    /// A worker that registers `max_in_flight`, the requests it takes at once.
    pub(crate) async fn worker_taking(addr: SocketAddr, name: &str, max_in_flight: u32) -> Peer {
        let mut peer = Peer::hello(addr, "worker", name).await;
        let info = engine(name).info();
        let register = qnllm_protocol::Register {
            name: name.into(),
            model_digest: info.digest.to_hex(),
            model_version: info.version,
            input_size: info.params.inputs,
            labels: info.params.labels,
            max_in_flight,
            role: qnllm_protocol::EngineRole::Engine,
        };
        peer.send(&qnllm_protocol::Message::Register(register), 0)
            .await;
        peer
    }

    pub(crate) async fn send(&mut self, message: &qnllm_protocol::Message, id: u64) {
        self.send_with(message, id, qnllm_protocol::Deadline::NONE)
            .await;
    }

    pub(crate) async fn send_with(
        &mut self,
        message: &qnllm_protocol::Message,
        id: u64,
        deadline: qnllm_protocol::Deadline,
    ) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        qnllm_protocol::encode_frame(message, id, deadline, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message and its request id; `None` when the hub closed the connection.
    pub(crate) async fn recv(&mut self) -> Option<(u64, qnllm_protocol::Message)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some((frame.header.request_id, frame.message().unwrap()));
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("nothing from the hub")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}
