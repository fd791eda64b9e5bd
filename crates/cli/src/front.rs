//! `serve --http/--grpc`: the KServe v2 front beside the hub, on the same `UnifiedEngine`.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use qnllm::UnifiedEngine;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Args)]
pub(crate) struct FrontArgs {
    /// Serve KServe v2 over HTTP, /metrics and the dashboard on ADDR (e.g. 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve KServe v2 over gRPC on ADDR (e.g. 127.0.0.1:8001).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// Bearer token HTTP and gRPC clients must send; required off loopback (also read from
    /// QNLLM_HTTP_TOKEN).
    #[arg(long, env = "QNLLM_HTTP_TOKEN", hide_env_values = true)]
    http_token: Option<String>,
}

impl FrontArgs {
    pub(crate) fn enabled(&self) -> bool {
        self.http.is_some() || self.grpc.is_some()
    }
}

/// Serves the front for `engine` (already started) until `shutdown`; then the front drains
/// first (not ready, then in-flight requests), and the hub stops after it.
pub(crate) async fn serve(
    engine: UnifiedEngine,
    args: FrontArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let engine = Arc::new(engine);
    let front_config = qnllm_front::FrontConfig {
        http: args.http,
        grpc: args.grpc,
        token: args.http_token,
        ..qnllm_front::FrontConfig::default()
    };
    let front = qnllm_front::start(engine.clone(), front_config, shutdown)
        .await
        .context("cannot start the HTTP/gRPC front")?;
    if let Some(addr) = front.http {
        println!("qnllm http listening on {addr}");
    }
    if let Some(addr) = front.grpc {
        println!("qnllm grpc listening on {addr}");
    }
    front.wait().await;
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.stop().await;
    }
    Ok(())
}
