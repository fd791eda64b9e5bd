//! `qnllm bench`: arguments and the report table; the measuring is `qnllm_bench`'s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use qnllm_bench::{BenchConfig, Report};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Round trips per latency figure.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Requests per throughput figure.
    #[arg(long, default_value_t = 20_000)]
    pipelined: usize,
    /// Requests in flight for the throughput figures.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Idle connections opened for the hub memory figure.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
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

pub(crate) fn echo(args: EchoArgs) -> Result<()> {
    qnllm_bench::serve_echo(
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
        dir: std::env::temp_dir().join(format!("qnllm-bench-{}", std::process::id())),
        idle_connections: args.connections.max(1),
    };
    // One thread, as the baseline's client has: the figures compare the paths, not how
    // many threads a client brings.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let (task_config, task_bar) = (config.clone(), bar.clone());
    let report = runtime.block_on(async move {
        qnllm_bench::run(&task_config, |what| task_bar.set_message(what.to_string())).await
    });
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&config.dir);
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "request {} B, reply {} B; latency one request at a time; throughput with {} in flight on one connection",
        report.request_bytes, report.reply_bytes, report.window
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8}",
        "path",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "req/s",
        "p50 ×",
        "p99 ×",
        "req/s ×"
    );
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    for row in &report.rows {
        let l = row.latency;
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8}",
            row.path,
            opt(l.map(|l| l.p50_us), 1),
            opt(l.map(|l| l.p90_us), 1),
            opt(l.map(|l| l.p99_us), 1),
            opt(l.map(|l| l.p999_us), 1),
            opt(l.map(|l| l.max_us), 0),
            opt(row.throughput, 0),
            opt(row.p50_ratio, 2),
            opt(row.p99_ratio, 2),
            opt(row.throughput_ratio, 2),
        );
    }
    println!("ratios: each qnllm path over the raw ping-pong on the same transport, measured in this run");
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
