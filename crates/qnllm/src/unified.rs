//! `UnifiedEngine`: the router and the embedded hub as one object.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qnllm_hub::{Hub, RunningHub};
use qnllm_router::{
    Answer, Coordination, CoordinationMetrics, Coordinator, LocalBackend, ModelState, Router,
    RouterMetrics,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::builder::Builder;
use crate::error::Error;
use crate::front::FrontSettings;

/// Everything the engine can report.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Router: strategy, per-engine latency and health, retries, cache.
    pub router: RouterMetrics,
    /// Hub: connections, frames, engines joined and lost.
    pub hub: serde_json::Value,
    /// Multi-teacher figures, once `coordinate` has run.
    pub coordination: Option<CoordinationMetrics>,
}

/// A router plus an embedded hub, started and stopped as one.
#[derive(Debug)]
pub struct UnifiedEngine {
    hub: Hub,
    locals: Vec<LocalBackend>,
    coordinated: std::sync::atomic::AtomicBool,
    deadline: Duration,
    stop: CancellationToken,
    running: Option<RunningHub>,
    front: FrontSettings,
}

impl UnifiedEngine {
    /// Settings with safe defaults: one local engine, hub on 127.0.0.1:9999, round-robin.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn new(
        hub: Hub,
        locals: Vec<LocalBackend>,
        deadline: Duration,
        front: FrontSettings,
    ) -> UnifiedEngine {
        UnifiedEngine {
            front,
            hub,
            locals,
            coordinated: std::sync::atomic::AtomicBool::new(false),
            deadline,
            stop: CancellationToken::new(),
            running: None,
        }
    }

    /// Starts the embedded hub so workers can join. Starting twice does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Hub`] when an address cannot be bound.
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.running.is_none() {
            self.running = Some(self.hub.clone().start(self.stop.clone()).await?);
        }
        Ok(())
    }

    /// Where the web front should listen, as the builder was told ([`Builder::http`],
    /// [`Builder::grpc`]); `qnllm-front` starts it.
    pub fn front_settings(&self) -> &FrontSettings {
        &self.front
    }

    /// The hub's TCP address, once started.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.tcp)
    }

    /// The hub's Unix socket, once started.
    pub fn unix_path(&self) -> Option<PathBuf> {
        self.running.as_ref().and_then(|r| r.unix.clone())
    }

    /// The router, to change strategy or mode at run time or read its figures.
    pub fn router(&self) -> &Arc<Router> {
        self.hub.router()
    }

    /// Coalesces concurrent single requests to each worker into batch requests (`Some`),
    /// or sends each on its own (`None`).
    pub fn set_dynamic_batching(&self, policy: Option<qnllm_router::BatchPolicy>) {
        self.hub.set_dynamic_batching(policy);
    }

    /// The one coordinator (the embedded hub's): its teachers, from the builder and the
    /// config file, and its policy; hub clients' `learn` goes through it too.
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        self.hub.coordinator()
    }

    /// The in-process engines.
    pub fn locals(&self) -> &[LocalBackend] {
        &self.locals
    }

    /// Reasons over one encoding.
    ///
    /// # Errors
    ///
    /// [`Error::Request`]: bad input (naming the index), no engine, deadline exceeded.
    pub async fn reason(&self, encoding: &[f32]) -> Result<Answer, Error> {
        Ok(self.router().reason(encoding, self.deadline).await?)
    }

    /// Reasons over several encodings of one length; answers in input order.
    ///
    /// # Errors
    ///
    /// As [`UnifiedEngine::reason`], or [`Error::RaggedBatch`].
    pub async fn reason_batch(&self, encodings: &[Vec<f32>]) -> Result<Vec<Answer>, Error> {
        let dim = encodings.first().map_or(0, Vec::len);
        if dim == 0 || encodings.iter().any(|e| e.len() != dim) {
            return Err(Error::RaggedBatch);
        }
        Ok(self
            .router()
            .reason_batch(&encodings.concat(), dim, self.deadline)
            .await?)
    }

    /// Asks every teacher about `encoding`, reaches a consensus, and with `learn` teaches it
    /// to every engine in rotation (local and remote), in one order for all.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::coordinate`].
    pub async fn coordinate(&self, encoding: &[f32], learn: bool) -> Result<Coordination, Error> {
        self.coordinated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .coordinator()
            .coordinate(encoding, 0, learn, self.deadline)
            .await?)
    }

    /// Teaches `label` for `encoding` to every engine in rotation, in one order for all.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::learn`].
    pub async fn learn(&self, encoding: &[f32], label: u32) -> Result<Option<ModelState>, Error> {
        Ok(self
            .coordinator()
            .learn(encoding, label, self.deadline)
            .await?)
    }

    /// The hub's events (topic `engines`: joined, left) from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<(String, serde_json::Value)> {
        self.hub.events()
    }

    /// The deadline each request gets unless it asks for less.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A snapshot of every figure.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            router: self.router().metrics(),
            hub: self.hub.metrics(),
            coordination: self
                .coordinated
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| self.coordinator().metrics()),
        }
    }

    /// Stops the hub: no new connections, in-flight work finishes, workers are told
    /// goodbye.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }
}

impl Drop for UnifiedEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
