//! `--nats`: `qnllm worker` serving on a NATS cluster, and `qnllm serve` routing to the
//! workers it discovers there (docs/scaling.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use qnllm_nats::{Discovery, DiscoveryConfig, NatsOptions, WorkerConfig};
use qnllm_router::{LocalBackend, Router};
use tokio_util::sync::CancellationToken;

/// How to reach a NATS cluster; shared by `worker` and `serve`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct NatsArgs {
    /// Serve (worker) or discover workers (serve) on this NATS cluster: comma-separated URLs,
    /// `nats://HOST:4222` or `tls://HOST:4222`.
    #[arg(long, value_name = "URLS")]
    nats: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, requires = "nats")]
    nats_user: Option<String>,
    /// NATS password (also read from QNLLM_NATS_PASSWORD).
    #[arg(long, env = "QNLLM_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS token (also read from QNLLM_NATS_TOKEN).
    #[arg(long, env = "QNLLM_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// CA file to verify the NATS servers' TLS certificates; requires TLS.
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_ca: Option<PathBuf>,
    /// Allow plain nats:// to hosts other than this one (a network you trust).
    #[arg(long, requires = "nats")]
    nats_insecure: bool,
    /// Time between worker announcements, in milliseconds; hubs drop a worker silent for
    /// three of them.
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    nats_heartbeat_ms: u64,
    /// Copies of the learning update log when it is created (3 on a three-node cluster).
    #[arg(long, default_value_t = 1, value_name = "N")]
    nats_log_replicas: usize,
}

/// What only a worker on NATS takes: its model snapshots and the log trimming behind them.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct NatsWorkerArgs {
    /// Offer a snapshot of the model to the lineage's snapshot stream after every N update
    /// log entries; a late or cut-off replica starts from the newest [default: 1000; 0: never
    /// offer one].
    #[arg(long, value_name = "N", requires = "nats")]
    nats_snapshot_every: Option<u64>,
    /// After storing a snapshot at entry n, purge the update log below n - N, so it holds
    /// about snapshot-every + N entries; a replica less than N entries behind still catches
    /// up from the log, one further behind loads the snapshot. `off` keeps every entry (an
    /// engine that cannot load snapshots needs the whole log) [default: 1000].
    #[arg(long, value_name = "N|off", requires = "nats", value_parser = margin)]
    nats_log_margin: Option<Margin>,
}

/// `--nats-log-margin`: a count, or `off` (no trimming).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Margin(Option<u64>);

fn margin(text: &str) -> Result<Margin, String> {
    if text == "off" {
        return Ok(Margin(None));
    }
    text.parse()
        .map(|n| Margin(Some(n)))
        .map_err(|_| format!("`{text}` is neither a number of entries nor `off`"))
}

impl NatsWorkerArgs {
    fn apply(&self, config: &mut WorkerConfig) {
        if let Some(every) = self.nats_snapshot_every {
            config.snapshot_every = every;
        }
        if let Some(Margin(margin)) = self.nats_log_margin {
            config.trim_margin = margin;
        }
    }
}

impl NatsArgs {
    /// The cluster URL, when `--nats` was given.
    pub(crate) fn url(&self) -> Option<&str> {
        self.nats.as_deref()
    }

    fn options(&self, name: &str) -> NatsOptions {
        NatsOptions {
            url: self.nats.clone().unwrap_or_default(),
            user: self.nats_user.clone(),
            password: self
                .nats_password
                .clone()
                .filter(|_| self.nats_user.is_some()),
            token: self.nats_token.clone(),
            ca: self.nats_ca.clone(),
            insecure: self.nats_insecure,
            name: Some(name.to_string()),
            ping_interval: None,
        }
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.nats_heartbeat_ms.max(10))
    }
}

/// A name unique across hosts: the default `worker-PID` gains the host name.
fn cluster_name(name: String) -> String {
    if name != format!("worker-{}", std::process::id()) {
        return name;
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("worker-{host}-{}", std::process::id())
}

/// `qnllm worker --nats`: serves `engine` on the cluster until SIGINT or SIGTERM.
pub(crate) fn worker(
    args: &NatsArgs,
    log_args: &NatsWorkerArgs,
    engine: LocalBackend,
    name: String,
    max_in_flight: u32,
    fixed: bool,
    runtime: tokio::runtime::Runtime,
) -> Result<()> {
    let name = cluster_name(name);
    let options = args.options(&name);
    let mut config = WorkerConfig::new(name);
    config.kind = if fixed { "fixed" } else { "spiking" }.into();
    config.max_in_flight = max_in_flight;
    config.heartbeat = args.heartbeat();
    config.log_replicas = args.nats_log_replicas;
    log_args.apply(&mut config);
    runtime.block_on(async move {
        let shutdown = on_signal();
        let client = qnllm_nats::connect(&options)
            .await
            .context("cannot start the NATS worker")?;
        println!(
            "qnllm worker {} serving on nats {}",
            config.name, options.url
        );
        tokio::spawn(qnllm_nats::worker::run(client, config, engine, shutdown))
            .await
            .context("the NATS worker task failed")??;
        tracing::info!("worker stopped");
        Ok(())
    })
}

/// `qnllm serve --nats`: discovers the cluster's workers into `router`; `None` without
/// `--nats`. Discovery runs until the returned value is dropped.
pub(crate) async fn discover(args: &NatsArgs, router: &Arc<Router>) -> Result<Option<Discovery>> {
    let Some(url) = args.url() else {
        return Ok(None);
    };
    let options = args.options(&format!("qnllm-hub-{}", std::process::id()));
    let client = qnllm_nats::connect(&options)
        .await
        .context("cannot join the NATS cluster")?;
    let config = DiscoveryConfig {
        heartbeat: args.heartbeat(),
        lineage: None,
        log_replicas: Some(args.nats_log_replicas),
    };
    let discovery = Discovery::start(client, router.clone(), config).await?;
    println!("qnllm hub discovering workers on nats {url}");
    Ok(Some(discovery))
}

/// A token cancelled by SIGINT or SIGTERM.
fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        cancel.cancel();
    });
    token
}
