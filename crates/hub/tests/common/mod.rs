//! Shared helpers: an in-process hub on 127.0.0.1:0 with in-process workers.

#![allow(dead_code, clippy::unwrap_used)]

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

/// Polls the hub's engine list until it has `n` engines (or panics after `WAIT`).
pub(crate) async fn wait_for_engines(client: &Client, n: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = client.metrics(WAIT).await.unwrap();
        if metrics["engines"].as_array().unwrap().len() == n {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub never had {n} engines: {metrics}"
        );
        // Registration is reported by the hub only through polling or events; poll gently.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
