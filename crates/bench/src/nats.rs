//! The NATS rows' servers: `nats-server` itself, the raw request-reply floor (a responder
//! that answers with a result frame's bytes, no protocol), and a qnllm worker on NATS. The
//! bench reaches that worker as a hub does: through discovery and the router's
//! `NatsBackend`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use qnllm_nats::{connect, Discovery, DiscoveryConfig, NatsOptions};
use qnllm_router::Router;

use crate::error::BenchError;
use crate::process::Server;
use crate::server::{announce, forever};

/// The subject the raw floor answers on.
pub(crate) const RAW_SUBJECT: &str = "qnllm.bench.raw";

/// `nats-server` on PATH, or why the NATS rows are skipped.
pub(crate) fn server_binary() -> Result<std::path::PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server is not installed (Debian: apt-get install nats-server)".to_string()
        })
}

/// Starts `nats-server` on a free loopback port; its client URL.
pub(crate) fn start_server(binary: &std::path::Path) -> Result<(Server, String), BenchError> {
    // `-p -1`: the server picks a free port and says which in its log.
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", "-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::start("nats-server", e))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| BenchError::start("nats-server", "no stderr"))?;
    let server = Server::new(child, None);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let Some(line) = lines.next() else {
            return Err(BenchError::start(
                "nats-server",
                "it exited before listening",
            ));
        };
        let line = line.map_err(|e| BenchError::start("nats-server", e))?;
        if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
            break format!("nats://{}", addr.trim());
        }
    };
    // Keep draining its log, so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((server, url))
}

async fn client(url: &str, name: &str) -> Result<async_nats::Client, BenchError> {
    let mut options = NatsOptions::new(url);
    options.name = Some(name.to_string());
    connect(&options)
        .await
        .map_err(|e| BenchError::start(format!("NATS client {name}"), e))
}

/// The raw floor: answers every request on `subject` with `reply_bytes` bytes.
pub(crate) async fn echo(url: &str, subject: &str, reply_bytes: usize) -> Result<(), BenchError> {
    let nats = client(url, "bench-raw-echo").await?;
    let mut requests = nats
        .subscribe(subject.to_string())
        .await
        .map_err(|e| BenchError::start("raw NATS responder", e))?;
    nats.flush()
        .await
        .map_err(|e| BenchError::start("raw NATS responder", e))?;
    announce(&[])?;
    let reply = bytes::Bytes::from(vec![7u8; reply_bytes]);
    while let Some(message) = requests.next().await {
        if let Some(to) = message.reply {
            let _ = nats.publish(to, reply.clone()).await;
        }
    }
    Ok(())
}

/// A qnllm worker on NATS serving the fixed engine; the update log is not followed (the
/// bench does not learn), so the server needs no JetStream.
pub(crate) async fn worker(url: &str, name: &str) -> Result<(), BenchError> {
    let nats = client(url, name).await?;
    let spiking = qnllm_engine::SpikingEngine::from_seed(1, qnllm_engine::Params::default())
        .map_err(|e| BenchError::start("NATS worker", e))?;
    let engine = qnllm_router::LocalBackend::new(name, qnllm_engine::FixedEngine::new(&spiking));
    let mut config = qnllm_nats::WorkerConfig::new(name);
    config.kind = "fixed".into();
    config.follow_log = false;
    announce(&[])?;
    tokio::spawn(qnllm_nats::worker::run(
        nats,
        config,
        engine,
        tokio_util::sync::CancellationToken::new(),
    ))
    .await
    .map_err(|e| BenchError::start("NATS worker", e))?
    .map_err(|e| BenchError::start("NATS worker", e))?;
    forever().await
}

/// A router that knows the cluster's workers as a hub's does, once `workers` have
/// announced themselves.
pub(crate) async fn router(
    url: &str,
    workers: usize,
) -> Result<(Arc<Router>, Discovery, async_nats::Client), BenchError> {
    let nats = client(url, "bench-hub").await?;
    let router = Arc::new(Router::new());
    let config = DiscoveryConfig {
        heartbeat: Duration::from_secs(1),
        lineage: None,
        log_replicas: None,
    };
    let mut discovery = Discovery::start(nats.clone(), router.clone(), config)
        .await
        .map_err(|e| BenchError::start("NATS discovery", e))?;
    tokio::time::timeout(Duration::from_secs(20), discovery.wait_for(workers))
        .await
        .map_err(|_| BenchError::start("NATS worker", "it never announced itself"))?;
    Ok((router, discovery, nats))
}
