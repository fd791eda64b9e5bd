//! The `qnllm` command: parses arguments and calls the libraries; nothing else.

mod bench;
mod demo;
mod front;
mod input;
mod learn;
mod nats;
mod net;
mod npy;
mod output;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use qnllm_engine::{Engine, Model, Params, SpikingEngine};

/// qnllm: a deterministic neural reasoning engine.
///
/// Every engine, thread count and machine gives bit-identical results for the same model
/// and input; the digests printed let you check it.
#[derive(Debug, Parser)]
#[command(name = "qnllm", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reason over encodings with the local engine and print one result per encoding.
    ///
    /// Encodings come from --random, from --npy, or else as JSON lines on stdin (each line
    /// an array of numbers, or an object with an "encoding" array).
    Reason(ReasonArgs),
    /// Run the seven scenarios of the original design on a hub with real worker processes:
    /// reasoning, batches, redundant verification, multi-teacher learning, strategies,
    /// cache and monitoring. Exits non-zero if any scenario fails its checks.
    Demo(demo::DemoArgs),
    /// Measure every qnllm path (hub over TCP and Unix sockets, the C++ worker, the KServe
    /// v2 front over HTTP and gRPC, with --nats a worker on NATS) against baselines measured
    /// in the same run: latency one request at a time, throughput and latency with requests
    /// in flight, CPU per request; loopback only.
    #[command(after_long_help = bench::ROWS)]
    Bench(bench::BenchArgs),
    /// A server process of `bench` (baseline, hub, worker, echo); started by `bench` only.
    #[command(name = "bench-server", hide = true)]
    BenchServer(bench::ServerArgs),
    /// Describe a model: name, sizes, version and digest.
    Info(InfoArgs),
    /// Run a hub: workers and clients connect to it over TCP or a Unix socket.
    Serve(Box<net::ServeArgs>),
    /// Serve an engine to a hub; reconnects when the hub goes away, drains on SIGTERM.
    Worker(net::WorkerArgs),
    /// Show a running hub's metrics: engines, latency, router decisions, cache, connections.
    Stats(net::StatsArgs),
    /// Write a model to a safetensors file.
    Export(ExportArgs),
    /// Multi-teacher learning on the handwritten digits with real worker processes:
    /// teachers learn from labels, a replicated student from their consensus only;
    /// held-out accuracy per teacher, vote and pass, and the replicas' digests.
    Learn(learn::LearnArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ModelArg {
    /// The model: `seed:N` draws the weights from seed N; a path loads a safetensors file.
    #[arg(long, default_value = "seed:1", value_name = "seed:N|FILE")]
    model: String,
}

impl ModelArg {
    pub(crate) fn load(&self) -> Result<Model> {
        match self.model.strip_prefix("seed:") {
            Some(seed) => {
                let seed: u64 = seed.parse().with_context(|| {
                    format!("`{}`: the seed must be an unsigned integer", self.model)
                })?;
                Ok(Model::from_seed(seed, Params::default())?)
            }
            None => {
                let path = PathBuf::from(&self.model);
                if !path.exists() {
                    anyhow::bail!(
                        "model `{}` is neither seed:N nor an existing file",
                        self.model
                    );
                }
                Model::load(&path).with_context(|| format!("cannot load model `{}`", self.model))
            }
        }
    }
}

#[derive(Debug, Args)]
struct ReasonArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Reason over N reference encodings (normal, mean 0, σ 0.1) drawn from --seed.
    #[arg(long, value_name = "N", conflicts_with = "npy")]
    random: Option<usize>,
    /// Seed of the --random encodings.
    #[arg(long, default_value_t = 0, requires = "random")]
    seed: u64,
    /// Read encodings from a .npy file of float32 or float64, shape (N, D) or (D,).
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads to split the encodings over (results do not depend on it).
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
    /// Send the encodings to a hub (`HOST:PORT` or `unix:PATH`) instead of the local engine.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Auth token for --connect (also read from QNLLM_TOKEN).
    #[arg(long, env = "QNLLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Time allowed per request with --connect, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Where to write the safetensors file.
    #[arg(value_name = "FILE")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log what joins and leaves; the demo's report says it all, so it logs only trouble.
    let default_level = if matches!(
        cli.command,
        Command::Demo(_) | Command::Bench(_) | Command::Learn(_)
    ) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Reason(args) => reason(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchServer(args) => bench::server(args),
        Command::Serve(args) => net::serve(*args),
        Command::Worker(args) => net::worker(args),
        Command::Stats(args) => net::stats(args),
        Command::Learn(args) => learn::run(args),
        Command::Info(args) => {
            let engine = SpikingEngine::new(args.model.load()?);
            output::info(&engine.info(), engine.kernel(), args.json)
        }
        Command::Export(args) => {
            let model = args.model.load()?;
            model
                .save(&args.out)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            eprintln!("wrote {} (digest {})", args.out.display(), model.digest());
            Ok(())
        }
    }
}

fn reason(args: ReasonArgs) -> Result<()> {
    let engine = SpikingEngine::new(args.model.load()?).with_threads(args.threads);
    let dim = engine.info().params.inputs as usize;
    let encodings = read_encodings(&args, dim)?;
    if let Some(addr) = &args.connect {
        return net::reason(
            addr,
            args.token.as_deref(),
            &encodings,
            std::time::Duration::from_millis(args.timeout_ms),
            args.json,
        );
    }
    let refs: Vec<&[f32]> = encodings.iter().map(Vec::as_slice).collect();
    let started = std::time::Instant::now();
    let results = engine.reason_batch(&refs)?;
    let per_item = started.elapsed() / results.len() as u32;
    let info = engine.info();
    let answers: Vec<qnllm_router::Answer> = results
        .into_iter()
        .map(|reasoning| qnllm_router::Answer::new(reasoning, "local", per_item))
        .collect();
    let title = format!(
        "model {} v{} digest {}",
        info.name,
        info.version,
        info.digest.short()
    );
    output::results(&title, &answers, per_item, args.json)
}

fn read_encodings(args: &ReasonArgs, dim: usize) -> Result<Vec<Vec<f32>>> {
    let encodings = match (args.random, &args.npy) {
        (Some(n), _) => input::random(n, args.seed, dim),
        (None, Some(path)) => {
            npy::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => input::json_lines(std::io::stdin().lock())?,
    };
    if encodings.is_empty() {
        anyhow::bail!("no encodings given: use --random N, --npy FILE, or JSON lines on stdin");
    }
    Ok(encodings)
}
