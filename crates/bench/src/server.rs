//! The far side of the hidden `bench-server` subcommand: every server process of a run
//! (baselines, hubs, workers, echo servers) is the bench's own executable started with a
//! [`Role`], so the bench measures real separate processes without depending on any other
//! command's flags or on a separately built binary.
//!
//! A server prints `KEY VALUE` lines (its addresses), then `ready`, and serves until its
//! standard input closes: when the bench ends, however it ends, its servers end too.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::baseline::{self, Baseline};
use crate::error::BenchError;

/// The name of the hidden subcommand an executable must pass to [`serve`].
pub const SUBCOMMAND: &str = "bench-server";

/// What one server process of a run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub(crate) enum Role {
    /// The raw ping-pong: answers every `request_bytes` with `reply_bytes`.
    Pong {
        unix: PathBuf,
        request_bytes: usize,
        reply_bytes: usize,
    },
    /// The raw relay: forwards every request to `upstream` and its reply back.
    Relay {
        unix: PathBuf,
        upstream: String,
        request_bytes: usize,
        reply_bytes: usize,
    },
    /// A hub assembled as `qnllm serve` assembles it (through `UnifiedEngine`'s builder).
    Hub {
        tcp: bool,
        unix: Option<PathBuf>,
        local_engines: usize,
        batch_max: usize,
        busy_poll_us: u64,
        max_connections: usize,
        /// Also serve the KServe v2 front (HTTP and gRPC) on loopback.
        front: bool,
    },
    /// A Rust worker serving the fixed engine (transport only) or the reference engine.
    Worker {
        connect: String,
        name: String,
        fixed: bool,
        busy_poll_us: u64,
    },
    /// The HTTP and gRPC floors: an axum route that returns its body, and the protocol's
    /// tonic service answering every call at once and empty.
    Echo,
    /// The raw NATS floor: answers every request on `subject` with `reply_bytes` bytes.
    NatsEcho {
        url: String,
        subject: String,
        reply_bytes: usize,
    },
    /// A worker on NATS serving the fixed engine through `qnllm_nats::worker`.
    NatsWorker { url: String, name: String },
}

impl Role {
    pub(crate) fn to_arg(&self) -> String {
        // A plain enum of strings and numbers: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Runs the server `role` (the JSON a run passes to `bench-server`) until standard input
/// closes. Call it from the executable's hidden `bench-server ROLE` subcommand.
///
/// # Errors
///
/// [`BenchError::Role`] for a role that cannot be read, [`BenchError::Start`] when the
/// server cannot start.
pub fn serve(role: &str) -> Result<(), BenchError> {
    let parsed: Role = serde_json::from_str(role).map_err(|e| BenchError::Role {
        role: role.to_string(),
        reason: e.to_string(),
    })?;
    // The bench holds our stdin; when it closes (the bench ended or dropped us), we end.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_until(0, &mut sink);
        std::process::exit(0);
    });
    match parsed {
        Role::Pong {
            unix,
            request_bytes,
            reply_bytes,
        } => {
            let tcp = baseline::spawn(&unix, request_bytes, reply_bytes, &Baseline::Pong)
                .map_err(|e| BenchError::start("the ping-pong server", e))?;
            announce(&[
                ("tcp", tcp.to_string()),
                ("unix", unix.display().to_string()),
            ])?;
            park()
        }
        Role::Relay {
            unix,
            upstream,
            request_bytes,
            reply_bytes,
        } => {
            let tcp = baseline::spawn(
                &unix,
                request_bytes,
                reply_bytes,
                &Baseline::Relay(upstream),
            )
            .map_err(|e| BenchError::start("the relay", e))?;
            announce(&[
                ("tcp", tcp.to_string()),
                ("unix", unix.display().to_string()),
            ])?;
            park()
        }
        Role::Hub { .. } => runtime()?.block_on(hub(parsed)),
        Role::Worker { .. } => runtime()?.block_on(worker(parsed)),
        Role::Echo => runtime()?.block_on(crate::echo::serve()),
        Role::NatsEcho {
            url,
            subject,
            reply_bytes,
        } => runtime()?.block_on(crate::nats::echo(&url, &subject, reply_bytes)),
        Role::NatsWorker { url, name } => runtime()?.block_on(crate::nats::worker(&url, &name)),
    }
}

/// Prints the server's addresses and `ready`.
pub(crate) fn announce(lines: &[(&str, String)]) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    let io = |e| BenchError::Io {
        what: "bench-server: stdout".into(),
        source: e,
    };
    for (key, value) in lines {
        writeln!(out, "{key} {value}").map_err(io)?;
    }
    writeln!(out, "ready").map_err(io)?;
    out.flush().map_err(io)
}

/// Waits for the end of the process (stdin closing ends it).
fn park() -> ! {
    loop {
        std::thread::park();
    }
}

/// Serves until the process ends (stdin closing ends it).
pub(crate) async fn forever() -> Result<(), BenchError> {
    std::future::pending::<()>().await;
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io {
            what: "bench-server: cannot start the async runtime".into(),
            source: e,
        })
}

async fn hub(role: Role) -> Result<(), BenchError> {
    let Role::Hub {
        tcp,
        unix,
        local_engines,
        batch_max,
        busy_poll_us,
        max_connections,
        front,
    } = role
    else {
        return Err(BenchError::start("hub", "not a hub role"));
    };
    let config = qnllm_hub::HubConfig {
        listen: tcp.then(|| "127.0.0.1:0".to_string()),
        unix,
        batch_max,
        busy_poll_us,
        max_connections,
        ..qnllm_hub::HubConfig::default()
    };
    let mut engine = qnllm::UnifiedEngine::builder()
        .hub_config(config)
        .local_engines(local_engines)
        .build()
        .map_err(|e| BenchError::start("hub", e))?;
    engine
        .start()
        .await
        .map_err(|e| BenchError::start("hub", e))?;
    let mut lines = Vec::new();
    if let Some(addr) = engine.tcp_addr() {
        lines.push(("tcp", addr.to_string()));
    }
    if let Some(path) = engine.unix_path() {
        lines.push(("unix", path.display().to_string()));
    }
    // The engine (or the front standing on it) lives as long as the process.
    let (mut _engine, mut _front) = (None, None);
    if front {
        let stop = tokio_util::sync::CancellationToken::new();
        let running = qnllm_front::start(
            Arc::new(engine),
            qnllm_front::FrontConfig {
                http: Some("127.0.0.1:0".into()),
                grpc: Some("127.0.0.1:0".into()),
                // The bench's own pipelined load must not be refused.
                max_in_flight: 1 << 16,
                max_streams_per_connection: 1_024,
                ..qnllm_front::FrontConfig::default()
            },
            stop.clone(),
        )
        .await
        .map_err(|e| BenchError::start("the KServe v2 front", e))?;
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        lines.push(("http", addr(running.http)));
        lines.push(("grpc", addr(running.grpc)));
        _front = Some((running, stop.drop_guard()));
    } else {
        _engine = Some(engine);
    }
    announce(&lines)?;
    forever().await
}

async fn worker(role: Role) -> Result<(), BenchError> {
    let Role::Worker {
        connect,
        name,
        fixed,
        busy_poll_us,
    } = role
    else {
        return Err(BenchError::start("worker", "not a worker role"));
    };
    let spiking = qnllm_engine::SpikingEngine::from_seed(1, qnllm_engine::Params::default())
        .map_err(|e| BenchError::start("worker", e))?;
    let engine = if fixed {
        qnllm_router::LocalBackend::new(name.clone(), qnllm_engine::FixedEngine::new(&spiking))
    } else {
        qnllm_router::LocalBackend::new(name.clone(), spiking)
    };
    let mut config = qnllm_hub::WorkerConfig::new(qnllm_hub::Endpoint::parse(&connect));
    config.name = name;
    config.busy_poll = Duration::from_micros(busy_poll_us);
    announce(&[])?;
    // On a runtime thread, as `qnllm worker` runs it: the task reading the socket runs
    // where the socket's readiness is polled.
    tokio::spawn(qnllm_hub::worker::run(
        config,
        engine,
        tokio_util::sync::CancellationToken::new(),
    ))
    .await
    .map_err(|e| BenchError::start("worker", e))?
    .map_err(|e| BenchError::start("worker", e))
}
