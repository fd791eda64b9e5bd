//! The measurement plan: start the baselines, hubs and workers, then measure every path
//! round by round, then the in-process figures; every figure next to its baseline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qnllm_engine::{Digest, NormalInputs, Params, SpikingEngine};
use qnllm_hub::Client;
use qnllm_protocol::{encode_frame, Deadline, Message, ResultBody};
use qnllm_router::{LocalBackend, Router, RouterConfig};

use crate::probe::{Probe, RawAddr};
use crate::process::{cpu_of, hub, hub_memory, start, worker, Server};
use crate::report::{distribution, row, Report, Row};
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
    /// Requests in flight on each connection for the pipelined figures.
    pub window: usize,
    /// Connections per path for the pipelined figures.
    pub clients: usize,
    /// The measurements are split into this many rounds, each visiting every path in turn.
    pub rounds: usize,
    /// No round starts after this long; every path has then had the same rounds.
    pub duration: Option<Duration>,
    /// Busy-poll time for the path that measures busy polling (hub, worker and client).
    pub busy_poll: Duration,
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

pub(crate) async fn wait_for_engine(client: &Client) -> Result<(), BenchError> {
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

/// A path under measurement and what it is compared with.
struct Path {
    name: String,
    probe: Probe,
    /// Index of its raw ping-pong and raw relay in the list of paths.
    ping_pong: Option<usize>,
    relay: Option<usize>,
    samples: Vec<Duration>,
    /// Round trips under the throughput load.
    loaded: Vec<Duration>,
    done: usize,
    busy: Duration,
    /// The processes serving this path, the measuring client's own included.
    pids: Vec<u32>,
    /// Their CPU time during the one-at-a-time round trips; `None` where it cannot be read.
    cpu: Option<Duration>,
    /// Their CPU time during the pipelined requests.
    cpu_loaded: Option<Duration>,
    /// Encodings per request.
    per_request: usize,
}

impl Path {
    fn new(
        name: &str,
        probe: Probe,
        ping_pong: Option<usize>,
        relay: Option<usize>,
        servers: &[&Server],
    ) -> Path {
        let mut pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
        pids.push(std::process::id());
        Path {
            name: name.to_string(),
            probe,
            ping_pong,
            relay,
            samples: Vec::new(),
            loaded: Vec::new(),
            done: 0,
            busy: Duration::ZERO,
            pids,
            cpu: Some(Duration::ZERO),
            cpu_loaded: Some(Duration::ZERO),
            per_request: 1,
        }
    }

    /// Requests carry `n` encodings each: a `reason_batch` path, whose one-at-a-time
    /// figures are per batch and whose throughput counts encodings.
    fn per_request(mut self, n: usize) -> Path {
        self.per_request = n.max(1);
        self
    }
}

/// Encodings per request on the `reason_batch` path, as in the in-process batch row.
const BATCH: usize = 64;
/// Batches in flight per connection on that path: enough to keep every core busy.
const BATCH_WINDOW: usize = 8;

/// Runs every measurement; `progress` hears what is being measured and the fraction done.
///
/// # Errors
///
/// [`BenchError`] when a server cannot start or a measurement fails.
pub async fn run(config: &BenchConfig, progress: impl Fn(&str, f64)) -> Result<Report, BenchError> {
    let (request, reply) = sizes();
    let (c, w) = (config.clients.max(1), config.window.max(1));
    let rounds = config.rounds.max(1);
    std::fs::create_dir_all(&config.dir).map_err(|e| BenchError::Start {
        what: "bench",
        reason: e.to_string(),
    })?;
    let dir = |name: &str| config.dir.join(name).display().to_string();

    progress("starting the baseline servers, hubs and workers", 0.0);
    let (req_s, rep_s) = (request.to_string(), reply.to_string());
    let baseline_args = |upstream: Option<&str>, unix: &str| {
        let mut args = vec![
            "bench-baseline".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--unix".into(),
            unix.into(),
            "--request-bytes".into(),
            req_s.clone(),
            "--reply-bytes".into(),
            rep_s.clone(),
        ];
        if let Some(upstream) = upstream {
            args.extend(["--relay-to".to_string(), upstream.to_string()]);
        }
        args
    };
    let start_baseline = |what, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (server, lines) = start(&config.exe, what, &args, 2)?;
        let tcp = lines[0].trim_start_matches("tcp ").to_string();
        Ok::<_, BenchError>((server, tcp))
    };
    let pong_unix = dir("pong.sock");
    let (pong, pong_tcp) = start_baseline("the ping-pong server", baseline_args(None, &pong_unix))?;
    let relay_tcp_unix = dir("relay-tcp.sock");
    let (tcp_relay, relay_tcp) = start_baseline(
        "the TCP relay",
        baseline_args(Some(&pong_tcp), &relay_tcp_unix),
    )?;
    let relay_unix = dir("relay.sock");
    let (unix_relay, _) = start_baseline(
        "the Unix relay",
        baseline_args(Some(&format!("unix:{pong_unix}")), &relay_unix),
    )?;

    // One hub per qnllm path, each worker on the hub's transport, as the relays are.
    let (fixed_tcp_hub, fixed_tcp) = hub(&config.exe, "hub", &["--listen", "127.0.0.1:0"])?;
    let fixed_tcp_worker = worker(
        &config.exe,
        &fixed_tcp.to_string(),
        &["--name", "fixed", "--fixed"],
    )?;
    let unix_hub = |what, path: String, extra: &[&str]| {
        let mut args = vec!["--no-tcp", "--unix", &path];
        args.extend_from_slice(extra);
        hub(&config.exe, what, &args)
    };
    let (fixed_hub, fixed_unix) = unix_hub("hub", dir("fixed.sock"), &[])?;
    let fixed_worker = worker(
        &config.exe,
        &fixed_unix.to_string(),
        &["--name", "fixed", "--fixed"],
    )?;
    let (default_hub, default_unix) = unix_hub("hub", dir("default.sock"), &[])?;
    let default_worker = worker(
        &config.exe,
        &default_unix.to_string(),
        &["--name", "default"],
    )?;
    let (batching_hub, batching_unix) = unix_hub(
        "hub with dynamic batching",
        dir("batching.sock"),
        &["--batch-max", "32"],
    )?;
    let batching_worker = worker(
        &config.exe,
        &batching_unix.to_string(),
        &["--name", "fixed", "--fixed"],
    )?;
    let (local_hub, local_unix) = unix_hub(
        "hub with a local engine",
        dir("local.sock"),
        &["--local", "1"],
    )?;

    let spin = config.busy_poll;
    let spin_us = spin.as_micros().to_string();
    let (spin_hub, spin_unix) = unix_hub(
        "hub with busy polling",
        dir("spin.sock"),
        &["--busy-poll-us", &spin_us],
    )?;
    let spin_worker = worker(
        &config.exe,
        &spin_unix.to_string(),
        &["--name", "fixed", "--fixed", "--busy-poll-us", &spin_us],
    )?;

    // The engine in this process, measured in the same rounds as the paths through the
    // hub, so the engine's share compares like with like.
    let reference = SpikingEngine::from_seed(1, Params::default())
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let cores = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
    let raw = |addr: RawAddr| Probe::raw(&addr, c, request, reply);
    let z = Duration::ZERO;
    let mut paths = vec![
        Path::new(
            "raw TCP ping-pong",
            raw(RawAddr::Tcp(pong_tcp.clone()))?,
            None,
            None,
            &[&pong],
        ),
        Path::new(
            "raw Unix ping-pong",
            raw(RawAddr::Unix(pong_unix.clone().into()))?,
            None,
            None,
            &[&pong],
        ),
        Path::new(
            "raw TCP relay",
            raw(RawAddr::Tcp(relay_tcp))?,
            Some(0),
            None,
            &[&tcp_relay, &pong],
        ),
        Path::new(
            "raw Unix relay",
            raw(RawAddr::Unix(relay_unix.into()))?,
            Some(1),
            None,
            &[&unix_relay, &pong],
        ),
        Path::new(
            "qnllm TCP, fixed engine",
            Probe::hub(&fixed_tcp, c, z).await?,
            Some(0),
            Some(2),
            &[&fixed_tcp_hub, &fixed_tcp_worker],
        ),
        Path::new(
            "qnllm Unix, fixed engine",
            Probe::hub(&fixed_unix, c, z).await?,
            Some(1),
            Some(3),
            &[&fixed_hub, &fixed_worker],
        ),
        Path::new(
            "qnllm Unix, fixed, busy-poll",
            Probe::hub(&spin_unix, c, spin).await?,
            Some(1),
            Some(3),
            &[&spin_hub, &spin_worker],
        ),
        Path::new(
            "qnllm Unix, default engine",
            Probe::hub(&default_unix, c, z).await?,
            Some(1),
            Some(3),
            &[&default_hub, &default_worker],
        ),
        Path::new(
            "qnllm Unix, default, batch 64",
            Probe::hub(&default_unix, c, z)
                .await?
                .batches(BATCH, BATCH_WINDOW),
            None,
            None,
            &[&default_hub, &default_worker],
        )
        .per_request(BATCH),
        Path::new(
            "qnllm Unix, fixed, batching",
            Probe::hub(&batching_unix, c, z).await?,
            Some(1),
            Some(3),
            &[&batching_hub, &batching_worker],
        ),
        Path::new(
            "qnllm Unix, engine in hub",
            Probe::hub(&local_unix, c, z).await?,
            Some(1),
            None,
            &[&local_hub],
        ),
    ];
    paths.push(
        Path::new(
            "in-process reason_batch 64",
            Probe::engine(reference.clone(), BATCH),
            None,
            None,
            &[],
        )
        .per_request(BATCH),
    );
    if cores.get() > 1 {
        paths.push(
            Path::new(
                &format!("in-process reason_batch 64, {cores} cores"),
                Probe::engine(reference.clone().with_threads(cores), BATCH),
                None,
                None,
                &[],
            )
            .per_request(BATCH),
        );
    }
    for path in &paths {
        if let Some(client) = path.probe.client() {
            wait_for_engine(client).await?;
        }
    }
    // One untimed round trip per path: connections, buffers and caches exist before timing.
    for path in &mut paths {
        path.probe.latency(1, &mut Vec::new()).await?;
    }

    // Round by round, every path in turn: a slow spell on the machine is shared by all.
    let started = Instant::now();
    let per_round = config.requests.div_ceil(rounds).max(1);
    let pipelined_per_round = config.pipelined.div_ceil(rounds).max(1);
    let mut completed = 0;
    for round in 0..rounds {
        if round > 0 && config.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let count = paths.len();
        for (i, path) in paths.iter_mut().enumerate() {
            progress(
                &format!("round {}/{rounds}: {}", round + 1, path.name),
                (round * count + i) as f64 / (rounds * count) as f64,
            );
            let before = cpu_of(&path.pids);
            let count = per_round.div_ceil(path.per_request).max(1);
            path.probe.latency(count, &mut path.samples).await?;
            let used = before
                .zip(cpu_of(&path.pids))
                .map(|(a, b)| b.saturating_sub(a));
            path.cpu = path.cpu.zip(used).map(|(total, used)| total + used);
            let before = cpu_of(&path.pids);
            let (done, took) = path
                .probe
                .throughput(pipelined_per_round, w, &mut path.loaded)
                .await?;
            let used = before
                .zip(cpu_of(&path.pids))
                .map(|(a, b)| b.saturating_sub(a));
            path.cpu_loaded = path.cpu_loaded.zip(used).map(|(total, used)| total + used);
            path.done += done;
            path.busy += took;
        }
        completed += 1;
    }

    progress(
        "saturated deadline: DeadlineExceeded after the deadline",
        1.0,
    );
    let saturated = crate::deadline::saturated(&default_unix, c, c * w, config.pipelined).await?;

    progress("hub memory: idle, then idle connections", 1.0);
    let memory = hub_memory(&config.exe, config.idle_connections).await?;

    progress("abusive neighbour: a quiet client beside a flood", 1.0);
    let neighbour = crate::neighbour::rows(&config.exe, config.requests).await?;

    progress("in process: engine, cache hit, reason_batch", 1.0);
    let mut rows: Vec<Row> = Vec::with_capacity(paths.len() + 3);
    let measured: Vec<(Latency, f64)> = paths
        .iter()
        .map(|p| {
            (
                Latency::of(p.samples.clone()),
                p.done as f64 / p.busy.as_secs_f64().max(1e-9),
            )
        })
        .collect();
    for (i, path) in paths.iter().enumerate() {
        let (latency, throughput) = measured[i];
        let base = |j: Option<usize>| j.map(|j| measured[j]);
        let mut row = row(
            &path.name,
            Some(latency),
            Some(throughput),
            base(path.ping_pong),
            base(path.relay),
            distribution(&path.samples),
        );
        row.loaded = Some(Latency::of(path.loaded.clone()));
        row.loaded_cpu_us_per_request = path
            .cpu_loaded
            .map(|cpu| cpu.as_secs_f64() * 1e6 / path.done.max(1) as f64);
        row.cpu_us_per_request = path
            .cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / path.samples.len().max(1) as f64);
        rows.push(row);
    }
    rows.extend(neighbour);
    rows.push(saturated);
    rows.extend(in_process(config.requests).await?);
    let throughput_of = |prefix: &str| {
        rows.iter()
            .filter(|r| r.path.starts_with(prefix))
            .filter_map(|r| r.throughput)
            .next_back()
    };
    // The engine's best in process on these cores: on one thread or on all of them,
    // whichever did more (splitting a batch over threads does not always pay here).
    let local = rows
        .iter()
        .filter(|r| r.path.starts_with("in-process reason_batch 64"))
        .filter_map(|r| r.throughput)
        .reduce(f64::max);
    let engine_share = throughput_of("qnllm Unix, default engine")
        .zip(local)
        .map(|(hub, local)| hub / local);
    let engine_share_batched = throughput_of("qnllm Unix, default, batch 64")
        .zip(local)
        .map(|(hub, local)| hub / local);
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(Report {
        request_bytes: request,
        reply_bytes: reply,
        window: w,
        clients: c,
        rounds: completed,
        busy_poll_us: spin.as_micros() as u64,
        engine_share,
        engine_share_batched,
        rows,
        memory,
    })
}

/// The in-process rows: the engine alone and a cache hit (`reason_batch` is measured in
/// the rounds with the other paths).
async fn in_process(n: usize) -> Result<Vec<Row>, BenchError> {
    let engine = SpikingEngine::from_seed(1, Params::default())
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let x = NormalInputs::new(1, 768).next().unwrap_or_default();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = qnllm_engine::Engine::reason(&engine, &x);
        samples.push(t.elapsed());
    }
    let local = row(
        "in-process engine",
        Some(Latency::of(samples.clone())),
        None,
        None,
        None,
        distribution(&samples),
    );
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
        Some(Latency::of(samples.clone())),
        None,
        None,
        None,
        distribution(&samples),
    );
    Ok(vec![local, hit])
}
