//! `qnllm bench`: arguments and the report table; the measuring is `qnllm_bench`'s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qnllm_bench::{BenchConfig, Report};

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
    /// Connections per path for the throughput figures (C connections × W in flight).
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
    /// Write the latency distribution of every path as an SVG chart.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BaselineArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    unix: Option<PathBuf>,
    #[arg(long)]
    request_bytes: usize,
    #[arg(long)]
    reply_bytes: usize,
    /// Relay each request to this server (`HOST:PORT` or `unix:PATH`) instead of answering.
    #[arg(long)]
    relay_to: Option<String>,
}

pub(crate) fn baseline(args: BaselineArgs) -> Result<()> {
    qnllm_bench::serve_baseline(
        &args.listen,
        args.unix.as_deref(),
        args.request_bytes,
        args.reply_bytes,
        &args
            .relay_to
            .map_or(qnllm_bench::Baseline::Pong, qnllm_bench::Baseline::Relay),
    )
    .context("cannot serve the baseline")
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let config = BenchConfig {
        exe: std::env::current_exe().context("cannot find the qnllm executable")?,
        requests: args.requests.max(1),
        pipelined: args.pipelined.max(1),
        window: args.window.max(1),
        clients: args.clients.max(1),
        busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
        rounds: args.rounds.max(1),
        duration: args
            .duration
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(std::time::Duration::from_secs_f64),
        dir: std::env::temp_dir().join(format!("qnllm-bench-{}", std::process::id())),
        idle_connections: args.connections.max(1),
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
    let _ = std::fs::remove_dir_all(&config.dir);
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

fn print_table(report: &Report) {
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    println!(
        "request {} B, reply {} B; {} interleaved rounds; ratios are over the raw ping-pong (×pp) and the raw relay (×relay) measured in this run",
        report.request_bytes, report.reply_bytes, report.rounds
    );
    println!();
    println!("one request at a time");
    println!(
        "{:<33} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} | {:>6} {:>6} {:>9} {:>9}",
        "path",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "CPU µs",
        "p50×pp",
        "p99×pp",
        "p50×relay",
        "p99×relay"
    );
    for row in &report.rows {
        let l = row.latency;
        println!(
            "{:<33} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} | {:>6} {:>6} {:>9} {:>9}",
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
    println!();
    println!(
        "pipelined: {} connection(s) × {} requests in flight",
        report.clients, report.window
    );
    println!(
        "{:<33} {:>9} {:>6} {:>8} {:>11} | {:>11} {:>11}",
        "path", "req/s", "CPU µs", "req/s×pp", "req/s×relay", "load p50 µs", "load p99 µs"
    );
    for row in report.rows.iter().filter(|r| r.throughput.is_some()) {
        let l = row.loaded;
        println!(
            "{:<33} {:>9} {:>6} {:>8} {:>11} | {:>11} {:>11}",
            row.path,
            opt(row.throughput, 0),
            opt(row.loaded_cpu_us_per_request, 1),
            opt(row.throughput_ratio, 2),
            opt(row.relay_throughput_ratio, 2),
            opt(l.map(|l| l.p50_us), 0),
            opt(l.map(|l| l.p99_us), 0),
        );
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
}
