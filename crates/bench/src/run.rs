//! The measurement plan: baseline ping-pong, then the same round trips through the hub,
//! then the in-process paths; every figure next to its baseline.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qnllm_engine::{Digest, NormalInputs, Params, SpikingEngine};
use qnllm_hub::{Client, Endpoint};
use qnllm_protocol::{encode_frame, Deadline, Message, ResultBody};
use qnllm_router::{LocalBackend, Router, RouterConfig};
use serde::Serialize;

use crate::stats::Latency;

/// What to measure and how much.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The `qnllm` executable, started for the server processes.
    pub exe: PathBuf,
    /// Round trips per one-at-a-time figure.
    pub requests: usize,
    /// Requests per pipelined throughput figure.
    pub pipelined: usize,
    /// Requests in flight for the pipelined figures.
    pub window: usize,
    /// Where the Unix sockets go.
    pub dir: PathBuf,
    /// Idle connections for the memory figure.
    pub idle_connections: usize,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A server process could not be started or did not report its address.
    #[error("cannot start {what}: {reason}")]
    Start {
        /// Which server.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A measurement failed.
    #[error("{0}")]
    Measure(String),
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub path: String,
    /// One request at a time.
    pub latency: Option<Latency>,
    /// Requests per second with `window` in flight on one connection.
    pub throughput: Option<f64>,
    /// p50 over the baseline's p50 on the same transport.
    pub p50_ratio: Option<f64>,
    /// p99 over the baseline's p99.
    pub p99_ratio: Option<f64>,
    /// Throughput over the baseline's.
    pub throughput_ratio: Option<f64>,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Request size in bytes (a 768-value reason frame).
    pub request_bytes: usize,
    /// Reply size in bytes (a result frame).
    pub reply_bytes: usize,
    /// In flight for the throughput figures.
    pub window: usize,
    /// The rows, baselines first.
    pub rows: Vec<Row>,
    /// Hub memory, idle and with idle connections open.
    pub memory: Option<Memory>,
}

/// Resident memory of a hub process (Linux: `/proc/PID/status`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// RSS with no client connected, KiB.
    pub idle_kib: u64,
    /// Idle connections opened (each said hello and was welcomed).
    pub connections: usize,
    /// RSS with them open, KiB.
    pub loaded_kib: u64,
    /// `(loaded - idle) / connections`, bytes.
    pub per_connection_bytes: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Opens `n` idle client connections to a fresh hub and reads its RSS before and after.
async fn hub_memory(exe: &PathBuf, n: usize) -> Result<Option<Memory>, BenchError> {
    let (hub, lines) = start(
        exe,
        "hub",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            &(n + 16).to_string(),
        ],
        1,
    )?;
    let addr = lines[0]
        .trim_start_matches("qnllm hub listening on tcp ")
        .to_string();
    let pid = hub.0.id();
    // One connection first, so the runtime's threads and buffers exist before "idle".
    let warm = Client::connect(&Endpoint::Tcp(addr.clone()), "warm", None)
        .await
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let Some(idle_kib) = rss_kib(pid) else {
        return Ok(None);
    };
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(
            Client::connect(&Endpoint::Tcp(addr.clone()), "idle", None)
                .await
                .map_err(|e| BenchError::Measure(e.to_string()))?,
        );
    }
    // Every connection has been welcomed, so the hub holds its session state.
    let Some(loaded_kib) = rss_kib(pid) else {
        return Ok(None);
    };
    drop((warm, open));
    let per_connection_bytes = loaded_kib.saturating_sub(idle_kib) * 1024 / n.max(1) as u64;
    Ok(Some(Memory {
        idle_kib,
        connections: n,
        loaded_kib,
        per_connection_bytes,
    }))
}

/// Kills a server process when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(
    exe: &PathBuf,
    what: &'static str,
    args: &[&str],
    lines: usize,
) -> Result<(Server, Vec<String>), BenchError> {
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Start {
            what,
            reason: e.to_string(),
        })?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Start {
        what,
        reason: "no stdout".into(),
    })?;
    let server = Server(child);
    let mut out = Vec::new();
    for line in BufReader::new(stdout).lines().take(lines) {
        out.push(line.map_err(|e| BenchError::Start {
            what,
            reason: e.to_string(),
        })?);
    }
    if out.len() < lines {
        return Err(BenchError::Start {
            what,
            reason: "it exited before listening".into(),
        });
    }
    Ok((server, out))
}

/// Starts `qnllm worker --connect hub` with `args`; stopped when the handle drops.
fn worker(exe: &PathBuf, hub: &str, args: &[&str]) -> Result<Server, BenchError> {
    let child = Command::new(exe)
        .args(["worker", "--connect", hub])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Start {
            what: "worker",
            reason: e.to_string(),
        })?;
    Ok(Server(child))
}

fn sizes() -> (usize, usize) {
    let mut request = BytesMut::new();
    encode_frame(
        &Message::Reason(vec![0.0; 768].into()),
        1,
        Deadline::NONE,
        &mut request,
    );
    let result = ResultBody {
        label: 0,
        confidence: 0.5,
        total_spikes: 0,
        scores: vec![0; 10],
        label_spikes: vec![0; 10],
        model_version: 0,
        model_digest: Digest::default().0,
        result_digest: Digest::default().0,
        compute_ns: 0,
        engine: "fixed".into(),
    };
    let mut reply = BytesMut::new();
    encode_frame(&Message::Result(result), 1, Deadline::NONE, &mut reply);
    (request.len(), reply.len())
}

/// Ping-pong over a raw stream: `n` round trips one at a time.
fn raw_latency(
    mut stream: impl Read + Write,
    n: usize,
    request: usize,
    reply: usize,
) -> Result<Latency, BenchError> {
    let (out, mut back) = (vec![1u8; request], vec![0u8; reply]);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        stream
            .write_all(&out)
            .and_then(|()| stream.read_exact(&mut back))
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        samples.push(t.elapsed());
    }
    Ok(Latency::of(samples))
}

/// Ping-pong with `window` requests in flight: requests per second.
fn raw_throughput(
    mut stream: impl Read + Write,
    n: usize,
    window: usize,
    request: usize,
    reply: usize,
) -> Result<f64, BenchError> {
    let (out, mut back) = (vec![1u8; request], vec![0u8; reply]);
    let err = |e: std::io::Error| BenchError::Measure(e.to_string());
    let t = Instant::now();
    let mut sent = 0;
    while sent < window.min(n) {
        stream.write_all(&out).map_err(err)?;
        sent += 1;
    }
    for _ in 0..n {
        stream.read_exact(&mut back).map_err(err)?;
        if sent < n {
            stream.write_all(&out).map_err(err)?;
            sent += 1;
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn hub_latency(client: &Client, n: usize) -> Result<Latency, BenchError> {
    let x = NormalInputs::new(1, 768).next().unwrap_or_default();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client
            .reason(&x, Duration::from_secs(5))
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        samples.push(t.elapsed());
    }
    Ok(Latency::of(samples))
}

async fn hub_throughput(client: Arc<Client>, n: usize, window: usize) -> Result<f64, BenchError> {
    let x = Arc::new(NormalInputs::new(1, 768).next().unwrap_or_default());
    let t = Instant::now();
    let lanes = (0..window).map(|lane| {
        let (client, x) = (client.clone(), x.clone());
        async move {
            for _ in (lane..n).step_by(window) {
                client
                    .reason(&x, Duration::from_secs(10))
                    .await
                    .map_err(|e| BenchError::Measure(e.to_string()))?;
            }
            Ok::<(), BenchError>(())
        }
    });
    for lane in futures::future::join_all(lanes).await {
        lane?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn wait_for_engine(client: &Client) -> Result<(), BenchError> {
    for _ in 0..1_000 {
        let metrics = client
            .metrics(Duration::from_secs(5))
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        if metrics["engines"].as_array().is_some_and(|e| !e.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BenchError::Start {
        what: "worker",
        reason: "it never registered".into(),
    })
}

fn row(path: &str, latency: Option<Latency>, throughput: Option<f64>, base: Option<&Row>) -> Row {
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    Row {
        path: path.into(),
        latency,
        throughput,
        p50_ratio: ratio(
            latency.map(|l| l.p50_us),
            base.and_then(|b| b.latency).map(|l| l.p50_us),
        ),
        p99_ratio: ratio(
            latency.map(|l| l.p99_us),
            base.and_then(|b| b.latency).map(|l| l.p99_us),
        ),
        throughput_ratio: ratio(throughput, base.and_then(|b| b.throughput)),
    }
}

/// Runs every measurement; `progress` hears what is being measured.
///
/// # Errors
///
/// [`BenchError`] when a server cannot start or a measurement fails.
pub async fn run(config: &BenchConfig, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    let (request, reply) = sizes();
    let (n, w, p) = (config.requests, config.window, config.pipelined);
    std::fs::create_dir_all(&config.dir).map_err(|e| BenchError::Start {
        what: "bench",
        reason: e.to_string(),
    })?;
    let echo_sock = config.dir.join("echo.sock");
    let hub_sock = config.dir.join("hub.sock");
    let mut rows = Vec::new();

    progress("baseline: raw ping-pong server");
    let (req_s, rep_s) = (request.to_string(), reply.to_string());
    let echo_path = echo_sock.display().to_string();
    let args = [
        "bench-echo",
        "--listen",
        "127.0.0.1:0",
        "--unix",
        &echo_path,
        "--request-bytes",
        &req_s,
        "--reply-bytes",
        &rep_s,
    ];
    let (_echo, lines) = start(&config.exe, "echo server", &args, 2)?;
    let echo_tcp = lines[0].trim_start_matches("tcp ").to_string();
    let connect_tcp = || -> Result<std::net::TcpStream, BenchError> {
        let s = std::net::TcpStream::connect(&echo_tcp)
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        s.set_nodelay(true)
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        Ok(s)
    };
    let connect_unix = || {
        std::os::unix::net::UnixStream::connect(&echo_sock)
            .map_err(|e| BenchError::Measure(e.to_string()))
    };
    progress("baseline: raw TCP and Unix round trips");
    let raw_tcp = row(
        "raw TCP ping-pong",
        Some(raw_latency(connect_tcp()?, n, request, reply)?),
        Some(raw_throughput(connect_tcp()?, p, w, request, reply)?),
        None,
    );
    let raw_unix = row(
        "raw Unix ping-pong",
        Some(raw_latency(connect_unix()?, n, request, reply)?),
        Some(raw_throughput(connect_unix()?, p, w, request, reply)?),
        None,
    );

    progress("baseline: raw relay, as a hub forwards to a worker");
    let relay_sock = config.dir.join("relay.sock");
    let relay_path = relay_sock.display().to_string();
    let upstream_unix = format!("unix:{echo_path}");
    let relay_args = |upstream: &str, unix: Option<&str>| {
        let mut args = vec![
            "bench-echo".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--request-bytes".into(),
            req_s.clone(),
            "--reply-bytes".into(),
            rep_s.clone(),
            "--relay-to".into(),
            upstream.into(),
        ];
        if let Some(path) = unix {
            args.extend(["--unix".to_string(), path.to_string()]);
        }
        args
    };
    let args = relay_args(&echo_tcp, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_tcp_relay, lines) = start(&config.exe, "TCP relay", &args, 1)?;
    let relay_tcp = lines[0].trim_start_matches("tcp ").to_string();
    let args = relay_args(&upstream_unix, Some(&relay_path));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_unix_relay, _) = start(&config.exe, "Unix relay", &args, 2)?;
    let connect_relay_tcp = || -> Result<std::net::TcpStream, BenchError> {
        let s = std::net::TcpStream::connect(&relay_tcp)
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        s.set_nodelay(true)
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        Ok(s)
    };
    let connect_relay_unix = || {
        std::os::unix::net::UnixStream::connect(&relay_sock)
            .map_err(|e| BenchError::Measure(e.to_string()))
    };
    let relay_tcp_row = row(
        "raw TCP relay",
        Some(raw_latency(connect_relay_tcp()?, n, request, reply)?),
        Some(raw_throughput(connect_relay_tcp()?, p, w, request, reply)?),
        Some(&raw_tcp),
    );
    let relay_unix_row = row(
        "raw Unix relay",
        Some(raw_latency(connect_relay_unix()?, n, request, reply)?),
        Some(raw_throughput(connect_relay_unix()?, p, w, request, reply)?),
        Some(&raw_unix),
    );

    progress("qnllm: hub and a fixed-answer worker");
    let hub_path = hub_sock.display().to_string();
    let (_hub, lines) = start(
        &config.exe,
        "hub",
        &["serve", "--listen", "127.0.0.1:0", "--unix", &hub_path],
        2,
    )?;
    let hub_tcp = lines[0]
        .trim_start_matches("qnllm hub listening on tcp ")
        .to_string();
    let fixed = worker(&config.exe, &hub_tcp, &["--name", "fixed", "--fixed"])?;
    let tcp = Arc::new(
        Client::connect(&Endpoint::Tcp(hub_tcp.clone()), "bench", None)
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?,
    );
    let unix = Arc::new(
        Client::connect(&Endpoint::Unix(hub_sock.clone()), "bench", None)
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?,
    );
    wait_for_engine(&tcp).await?;
    progress("qnllm: fixed engine over TCP and Unix");
    let e2e_tcp = row(
        "qnllm TCP, fixed engine",
        Some(hub_latency(&tcp, n).await?),
        Some(hub_throughput(tcp.clone(), p, w).await?),
        Some(&raw_tcp),
    );
    let e2e_unix = row(
        "qnllm Unix, fixed engine",
        Some(hub_latency(&unix, n).await?),
        Some(hub_throughput(unix.clone(), p, w).await?),
        Some(&raw_unix),
    );
    drop(fixed);

    progress("qnllm: default engine");
    let _worker = worker(&config.exe, &hub_tcp, &["--name", "default"])?;
    // The fixed worker is gone when the hub lists exactly one engine named `default`.
    for _ in 0..1_000 {
        let metrics = tcp
            .metrics(Duration::from_secs(5))
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?;
        let names: Vec<&str> = metrics["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        if names == ["default"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e2e_default = row(
        "qnllm Unix, default engine",
        Some(hub_latency(&unix, n).await?),
        Some(hub_throughput(unix.clone(), p, w).await?),
        Some(&raw_unix),
    );

    progress("qnllm: dynamic batching toward a fixed-answer worker");
    let batching_sock = config.dir.join("hub-batching.sock");
    let batching_path = batching_sock.display().to_string();
    let (_batching_hub, lines) = start(
        &config.exe,
        "hub with dynamic batching",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--unix",
            &batching_path,
            "--batch-max",
            "32",
        ],
        2,
    )?;
    let batching_tcp = lines[0]
        .trim_start_matches("qnllm hub listening on tcp ")
        .to_string();
    let _batching_worker = worker(&config.exe, &batching_tcp, &["--name", "fixed", "--fixed"])?;
    let batching = Arc::new(
        Client::connect(&Endpoint::Unix(batching_sock.clone()), "bench", None)
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?,
    );
    wait_for_engine(&batching).await?;
    let e2e_batching = row(
        "qnllm Unix, fixed, batching",
        Some(hub_latency(&batching, n).await?),
        Some(hub_throughput(batching.clone(), p, w).await?),
        Some(&raw_unix),
    );

    progress("qnllm: engine inside the hub (one hop)");
    let one_hop_sock = config.dir.join("hub-local.sock");
    let one_hop_path = one_hop_sock.display().to_string();
    let (_local_hub, _) = start(
        &config.exe,
        "hub with a local engine",
        &["serve", "--no-tcp", "--unix", &one_hop_path, "--local", "1"],
        1,
    )?;
    let one_hop = Arc::new(
        Client::connect(&Endpoint::Unix(one_hop_sock.clone()), "bench", None)
            .await
            .map_err(|e| BenchError::Measure(e.to_string()))?,
    );
    let e2e_one_hop = row(
        "qnllm Unix, engine in hub",
        Some(hub_latency(&one_hop, n).await?),
        Some(hub_throughput(one_hop.clone(), p, w).await?),
        Some(&raw_unix),
    );

    progress("hub memory: idle, then 1000 idle connections");
    let memory = hub_memory(&config.exe, config.idle_connections).await?;

    progress("in process: engine and cache hit");
    let engine = SpikingEngine::from_seed(1, Params::default())
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let x = NormalInputs::new(1, 768).next().unwrap_or_default();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = qnllm_engine::Engine::reason(&engine, &x);
        samples.push(t.elapsed());
    }
    let local = row("in-process engine", Some(Latency::of(samples)), None, None);
    let router = Router::with_config(RouterConfig {
        cache_capacity: Some(1_000),
        ..RouterConfig::default()
    });
    router.add(Arc::new(LocalBackend::new("local", engine)));
    router
        .reason(&x, Duration::from_secs(1))
        .await
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = router.reason(&x, Duration::from_secs(1)).await;
        samples.push(t.elapsed());
    }
    let hit = row(
        "in-process cache hit",
        Some(Latency::of(samples)),
        None,
        None,
    );
    // reason_batch of 64 on one thread: latency per batch, throughput in encodings.
    let batch: Vec<Vec<f32>> = NormalInputs::new(2, 768).take(64).collect();
    let refs: Vec<&[f32]> = batch.iter().map(Vec::as_slice).collect();
    let reference = SpikingEngine::from_seed(1, Params::default())
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let rounds = n;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let _ = qnllm_engine::Engine::reason_batch(&reference, &refs);
        samples.push(t.elapsed());
    }
    let batch_latency = Latency::of(samples);
    let in_batch = row(
        "in-process reason_batch 64",
        Some(batch_latency),
        Some(64.0 / (batch_latency.p50_us / 1e6)),
        None,
    );

    rows.extend([
        raw_tcp,
        raw_unix,
        relay_tcp_row,
        relay_unix_row,
        e2e_tcp,
        e2e_unix,
        e2e_default,
        e2e_batching,
        e2e_one_hop,
        local,
        hit,
        in_batch,
    ]);
    let _ = std::fs::remove_file(&echo_sock);
    Ok(Report {
        request_bytes: request,
        reply_bytes: reply,
        window: w,
        rows,
        memory,
    })
}
