//! The measurement plan: start the baselines, hubs and workers, then measure every path
//! round by round, then the in-process figures; every figure next to its baseline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qnllm_engine::{Digest, NormalInputs, Params, SpikingEngine};
use qnllm_hub::Client;
use qnllm_protocol::{encode_frame, Deadline, Message, ResultBody};
use qnllm_router::{LocalBackend, Router, RouterConfig};

use crate::error::BenchError;
use crate::probe::{Probe, RawAddr};
use crate::process::{address, cpu_of, hub, hub_memory, start, worker, HubSpec, Server};
use crate::report::{distribution, row, Base, Group, Report, Row, Skipped};
use crate::server::Role;
use crate::stats::Latency;

/// What to measure and how much.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The executable that serves the hidden `bench-server` subcommand (see [`serve`]):
    /// every server process of the run is this executable, started with a role.
    ///
    /// [`serve`]: crate::serve
    pub exe: PathBuf,
    /// Round trips per one-at-a-time figure.
    pub requests: usize,
    /// Requests per pipelined throughput figure.
    pub pipelined: usize,
    /// Requests in flight on each connection for the pipelined figures.
    pub window: usize,
    /// Connections per hub path for the pipelined figures.
    pub clients: usize,
    /// The measurements are split into this many rounds, each visiting every path in turn.
    pub rounds: usize,
    /// No round starts after this long; every path has then had the same rounds.
    pub duration: Option<Duration>,
    /// Busy-poll time for the path that measures busy polling (hub, worker and client).
    pub busy_poll: Duration,
    /// Where the Unix sockets go: a folder the run creates and removes, with everything in
    /// it, however the run ends. Name one of its own, not a folder that holds anything else.
    pub dir: PathBuf,
    /// Idle connections for the memory figure.
    pub idle_connections: usize,
    /// Measure the KServe v2 front's rows (HTTP JSON, HTTP binary, gRPC).
    pub front: bool,
    /// Measure the C++ worker's rows, with the worker binary here; `None` leaves them out.
    pub cpp_worker: Option<PathBuf>,
    /// Measure the NATS rows (nats-server must be on PATH).
    pub nats: bool,
    /// The other paths (socket paths, in process, abuse, deadline, memory); off, only the
    /// rows asked for above and their baselines are measured.
    pub core: bool,
}

impl BenchConfig {
    /// Every row, `requests` one at a time and `pipelined` loaded per path; the C++ worker
    /// from [`default_cpp_worker`] when it is built.
    pub fn new(exe: PathBuf, requests: usize, pipelined: usize) -> BenchConfig {
        BenchConfig {
            exe,
            requests,
            pipelined,
            window: 64,
            clients: 1,
            rounds: 20,
            duration: None,
            busy_poll: Duration::from_micros(50),
            dir: std::env::temp_dir().join(format!("qnllm-bench-{}", std::process::id())),
            idle_connections: 1_000,
            front: true,
            cpp_worker: Some(default_cpp_worker()),
            nats: false,
            core: true,
        }
    }
}

/// Where `.ci/suite/30-cpp` and `docs/cpp.md` build the C++ worker, relative to the current
/// directory: the release build if there is one, else the CI build.
pub fn default_cpp_worker() -> PathBuf {
    let release = PathBuf::from("target/cpp/release/qnllm-cpp-worker");
    if release.is_file() {
        return release;
    }
    PathBuf::from("target/cpp/build/qnllm-cpp-worker")
}

/// How to build the C++ worker, for the skip message.
pub const CPP_BUILD: &str = "cmake -S bindings/cpp -B target/cpp/release -DCMAKE_BUILD_TYPE=Release -DQNLLM_BUILD_TESTS=OFF && cmake --build target/cpp/release --target qnllm-cpp-worker";

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
            .map_err(|e| BenchError::start("worker", e))?;
        if metrics["engines"].as_array().is_some_and(|e| !e.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BenchError::start("worker", "it never registered"))
}

/// What a path's second ratio is over.
enum Second {
    /// Another path.
    Path(&'static str),
    /// The sum of two paths' latencies: a floor that is one path's stack plus another's.
    Sum(&'static str, &'static str),
}

/// A path under measurement and what it is compared with.
struct Path {
    name: String,
    group: Group,
    probe: Probe,
    /// The paths its ratios are over.
    first: Option<&'static str>,
    second: Option<Second>,
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
    /// Why the path stopped answering, if it did: it is then left out of the rest of
    /// the run and reported as skipped, with this reason.
    failed: Option<String>,
}

impl Path {
    fn new(name: &str, group: Group, probe: Probe, servers: &[&Server]) -> Path {
        let mut pids: Vec<u32> = servers.iter().map(|s| s.id()).collect();
        pids.push(std::process::id());
        Path {
            name: name.to_string(),
            group,
            probe,
            first: None,
            second: None,
            samples: Vec::new(),
            loaded: Vec::new(),
            done: 0,
            busy: Duration::ZERO,
            pids,
            cpu: Some(Duration::ZERO),
            cpu_loaded: Some(Duration::ZERO),
            per_request: 1,
            failed: None,
        }
    }

    /// Compared with `first` (the `p50_ratio` columns) and `second` (the `relay_*` ones).
    fn over(mut self, first: Option<&'static str>, second: Option<Second>) -> Path {
        self.first = first;
        self.second = second;
        self
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

// The names rows are compared by.
const TCP_PP: &str = "raw TCP ping-pong";
const UNIX_PP: &str = "raw Unix ping-pong";
const TCP_RELAY: &str = "raw TCP relay";
const UNIX_RELAY: &str = "raw Unix relay";
const HUB_TCP: &str = "qnllm TCP, fixed engine";
const RUST_WORKER: &str = "Rust worker, TCP, default engine";
const AXUM_ECHO: &str = "axum echo, binary body";
const TONIC_EMPTY: &str = "tonic empty service";
const RAW_NATS: &str = "raw NATS request-reply";

/// The servers of a run: kept until the run ends, then stopped.
#[derive(Default)]
struct Servers(Vec<Server>);

impl Servers {
    /// Keeps `server`; its pid.
    fn keep(&mut self, server: Server) -> u32 {
        let id = server.id();
        self.0.push(server);
        id
    }
}

/// The run's folder of sockets, removed when the run ends however it ends.
struct Scratch<'a>(&'a std::path::Path);

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// Runs every measurement; `progress` hears what is being measured and the fraction done.
///
/// # Errors
///
/// [`BenchError`] when a server cannot start or a measurement fails. Rows that cannot run
/// on this machine (no C++ worker built, no nats-server) are skipped, and the report says
/// why in [`Report::skipped`].
pub async fn run(config: &BenchConfig, progress: impl Fn(&str, f64)) -> Result<Report, BenchError> {
    let (request, reply) = sizes();
    let (c, w) = (config.clients.max(1), config.window.max(1));
    let rounds = config.rounds.max(1);
    std::fs::create_dir_all(&config.dir).map_err(|e| BenchError::Io {
        what: format!("cannot make {}", config.dir.display()),
        source: e,
    })?;
    // Declared before the servers, so it is dropped after them: their sockets go too, on
    // success and on every error.
    let _scratch = Scratch(&config.dir);
    let dir = |name: &str| config.dir.join(name);
    let exe = config.exe.as_path();
    let mut skipped = Vec::new();
    let mut servers = Servers::default();
    let mut paths = Vec::new();

    progress("starting the baseline servers", 0.0);
    let pong_unix = dir("pong.sock");
    let (pong, pong_at) = start(
        exe,
        "the ping-pong server",
        &Role::Pong {
            unix: pong_unix.clone(),
            request_bytes: request,
            reply_bytes: reply,
        },
    )?;
    let pong_tcp = address(&pong_at, "the ping-pong server", "tcp")?;
    let relay = |what: &str, unix: PathBuf, upstream: String| {
        let role = Role::Relay {
            unix,
            upstream,
            request_bytes: request,
            reply_bytes: reply,
        };
        let (server, at) = start(exe, what, &role)?;
        Ok::<_, BenchError>((server, address(&at, what, "tcp")?))
    };
    let (tcp_relay, relay_tcp) = relay("the TCP relay", dir("relay-tcp.sock"), pong_tcp.clone())?;
    let raw = |addr: RawAddr| Probe::raw(&addr, c, request, reply);
    paths.push(Path::new(
        TCP_PP,
        Group::Socket,
        raw(RawAddr::Tcp(pong_tcp.clone()))?,
        &[&pong],
    ));
    paths.push(
        Path::new(
            TCP_RELAY,
            Group::Socket,
            raw(RawAddr::Tcp(relay_tcp))?,
            &[&tcp_relay, &pong],
        )
        .over(Some(TCP_PP), None),
    );

    // One hub per qnllm path, each worker on the hub's transport, as the relays are.
    progress("starting the hubs and workers", 0.0);
    let (fixed_tcp_hub, fixed_tcp, _) = hub(exe, "hub", HubSpec::default())?;
    let fixed_tcp_worker = worker(exe, &fixed_tcp, true, 0)?;
    paths.push(
        Path::new(
            HUB_TCP,
            Group::Socket,
            Probe::hub(&fixed_tcp, c, Duration::ZERO).await?,
            &[&fixed_tcp_hub, &fixed_tcp_worker],
        )
        .over(Some(TCP_PP), Some(Second::Path(TCP_RELAY))),
    );
    let mut deadline_hub = None;
    if config.core {
        socket_paths(config, &mut paths, &mut servers, &pong, request, reply).await?;
        deadline_hub = paths
            .iter()
            .find(|p| p.name == "qnllm Unix, default engine")
            .and_then(|p| p.probe.endpoint());
    }
    servers.keep(pong);
    servers.keep(tcp_relay);
    servers.keep(fixed_tcp_hub);
    servers.keep(fixed_tcp_worker);

    match &config.cpp_worker {
        None => skipped.push(Skipped {
            rows: "C++ worker".into(),
            reason: "left out (--no-cpp)".into(),
        }),
        Some(binary) if !binary.is_file() => skipped.push(Skipped {
            rows: "C++ worker".into(),
            reason: format!(
                "no C++ worker at {}: build it with `{CPP_BUILD}`, or pass --cpp-worker PATH",
                binary.display()
            ),
        }),
        Some(binary) => {
            progress("starting the C++ worker and its Rust twin", 0.0);
            paths.extend(cpp_paths(exe, binary, c, &mut servers).await?);
        }
    }
    if config.front {
        progress("starting the KServe v2 front and the HTTP/gRPC floors", 0.0);
        paths.extend(front_paths(exe, &mut servers).await?);
    } else {
        skipped.push(Skipped {
            rows: "KServe v2 front (HTTP, gRPC)".into(),
            reason: "left out (--no-front)".into(),
        });
    }
    // Kept to the end of the run: discovery keeps the router's NATS backends up to date.
    let mut _discovery = None;
    match (config.nats, crate::nats::server_binary()) {
        (false, _) => skipped.push(Skipped {
            rows: "NATS".into(),
            reason: "not asked for: add --nats".into(),
        }),
        (true, Err(reason)) => skipped.push(Skipped {
            rows: "NATS".into(),
            reason,
        }),
        (true, Ok(binary)) => {
            progress(
                "starting nats-server, the raw responder and a NATS worker",
                0.0,
            );
            let (nats_paths, discovery) =
                nats_paths(exe, &binary, request, reply, &mut servers).await?;
            paths.extend(nats_paths);
            _discovery = Some(discovery);
        }
    }
    if config.core {
        // The engine in this process, measured in the same rounds as the paths through
        // the hub, so the engine's share compares like with like.
        let reference = SpikingEngine::from_seed(1, Params::default())
            .map_err(|e| BenchError::start("the in-process engine", e))?;
        paths.push(
            Path::new(
                "in-process reason_batch 64",
                Group::Other,
                Probe::engine(reference.clone(), BATCH),
                &[],
            )
            .per_request(BATCH),
        );
        let cores = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
        if cores.get() > 1 {
            paths.push(
                Path::new(
                    &format!("in-process reason_batch 64, {cores} cores"),
                    Group::Other,
                    Probe::engine(reference.with_threads(cores), BATCH),
                    &[],
                )
                .per_request(BATCH),
            );
        }
    }
    for path in &paths {
        if let Some(client) = path.probe.client() {
            wait_for_engine(client).await?;
        }
    }
    // One untimed round trip per path: connections, buffers and caches exist before
    // timing, and every path is seen to answer.
    for path in &mut paths {
        if let Err(e) = path.probe.latency(&path.name, 1, &mut Vec::new()).await {
            path.failed = Some(e.to_string());
        }
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
            if path.failed.is_some() {
                continue;
            }
            progress(
                &format!("round {}/{rounds}: {}", round + 1, path.name),
                (round * count + i) as f64 / (rounds * count) as f64,
            );
            let before = cpu_of(&path.pids);
            let count = per_round.div_ceil(path.per_request).max(1);
            if let Err(e) = path
                .probe
                .latency(&path.name, count, &mut path.samples)
                .await
            {
                path.failed = Some(e.to_string());
                continue;
            }
            let used = before
                .zip(cpu_of(&path.pids))
                .map(|(a, b)| b.saturating_sub(a));
            path.cpu = path.cpu.zip(used).map(|(total, used)| total + used);
            let before = cpu_of(&path.pids);
            let (done, took) = match path
                .probe
                .throughput(&path.name, pipelined_per_round, w, &mut path.loaded)
                .await
            {
                Ok(measured) => measured,
                Err(e) => {
                    path.failed = Some(e.to_string());
                    continue;
                }
            };
            let used = before
                .zip(cpu_of(&path.pids))
                .map(|(a, b)| b.saturating_sub(a));
            path.cpu_loaded = path.cpu_loaded.zip(used).map(|(total, used)| total + used);
            path.done += done;
            path.busy += took;
        }
        completed += 1;
    }

    let mut extra = Vec::new();
    let mut memory = None;
    if config.core {
        if let Some(endpoint) = &deadline_hub {
            progress(
                "saturated deadline: DeadlineExceeded after the deadline",
                1.0,
            );
            extra.push(crate::deadline::saturated(endpoint, c, c * w, config.pipelined).await?);
        }
        progress("hub memory: idle, then idle connections", 1.0);
        memory = hub_memory(exe, config.idle_connections).await?;
        progress("abusive neighbour: a quiet client beside a flood", 1.0);
        let mut neighbour = crate::neighbour::rows(exe, config.requests).await?;
        neighbour.append(&mut extra);
        extra = neighbour;
        progress("in process: engine, cache hit", 1.0);
        extra.extend(in_process(config.requests).await?);
    }

    // A path that stopped answering has no figures to show: it is reported as skipped,
    // with its error, and the others stand.
    for path in &paths {
        if let Some(reason) = &path.failed {
            skipped.push(Skipped {
                rows: path.name.clone(),
                reason: format!("failed during the run: {reason}"),
            });
        }
    }
    paths.retain(|p| p.failed.is_none());
    let measured: HashMap<&str, Base> = paths
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                Base {
                    name: p.name.clone(),
                    latency: Latency::of(p.samples.clone()),
                    throughput: Some(p.done as f64 / p.busy.as_secs_f64().max(1e-9)),
                },
            )
        })
        .collect();
    let mut rows: Vec<Row> = Vec::with_capacity(paths.len() + extra.len());
    for path in &paths {
        let own = &measured[path.name.as_str()];
        let first = path.first.and_then(|name| measured.get(name));
        let second = match &path.second {
            None => None,
            Some(Second::Path(name)) => measured.get(name).cloned(),
            Some(Second::Sum(a, b)) => measured.get(a).zip(measured.get(b)).map(|(a, b)| Base {
                name: format!("{} + {}", a.name, b.name),
                latency: Latency {
                    count: a.latency.count.min(b.latency.count),
                    p50_us: a.latency.p50_us + b.latency.p50_us,
                    p90_us: a.latency.p90_us + b.latency.p90_us,
                    p99_us: a.latency.p99_us + b.latency.p99_us,
                    p999_us: a.latency.p999_us + b.latency.p999_us,
                    max_us: a.latency.max_us + b.latency.max_us,
                },
                // Two stacks in series have no throughput of their own to compare with.
                throughput: None,
            }),
        };
        let mut row = row(
            &path.name,
            path.group,
            Some(own.latency),
            own.throughput,
            first,
            second.as_ref(),
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
    rows.extend(extra);
    let throughput_of = |name: &str| measured.get(name).and_then(|b| b.throughput);
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
    drop(paths);
    drop(servers);
    Ok(Report {
        request_bytes: request,
        reply_bytes: reply,
        window: w,
        clients: c,
        rounds: completed,
        busy_poll_us: config.busy_poll.as_micros() as u64,
        engine_share,
        engine_share_batched,
        rows,
        skipped,
        memory,
    })
}

/// The Unix-socket paths and the hub variants: busy polling, the default engine, batches,
/// dynamic batching, an engine in the hub.
async fn socket_paths(
    config: &BenchConfig,
    paths: &mut Vec<Path>,
    servers: &mut Servers,
    pong: &Server,
    request: usize,
    reply: usize,
) -> Result<(), BenchError> {
    let exe = config.exe.as_path();
    let dir = |name: &str| config.dir.join(name);
    let c = config.clients.max(1);
    let role = Role::Relay {
        unix: dir("relay.sock"),
        upstream: format!("unix:{}", dir("pong.sock").display()),
        request_bytes: request,
        reply_bytes: reply,
    };
    let (unix_relay, _) = start(exe, "the Unix relay", &role)?;
    let raw = |path: PathBuf| Probe::raw(&RawAddr::Unix(path), c, request, reply);
    paths.push(Path::new(
        UNIX_PP,
        Group::Socket,
        raw(dir("pong.sock"))?,
        &[pong],
    ));
    paths.push(
        Path::new(
            UNIX_RELAY,
            Group::Socket,
            raw(dir("relay.sock"))?,
            &[&unix_relay, pong],
        )
        .over(Some(UNIX_PP), None),
    );
    let unix_hub = |what: &str, sock: &str, spec: HubSpec| {
        hub(
            exe,
            what,
            HubSpec {
                unix: Some(dir(sock)),
                ..spec
            },
        )
    };
    let relayed = || (Some(UNIX_PP), Some(Second::Path(UNIX_RELAY)));
    let spin_us = config.busy_poll.as_micros() as u64;
    // (name, hub, busy poll, fixed engine, a worker)
    let variants: [(&str, &str, HubSpec, u64, bool, bool); 5] = [
        (
            "qnllm Unix, fixed engine",
            "fixed.sock",
            HubSpec::default(),
            0,
            true,
            true,
        ),
        (
            "qnllm Unix, fixed, busy-poll",
            "spin.sock",
            HubSpec {
                busy_poll_us: spin_us,
                ..HubSpec::default()
            },
            spin_us,
            true,
            true,
        ),
        (
            "qnllm Unix, default engine",
            "default.sock",
            HubSpec::default(),
            0,
            false,
            true,
        ),
        (
            "qnllm Unix, fixed, batching",
            "batching.sock",
            HubSpec {
                batch_max: 32,
                ..HubSpec::default()
            },
            0,
            true,
            true,
        ),
        (
            "qnllm Unix, engine in hub",
            "local.sock",
            HubSpec {
                local_engines: 1,
                ..HubSpec::default()
            },
            0,
            false,
            false,
        ),
    ];
    for (name, sock, spec, busy_poll_us, fixed, with_worker) in variants {
        let (hub_server, endpoint, _) = unix_hub(name, sock, spec)?;
        let worker_server = if with_worker {
            Some(worker(exe, &endpoint, fixed, busy_poll_us)?)
        } else {
            None
        };
        let mut on_path: Vec<&Server> = vec![&hub_server];
        on_path.extend(worker_server.as_ref());
        let busy_poll = Duration::from_micros(busy_poll_us);
        let (first, second) = relayed();
        let second = if with_worker { second } else { None };
        paths.push(
            Path::new(
                name,
                Group::Socket,
                Probe::hub(&endpoint, c, busy_poll).await?,
                &on_path,
            )
            .over(first, second),
        );
        if name == "qnllm Unix, default engine" {
            paths.push(
                Path::new(
                    "qnllm Unix, default, batch 64",
                    Group::Socket,
                    Probe::hub(&endpoint, c, busy_poll)
                        .await?
                        .batches(BATCH, BATCH_WINDOW),
                    &on_path,
                )
                .per_request(BATCH),
            );
        }
        servers.keep(hub_server);
        if let Some(worker_server) = worker_server {
            servers.keep(worker_server);
        }
    }
    servers.keep(unix_relay);
    Ok(())
}

/// The C++ worker (the reference engine, in C++) and the Rust worker with the reference
/// engine, each alone on a hub of its own over TCP.
async fn cpp_paths(
    exe: &std::path::Path,
    binary: &std::path::Path,
    clients: usize,
    servers: &mut Servers,
) -> Result<Vec<Path>, BenchError> {
    let (rust_hub, rust_endpoint, _) = hub(exe, "hub for the Rust worker", HubSpec::default())?;
    let rust_worker = worker(exe, &rust_endpoint, false, 0)?;
    let (cpp_hub, cpp_endpoint, _) = hub(exe, "hub for the C++ worker", HubSpec::default())?;
    let qnllm_hub::Endpoint::Tcp(cpp_addr) = &cpp_endpoint else {
        return Err(BenchError::start(
            "the C++ worker",
            "its hub has no TCP address",
        ));
    };
    let child = std::process::Command::new(binary)
        .args([
            "--connect",
            cpp_addr,
            "--model",
            "seed:1",
            "--name",
            "cpp",
            "--quiet",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::start(format!("the C++ worker {}", binary.display()), e))?;
    let cpp_worker = Server::new(child, None);
    let paths = vec![
        Path::new(
            RUST_WORKER,
            Group::Cpp,
            Probe::hub(&rust_endpoint, clients, Duration::ZERO).await?,
            &[&rust_hub, &rust_worker],
        )
        .over(None, Some(Second::Path(TCP_RELAY))),
        Path::new(
            "C++ worker, TCP, default engine",
            Group::Cpp,
            Probe::hub(&cpp_endpoint, clients, Duration::ZERO).await?,
            &[&cpp_hub, &cpp_worker],
        )
        .over(Some(RUST_WORKER), Some(Second::Path(TCP_RELAY))),
    ];
    for server in [rust_hub, rust_worker, cpp_hub, cpp_worker] {
        servers.keep(server);
    }
    Ok(paths)
}

/// The KServe v2 front of a hub with a fixed-engine worker, over HTTP JSON, HTTP binary
/// tensors and gRPC; beside the axum echo and the tonic empty service.
async fn front_paths(
    exe: &std::path::Path,
    servers: &mut Servers,
) -> Result<Vec<Path>, BenchError> {
    let (echo, echo_at) = start(exe, "the HTTP/gRPC floors", &Role::Echo)?;
    let spec = HubSpec {
        front: true,
        ..HubSpec::default()
    };
    let (front_hub, endpoint, front_at) = hub(exe, "hub with the KServe v2 front", spec)?;
    let front_worker = worker(exe, &endpoint, true, 0)?;
    let what = "the KServe v2 front";
    let bodies = crate::front::Bodies::new();
    let http = reqwest::Client::new();
    let echo_http = address(&echo_at, "the HTTP floor", "http")?;
    let echo_grpc = address(&echo_at, "the gRPC floor", "grpc")?;
    let front_http = address(&front_at, what, "http")?;
    let front_grpc = address(&front_at, what, "grpc")?;
    let infer = format!("http://{front_http}/v2/models/qnllm/infer");
    let on_front = [&front_hub, &front_worker];
    let over_echo = |floor| (Some(floor), Some(Second::Sum(floor, HUB_TCP)));
    let paths = vec![
        Path::new(
            AXUM_ECHO,
            Group::Front,
            Probe::Http {
                client: http.clone(),
                url: format!("http://{echo_http}{}", crate::echo::ECHO_PATH),
                body: bodies.binary.clone(),
                header_length: Some(bodies.header_length),
            },
            &[&echo],
        ),
        Path::new(
            TONIC_EMPTY,
            Group::Front,
            Probe::Grpc {
                client: crate::front::grpc(&echo_grpc).await?,
                request: bodies.grpc.clone(),
            },
            &[&echo],
        ),
        {
            let (first, second) = over_echo(AXUM_ECHO);
            Path::new(
                "HTTP JSON → hub → worker",
                Group::Front,
                Probe::Http {
                    client: http.clone(),
                    url: infer.clone(),
                    body: bodies.json.clone(),
                    header_length: None,
                },
                &on_front,
            )
            .over(first, second)
        },
        {
            let (first, second) = over_echo(AXUM_ECHO);
            Path::new(
                "HTTP binary → hub → worker",
                Group::Front,
                Probe::Http {
                    client: http,
                    url: infer,
                    body: bodies.binary.clone(),
                    header_length: Some(bodies.header_length),
                },
                &on_front,
            )
            .over(first, second)
        },
        {
            let (first, second) = over_echo(TONIC_EMPTY);
            Path::new(
                "gRPC → hub → worker",
                Group::Front,
                Probe::Grpc {
                    client: crate::front::grpc(&front_grpc).await?,
                    request: bodies.grpc,
                },
                &on_front,
            )
            .over(first, second)
        },
    ];
    for server in [echo, front_hub, front_worker] {
        servers.keep(server);
    }
    Ok(paths)
}

/// A worker on NATS reached through discovery and the router's `NatsBackend`, beside raw
/// NATS request-reply of the same sizes; the direct hub path is measured with the others.
async fn nats_paths(
    exe: &std::path::Path,
    binary: &std::path::Path,
    request: usize,
    reply: usize,
    servers: &mut Servers,
) -> Result<(Vec<Path>, qnllm_nats::Discovery), BenchError> {
    let (nats_server, url) = crate::nats::start_server(binary)?;
    let echo_role = Role::NatsEcho {
        url: url.clone(),
        subject: crate::nats::RAW_SUBJECT.into(),
        reply_bytes: reply,
    };
    let (responder, _) = start(exe, "the raw NATS responder", &echo_role)?;
    let worker_role = Role::NatsWorker {
        url: url.clone(),
        name: "bench-nats-worker".into(),
    };
    let (nats_worker, _) = start(exe, "the NATS worker", &worker_role)?;
    let (router, discovery, client) = crate::nats::router(&url, 1).await?;
    let paths = vec![
        Path::new(
            RAW_NATS,
            Group::Nats,
            Probe::Nats {
                client,
                subject: crate::nats::RAW_SUBJECT.into(),
                payload: vec![1u8; request].into(),
            },
            &[&nats_server, &responder],
        ),
        Path::new(
            "NATS → worker, fixed engine",
            Group::Nats,
            Probe::Router {
                router,
                encoding: NormalInputs::new(1, 768).next().unwrap_or_default(),
            },
            &[&nats_server, &nats_worker],
        )
        .over(Some(RAW_NATS), Some(Second::Path(HUB_TCP))),
    ];
    for server in [nats_server, responder, nats_worker] {
        servers.keep(server);
    }
    Ok((paths, discovery))
}

/// The in-process rows: the engine alone and a cache hit (`reason_batch` is measured in
/// the rounds with the other paths).
async fn in_process(n: usize) -> Result<Vec<Row>, BenchError> {
    let engine = SpikingEngine::from_seed(1, Params::default())
        .map_err(|e| BenchError::start("the in-process engine", e))?;
    let x = NormalInputs::new(1, 768).next().unwrap_or_default();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = qnllm_engine::Engine::reason(&engine, &x);
        samples.push(t.elapsed());
    }
    let local = row(
        "in-process engine",
        Group::Other,
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
        .map_err(|e| BenchError::measure("in-process cache hit", e))?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = router.reason(&x, Duration::from_secs(1)).await;
        samples.push(t.elapsed());
    }
    let hit = row(
        "in-process cache hit",
        Group::Other,
        Some(Latency::of(samples.clone())),
        None,
        None,
        None,
        distribution(&samples),
    );
    Ok(vec![local, hit])
}
