//! `qnllm bench`: arguments and the report table; the measuring is `qnllm_bench`'s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qnllm_bench::{BenchConfig, Group, Report};

/// The rows, for `qnllm bench --help`.
pub(crate) const ROWS: &str = "\
Every figure is printed next to a baseline measured in the same run, in the same process
layout (this process is the client; every server is a separate process), round by round
so a slow spell on a shared machine falls on all rows alike. Read the ratios, not the times.

Rows, by section (A and B are the two baselines each section's ratios are over):

hub paths over sockets (A = raw ping-pong, B = raw relay, on the same transport)
  raw TCP / Unix ping-pong      client ↔ a server answering qnllm-sized messages, no protocol
  raw TCP / Unix relay          client → relay → ping-pong server: the floor for a hop
  qnllm TCP / Unix, fixed engine   client → hub → worker; the engine returns a canned answer
  qnllm Unix, fixed, busy-poll  the same, hub, worker and client polling --busy-poll-us
  qnllm Unix, default engine    the same with the reference spiking engine
  qnllm Unix, default, batch 64 reason_batch of 64 per request
  qnllm Unix, fixed, batching   the hub's dynamic batching on
  qnllm Unix, engine in hub     the engine inside the hub process, no worker hop
C++ worker (A = the Rust worker on the same path, B = raw TCP relay; --no-cpp leaves it out)
  Rust worker, TCP, default engine   the Rust reference engine in a worker, alone on a hub
  C++ worker, TCP, default engine    bindings/cpp's qnllm-cpp-worker, seed:1, alone on a hub;
                                skipped, saying how to build it, when it is not built
KServe v2 front (A = axum echo / tonic empty service, B = A + the hub path; --no-front)
  axum echo, binary body        an axum route returning the body it got: HTTP's own cost
  tonic empty service           the protocol's gRPC service answering empty: gRPC's own cost
  HTTP JSON → hub → worker      POST /v2/models/qnllm/infer with JSON tensors
  HTTP binary → hub → worker    the same with the binary tensor data extension
  gRPC → hub → worker           ModelInfer with raw_input_contents
NATS (--nats; A = raw NATS request-reply, B = the direct hub path qnllm TCP, fixed engine)
  raw NATS request-reply        a responder answering with a result frame's bytes
  NATS → worker, fixed engine   router → NatsBackend → nats-server → qnllm worker on NATS;
                                skipped, saying what to install, without nats-server
other figures
  in-process reason_batch 64 [, N cores], in-process engine, in-process cache hit
  abusive neighbour: a quiet client alone, then beside a client flooding the hub
  saturated, 2 ms deadline: how late DeadlineExceeded comes when the hub is overloaded
  hub memory: RSS idle and with --connections idle connections

Pipelined figures use --clients connections (hub paths) or one connection or pool (HTTP,
gRPC, NATS) with --window requests in flight on each. About 40 s with the defaults.";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Round trips per latency figure, per path.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests per throughput figure, per path.
    #[arg(long, default_value_t = 50_000)]
    pipelined: usize,
    /// Requests in flight on each connection for the throughput figures.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Connections per hub path for the throughput figures (C connections × W in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Rounds to split the measurements into; each visits every path in turn, so a slow
    /// spell on a shared machine falls on all paths alike.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Start no round after this many seconds (at least one round runs).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Busy-poll time of the busy-poll path: hub, worker and client poll this long for
    /// the next frame before sleeping.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 50)]
    busy_poll_us: u64,
    /// Idle connections opened for the hub memory figure.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// Also measure a worker on NATS against raw NATS request-reply (needs nats-server on
    /// PATH; started on a free loopback port).
    #[arg(long)]
    nats: bool,
    /// The C++ worker binary [default: target/cpp/release/qnllm-cpp-worker, else
    /// target/cpp/build/qnllm-cpp-worker].
    #[arg(long, value_name = "PATH", conflicts_with = "no_cpp")]
    cpp_worker: Option<PathBuf>,
    /// Leave out the C++ worker rows.
    #[arg(long)]
    no_cpp: bool,
    /// Leave out the KServe v2 front's rows (HTTP JSON, HTTP binary, gRPC).
    #[arg(long)]
    no_front: bool,
    /// Measure only the rows of --nats, the C++ worker and the front, and the TCP
    /// baselines they are compared with; not the Unix paths, the in-process figures,
    /// the abusive neighbour, the saturated deadline or memory.
    #[arg(long)]
    no_core: bool,
    /// Write the latency distribution of every path as an SVG chart.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The hidden subcommand every server process of a run is started with.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The server's role, as the bench wrote it.
    role: String,
}

pub(crate) fn server(args: ServerArgs) -> Result<()> {
    qnllm_bench::serve(&args.role).context("bench server")
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the qnllm executable")?;
    let mut config = BenchConfig::new(exe, args.requests.max(1), args.pipelined.max(1));
    config.window = args.window.max(1);
    config.clients = args.clients.max(1);
    config.busy_poll = std::time::Duration::from_micros(args.busy_poll_us);
    config.rounds = args.rounds.max(1);
    config.duration = args
        .duration
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64);
    config.idle_connections = args.connections.max(1);
    config.front = !args.no_front;
    config.nats = args.nats;
    config.core = !args.no_core;
    config.cpp_worker = if args.no_cpp {
        None
    } else {
        Some(
            args.cpp_worker
                .unwrap_or_else(qnllm_bench::default_cpp_worker),
        )
    };
    // One thread, as the baseline's client has: the figures compare the paths, not how
    // many threads a client brings.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = ProgressBar::new(1_000).with_style(
        ProgressStyle::with_template("{bar:30} {percent:>3}% {elapsed:>4} {wide_msg}")
            .context("progress bar template")?,
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let (task_config, task_bar) = (config.clone(), bar.clone());
    let report = runtime.block_on(async move {
        qnllm_bench::run(&task_config, |what, done| {
            task_bar.set_message(what.to_string());
            task_bar.set_position((done * 1_000.0) as u64);
        })
        .await
    });
    bar.finish_and_clear();
    let report = report?;
    if let Some(path) = &args.plot {
        std::fs::write(path, qnllm_bench::svg(&report))
            .with_context(|| format!("cannot write the chart to {}", path.display()))?;
        eprintln!("latency chart written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The sections in the order they are printed; a row's section is its group.
const SECTIONS: [Group; 5] = [
    Group::Socket,
    Group::Cpp,
    Group::Front,
    Group::Nats,
    Group::Other,
];

fn print_table(report: &Report) {
    println!(
        "request {} B, reply {} B; {} interleaved rounds; every ratio is over a baseline measured in this run",
        report.request_bytes, report.reply_bytes, report.rounds
    );
    println!();
    println!("one request at a time");
    for group in SECTIONS {
        let rows: Vec<_> = report.rows.iter().filter(|r| r.group == group).collect();
        if rows.is_empty() {
            continue;
        }
        let (title, a, b) = group.legend();
        println!("-- {title}");
        println!(
            "{:<36} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>12} {:>12}",
            "path",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "CPU µs",
            format!("p50×{a}"),
            format!("p99×{a}"),
            format!("p50×{b}"),
            format!("p99×{b}"),
        );
        for row in rows {
            let l = row.latency;
            println!(
                "{:<36} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>12} {:>12}",
                row.path,
                opt(l.map(|l| l.p50_us), 1),
                opt(l.map(|l| l.p90_us), 1),
                opt(l.map(|l| l.p99_us), 1),
                opt(l.map(|l| l.p999_us), 1),
                opt(l.map(|l| l.max_us), 0),
                opt(row.cpu_us_per_request, 0),
                opt(row.p50_ratio, 2),
                opt(row.p99_ratio, 2),
                opt(row.relay_p50_ratio, 2),
                opt(row.relay_p99_ratio, 2),
            );
        }
    }
    println!();
    println!(
        "pipelined: {} connection(s) × {} requests in flight (HTTP, gRPC, NATS: one pool or connection)",
        report.clients, report.window
    );
    for group in SECTIONS {
        let rows: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.group == group && r.throughput.is_some())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let (title, a, b) = group.legend();
        println!("-- {title}");
        println!(
            "{:<36} {:>9} {:>6} {:>10} {:>10} | {:>11} {:>11}",
            "path",
            "req/s",
            "CPU µs",
            format!("req/s×{a}"),
            format!("req/s×{b}"),
            "load p50 µs",
            "load p99 µs"
        );
        for row in rows {
            let l = row.loaded;
            println!(
                "{:<36} {:>9} {:>6} {:>10} {:>10} | {:>11} {:>11}",
                row.path,
                opt(row.throughput, 0),
                opt(row.loaded_cpu_us_per_request, 1),
                opt(row.throughput_ratio, 2),
                opt(row.relay_throughput_ratio, 2),
                opt(l.map(|l| l.p50_us), 0),
                opt(l.map(|l| l.p99_us), 0),
            );
        }
    }
    println!();
    println!("raw relay: client → relay → server, the floor for a path with the hub's hop; what");
    println!("remains over it is qnllm's own software. CPU µs: CPU time per request of every");
    println!(
        "process on the path, client included (10 ms ticks over the run). busy-poll: {} µs.",
        report.busy_poll_us
    );
    if let Some(share) = report.engine_share {
        println!(
            "default engine through the hub: {:.0} % of the in-process engine's best throughput on these cores",
            share * 100.0
        );
    }
    if let Some(share) = report.engine_share_batched {
        println!(
            "  and {:.0} % with requests that are reason_batch of 64, as in process",
            share * 100.0
        );
    }
    for row in report.rows.iter().filter(|r| r.past_deadline.is_some()) {
        println!(
            "{}: DeadlineExceeded p50 {} µs, p99 {} µs after the deadline; {} results past \
             their deadline, {} within it",
            row.path,
            opt(row.latency.map(|l| l.p50_us), 0),
            opt(row.latency.map(|l| l.p99_us), 0),
            row.past_deadline.unwrap_or(0),
            row.on_time.unwrap_or(0),
        );
        let by: Vec<String> = row
            .deadline_exceeded_by
            .iter()
            .map(|(who, n)| format!("{n} by {who}"))
            .collect();
        if !by.is_empty() {
            println!("  DeadlineExceeded given: {}", by.join(", "));
        }
        if let Some(hub) = row.hub_deadlines {
            println!(
                "  on the hub's clock, to the client's writer: {} DeadlineExceeded and {} late \
                 answers held back in this row; p50 {} µs, p99 {} µs, max {} µs after the \
                 deadline over the hub's life",
                hub.exceeded, hub.held_back, hub.p50_us, hub.p99_us, hub.max_us
            );
        }
    }
    if let Some(m) = report.memory {
        println!(
            "hub memory: {:.1} MiB idle, {:.1} MiB with {} idle connections = {:.1} KiB per connection",
            m.idle_kib as f64 / 1024.0,
            m.loaded_kib as f64 / 1024.0,
            m.connections,
            m.per_connection_bytes as f64 / 1024.0
        );
    }
    for skip in &report.skipped {
        println!("skipped: {}: {}", skip.rows, skip.reason);
    }
}
