//! `serve_worker`: a Python engine as a worker process of any hub, with the Rust worker's
//! heartbeats, reconnects, batching and drain on SIGTERM.

use std::time::Duration;

use pyo3::prelude::*;
use qnllm_hub::{Endpoint, WorkerConfig};
use qnllm_router::LocalBackend;
use tokio_util::sync::CancellationToken;

use crate::error::{ConnectionLost, QnllmError};
use crate::pyengine::PyEngine;

/// Serves `engine` (an object with `reason(self, encoding) -> (label, scores)`) to the hub
/// at `connect` until SIGTERM or SIGINT (then drains and leaves), or until `max_retries`
/// failed connection attempts in a row. Blocks; the GIL is released except while `reason`
/// runs.
///
/// With `teacher=True` it registers as a teacher: the hub's coordinator asks it in every
/// `coordinate`, and no `reason` is routed to it.
///
/// Raises ConnectionLost when it gives up, QnllmError when the hub refuses the worker.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one per keyword argument of the Python function
#[pyo3(signature = (engine, connect = "127.0.0.1:9999".to_string(), *, name = None, token = None, max_in_flight = 64, max_retries = None, teacher = false))]
pub(crate) fn serve_worker(
    py: Python<'_>,
    engine: &Bound<'_, PyAny>,
    connect: String,
    name: Option<String>,
    token: Option<String>,
    max_in_flight: u32,
    max_retries: Option<u32>,
    teacher: bool,
) -> PyResult<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let engine = PyEngine::new(engine)?;
    let name = name
        .or_else(|| engine.preferred_name())
        .unwrap_or_else(|| format!("python-worker-{}", std::process::id()));
    let mut config = WorkerConfig::new(Endpoint::parse(&connect));
    config.name = name.clone();
    config.token = token;
    config.max_in_flight = max_in_flight.max(1);
    config.max_retries = max_retries;
    if teacher {
        config.role = qnllm_hub::EngineRole::Teacher;
    }
    let backend = LocalBackend::new(name, engine);
    let runtime = crate::runtime::new("worker", 2)?;
    let outcome = py.detach(|| {
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let signals = tokio::spawn(async move {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                stop.cancel();
            });
            let outcome = qnllm_hub::worker::run(config, backend, shutdown).await;
            signals.abort();
            outcome
        })
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome.map_err(|e| match e {
        qnllm_hub::WorkerError::GaveUp { .. } => ConnectionLost::new_err(e.to_string()),
        other => QnllmError::new_err(other.to_string()),
    })
}
