//! The networked commands: `serve` (a hub), `worker`, and `reason --connect`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use qnllm::UnifiedEngine;
use qnllm_engine::SpikingEngine;
use qnllm_hub::{Client, Endpoint, HubConfig, WorkerConfig};
use qnllm_router::LocalBackend;
use tokio_util::sync::CancellationToken;

use crate::{output, ModelArg};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TCP address to listen on [default: 127.0.0.1:9999].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Also listen on this Unix socket (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Only listen on the Unix socket.
    #[arg(long, requires = "unix")]
    no_tcp: bool,
    /// Add N in-process engines.
    #[arg(long, default_value_t = 0, value_name = "N")]
    local: usize,
    #[command(flatten)]
    model: ModelArg,
    /// Settings file (TOML, field names as in docs/hub.md); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Auth token every hello must carry (also read from QNLLM_TOKEN).
    #[arg(long, env = "QNLLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Most open connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// How often workers send heartbeats, in milliseconds.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// A worker silent this long is declared dead, in milliseconds.
    #[arg(long)]
    heartbeat_timeout_ms: Option<u64>,
    /// Time a new connection has to say hello, in milliseconds.
    #[arg(long)]
    hello_timeout_ms: Option<u64>,
    /// Time a client connection may stay silent, in milliseconds.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Time shutdown waits for in-flight requests, in milliseconds.
    #[arg(long)]
    grace_ms: Option<u64>,
    /// How engines are chosen: round-robin, local-first, remote-first, performance.
    #[arg(long)]
    strategy: Option<String>,
    /// How a request runs: single, hedged, redundant.
    #[arg(long)]
    mode: Option<String>,
    /// Engines per request in redundant mode.
    #[arg(long)]
    redundancy: Option<usize>,
    /// Result cache entries (0 = off).
    #[arg(long)]
    cache: Option<usize>,
    /// Dynamic batching toward workers: most encodings per batch (0 = off).
    #[arg(long)]
    batch_max: Option<usize>,
    /// Dynamic batching: longest wait after a batch's first encoding, in microseconds.
    #[arg(long)]
    batch_delay_us: Option<u64>,
    /// When the student learns a `coordinate` consensus: majority (every one), unanimous,
    /// reliable[:SHARE], peer:SHARE or margin:M (docs/learning.md) [default: majority].
    #[arg(long, value_name = "POLICY")]
    policy: Option<String>,
    /// A teacher model for `coordinate` requests (`seed:N` or a file); repeat for more.
    #[arg(long = "teacher", value_name = "seed:N|FILE")]
    teachers: Vec<String>,
    /// Threads serving connections [default: one per core]. On a machine the hub shares
    /// with its workers and clients, fewer threads can mean lower latency.
    #[arg(long)]
    threads: Option<usize>,
    /// Poll each connection this long for the next frame before sleeping [default: 0, off].
    /// Lower latency on machines where waking a core is slow, for CPU spent waiting.
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll_us: Option<u64>,
    #[command(flatten)]
    pub(crate) front: crate::front::FrontArgs,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The hub: `HOST:PORT` or `unix:PATH`.
    #[arg(long, default_value = "127.0.0.1:9999", value_name = "ADDR")]
    connect: String,
    #[command(flatten)]
    model: ModelArg,
    /// Engine name shown by the hub [default: worker-PID].
    #[arg(long)]
    name: Option<String>,
    /// Auth token (also read from QNLLM_TOKEN).
    #[arg(long, env = "QNLLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Give up after this many failed connection attempts in a row [default: never].
    #[arg(long)]
    max_retries: Option<u32>,
    /// Requests handled at once.
    #[arg(long, default_value_t = 64)]
    max_in_flight: u32,
    /// Answer every request with one fixed result, without computing (for benchmarks).
    #[arg(long)]
    fixed: bool,
    /// Threads reading and answering the hub [default: one per core]; engine compute for
    /// concurrent requests runs on its own pool.
    #[arg(long)]
    threads: Option<usize>,
    /// Poll for the next request this long before sleeping [default: 0, off].
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    busy_poll_us: u64,
    /// Register as a teacher: the hub's coordinator asks it in every `coordinate`, and
    /// `reason` is never routed to it (docs/learning.md).
    #[arg(long)]
    teacher: bool,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
    #[command(flatten)]
    nats_log: crate::nats::NatsWorkerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The hub: `HOST:PORT` or `unix:PATH`.
    #[arg(long, default_value = "127.0.0.1:9999", value_name = "ADDR")]
    connect: String,
    /// Auth token (also read from QNLLM_TOKEN).
    #[arg(long, env = "QNLLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the raw JSON snapshot.
    #[arg(long)]
    json: bool,
    /// Refresh every SECONDS until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
    watch: Option<f64>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A runtime with `threads` worker threads; by default one per core (or
/// `TOKIO_WORKER_THREADS`).
pub(crate) fn runtime_with(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A token cancelled by SIGINT or SIGTERM.
pub(crate) fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        cancel.cancel();
    });
    token
}

pub(crate) fn serve(mut args: ServeArgs) -> Result<()> {
    let threads = args.threads;
    let front = std::mem::take(&mut args.front);
    let nats = std::mem::take(&mut args.nats);
    let local = args.local;
    let model = if local > 0 {
        Some(args.model.load()?)
    } else {
        None
    };
    let mut builder = UnifiedEngine::builder()
        .hub_config(hub_config(args)?)
        .local_engines(local);
    if let Some(model) = model {
        builder = builder.model(model);
    }
    let mut engine = builder.build()?;
    runtime_with(threads)?.block_on(async move {
        let shutdown = on_signal();
        engine.start().await?;
        let _discovery = crate::nats::discover(&nats, engine.router()).await?;
        // One line per listener on stdout, so scripts (and tests) can find the address.
        if let Some(addr) = engine.tcp_addr() {
            println!("qnllm hub listening on tcp {addr}");
        }
        if let Some(path) = engine.unix_path() {
            println!("qnllm hub listening on unix {}", path.display());
        }
        if front.enabled() {
            return crate::front::serve(engine, front, shutdown).await;
        }
        shutdown.cancelled().await;
        engine.stop().await;
        Ok(())
    })
}

/// The hub's settings: the `--config` file if any, then the flags over it.
fn hub_config(args: ServeArgs) -> Result<HubConfig> {
    let mut config = match &args.config {
        Some(path) => HubConfig::from_file(path)?,
        None => HubConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = Some(listen);
    }
    if args.no_tcp {
        config.listen = None;
    }
    config.unix = args.unix.or(config.unix);
    config.token = args.token.or(config.token);
    config.max_connections = args.max_connections.unwrap_or(config.max_connections);
    config.heartbeat_interval_ms = args
        .heartbeat_interval_ms
        .unwrap_or(config.heartbeat_interval_ms);
    config.heartbeat_timeout_ms = args
        .heartbeat_timeout_ms
        .unwrap_or(config.heartbeat_timeout_ms);
    config.hello_timeout_ms = args.hello_timeout_ms.unwrap_or(config.hello_timeout_ms);
    config.idle_timeout_ms = args.idle_timeout_ms.unwrap_or(config.idle_timeout_ms);
    config.grace_ms = args.grace_ms.unwrap_or(config.grace_ms);
    config.strategy = args.strategy.unwrap_or(config.strategy);
    config.mode = args.mode.unwrap_or(config.mode);
    config.redundancy = args.redundancy.unwrap_or(config.redundancy);
    config.cache_capacity = args.cache.unwrap_or(config.cache_capacity);
    config.batch_max = args.batch_max.unwrap_or(config.batch_max);
    config.batch_delay_us = args.batch_delay_us.unwrap_or(config.batch_delay_us);
    config.busy_poll_us = args.busy_poll_us.unwrap_or(config.busy_poll_us);
    config.policy = args.policy.unwrap_or(config.policy);
    if !args.teachers.is_empty() {
        config.teachers = args.teachers;
    }
    Ok(config)
}

pub(crate) fn worker(args: WorkerArgs) -> Result<()> {
    let model = args.model.load()?;
    let mut config = WorkerConfig::new(Endpoint::parse(&args.connect));
    if let Some(name) = args.name {
        config.name = name;
    }
    config.token = args.token;
    config.max_retries = args.max_retries;
    config.max_in_flight = args.max_in_flight;
    config.busy_poll = Duration::from_micros(args.busy_poll_us);
    if args.teacher {
        if args.nats.url().is_some() {
            bail!("--teacher needs a hub (--connect): workers on NATS serve the rotation only");
        }
        config.role = qnllm_hub::EngineRole::Teacher;
    }
    let spiking = SpikingEngine::new(model);
    let engine = if args.fixed {
        LocalBackend::new(
            config.name.clone(),
            qnllm_engine::FixedEngine::new(&spiking),
        )
    } else {
        LocalBackend::new(config.name.clone(), spiking)
    };
    if args.nats.url().is_some() {
        let (name, runtime) = (config.name, runtime_with(args.threads)?);
        return crate::nats::worker(
            &args.nats,
            &args.nats_log,
            engine,
            name,
            args.max_in_flight,
            args.fixed,
            runtime,
        );
    }
    runtime_with(args.threads)?.block_on(async move {
        let shutdown = on_signal();
        // On a runtime thread, not this one: the task that reads the socket then runs
        // where the socket's readiness is polled, with no wake of another thread per frame.
        tokio::spawn(qnllm_hub::worker::run(config, engine, shutdown))
            .await
            .context("the worker task failed")??;
        tracing::info!("worker stopped");
        Ok(())
    })
}

pub(crate) fn reason(
    addr: &str,
    token: Option<&str>,
    encodings: &[Vec<f32>],
    timeout: Duration,
    json: bool,
) -> Result<()> {
    runtime()?.block_on(async move {
        let endpoint = Endpoint::parse(addr);
        let client = Client::connect(&endpoint, "qnllm-cli", token).await?;
        let started = Instant::now();
        // Every request in flight at once; the hub matches replies by id.
        let answers =
            futures::future::join_all(encodings.iter().map(|x| client.reason(x, timeout))).await;
        let per_item = started.elapsed() / encodings.len().max(1) as u32;
        let answers = answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.with_context(|| format!("encoding {i}")))
            .collect::<Result<Vec<_>>>()?;
        output::results(&format!("hub {endpoint}"), &answers, per_item, json)
    })
}

pub(crate) fn stats(args: StatsArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let endpoint = Endpoint::parse(&args.connect);
        let client = Client::connect(&endpoint, "qnllm-stats", args.token.as_deref()).await?;
        let stop = on_signal();
        loop {
            let metrics = client.metrics(Duration::from_secs(5)).await?;
            if args.json {
                println!("{metrics}");
            } else {
                if args.watch.is_some() {
                    print!("\x1b[2J\x1b[H"); // clear the terminal between refreshes
                }
                print_stats(&endpoint, &metrics);
            }
            let Some(every) = args.watch else {
                return Ok(());
            };
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs_f64(every.max(0.1))) => {}
            }
        }
    })
}

fn print_stats(endpoint: &Endpoint, m: &serde_json::Value) {
    let r = &m["router"];
    println!(
        "hub {endpoint}   strategy {}   mode {}",
        r["strategy"].as_str().unwrap_or("?"),
        r["mode"]["mode"].as_str().unwrap_or("?")
    );
    println!(
        "{:<14} {:<7} {:<10} {:<8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "engine",
        "kind",
        "transport",
        "pool",
        "requests",
        "errors",
        "in flight",
        "p50 µs",
        "p99 µs",
        "max µs",
        "ewma µs",
        "ejected"
    );
    for e in r["engines"].as_array().into_iter().flatten() {
        println!(
            "{:<14} {:<7} {:<10} {:<8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9.0} {:>8}",
            e["name"].as_str().unwrap_or("?"),
            e["kind"].as_str().unwrap_or("?"),
            e["transport"].as_str().unwrap_or("?"),
            e["pool"].as_str().unwrap_or("?"),
            e["requests"].to_string(),
            e["errors"].to_string(),
            e["in_flight"].to_string(),
            e["p50_us"].to_string(),
            e["p99_us"].to_string(),
            e["max_us"].to_string(),
            e["ewma_us"].as_f64().unwrap_or(0.0),
            if e["ejected"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
        );
    }
    println!(
        "router: {} requests, {} retries ({} refused by the budget), {} hedges ({} won), {} ejections, {} disagreements, {} bad replies, {} batches of {} encodings",
        r["requests"], r["retries"], r["budget_exhausted"], r["hedges"], r["hedge_wins"], r["ejections"], r["disagreements"], r["bad_replies"], r["batches"], r["batch_items"]
    );
    if let Some(c) = r["cache"].as_object() {
        println!(
            "cache: {} / {} entries, {} hits, {} misses, {} evictions, hit ratio {:.1} %",
            c["entries"],
            c["capacity"],
            c["hits"],
            c["misses"],
            c["evictions"],
            c["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    let c = &m["connections"];
    println!(
        "connections: {} open of {} max, {} total, {} refused; {} frames and {} bytes in; engines joined {}, lost {}, requests failed over {}",
        c["open"], c["max"], c["total"], c["refused"], m["frames_in"], m["bytes_in"], m["engines_joined"], m["engines_lost"], m["failed_over"]
    );
}
