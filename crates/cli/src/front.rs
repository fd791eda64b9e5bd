//! `serve --http/--grpc`: the hub through the facade with the KServe v2 front beside it.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use qnllm_hub::HubConfig;

use crate::ModelArg;

#[derive(Debug, Args)]
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

pub(crate) fn serve(
    config: HubConfig,
    local: usize,
    model: &ModelArg,
    threads: Option<usize>,
    args: FrontArgs,
) -> Result<()> {
    let mut builder = qnllm::UnifiedEngine::builder()
        .hub_config(config)
        .local_engines(local);
    if local > 0 {
        builder = builder.model(model.load()?);
    }
    crate::net::runtime_with(threads)?.block_on(async move {
        let shutdown = crate::net::on_signal();
        let mut engine = builder.build()?;
        engine.start().await?;
        if let Some(addr) = engine.tcp_addr() {
            println!("qnllm hub listening on tcp {addr}");
        }
        if let Some(path) = engine.unix_path() {
            println!("qnllm hub listening on unix {}", path.display());
        }
        let engine = Arc::new(engine);
        let front_config = qnllm_front::FrontConfig {
            http: args.http,
            grpc: args.grpc,
            token: args.http_token,
            ..qnllm_front::FrontConfig::default()
        };
        let front = qnllm_front::start(engine.clone(), front_config, shutdown.clone())
            .await
            .context("cannot start the HTTP/gRPC front")?;
        if let Some(addr) = front.http {
            println!("qnllm http listening on {addr}");
        }
        if let Some(addr) = front.grpc {
            println!("qnllm grpc listening on {addr}");
        }
        // The front drains first (not ready, then in-flight requests), then the hub stops.
        front.wait().await;
        if let Ok(engine) = Arc::try_unwrap(engine) {
            engine.stop().await;
        }
        Ok(())
    })
}
