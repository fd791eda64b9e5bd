//! `Client`: a connection to a hub another process runs (`qnllm.connect("127.0.0.1:9999")`).

use std::sync::RwLock;
use std::time::Duration;

use pyo3::prelude::*;
use qnllm_hub::Endpoint;

use crate::convert;
use crate::error::{self, ConfigError, ConnectionLost};
use crate::result::Reasoning;

#[derive(Debug)]
struct Live {
    runtime: tokio::runtime::Runtime,
    client: qnllm_hub::Client,
}

/// A client of a running hub: `reason`, `reason_batch`, `learn`, `coordinate`, `metrics`,
/// `close`.
#[pyclass(module = "qnllm._native", subclass, frozen, name = "Client")]
#[derive(Debug)]
pub(crate) struct Client {
    live: RwLock<Option<Live>>,
    timeout: Duration,
    address: String,
}

impl Client {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Live) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let live = self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match live.as_ref() {
                Some(live) => f(live),
                None => Err(ConnectionLost::new_err("this client was closed")),
            }
        })
    }
}

#[pymethods]
impl Client {
    /// Connects to the hub at `address` (`host:port` or `unix:PATH`).
    #[new]
    #[pyo3(signature = (address = "127.0.0.1:9999".to_string(), *, token = None, timeout = 5.0, name = "python-client".to_string()))]
    fn new(
        py: Python<'_>,
        address: String,
        token: Option<String>,
        timeout: f64,
        name: String,
    ) -> PyResult<Client> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(ConfigError::new_err(format!(
                "timeout must be a positive number of seconds, got {timeout}"
            )));
        }
        let runtime = crate::runtime::new("client", 1)?;
        let endpoint = Endpoint::parse(&address);
        let client = py.detach(|| {
            runtime.block_on(qnllm_hub::Client::connect(
                &endpoint,
                &name,
                token.as_deref(),
            ))
        });
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                runtime.shutdown_timeout(Duration::from_secs(1));
                return Err(error::from_client(e));
            }
        };
        Ok(Client {
            live: RwLock::new(Some(Live { runtime, client })),
            timeout: Duration::from_secs_f64(timeout),
            address,
        })
    }

    /// The hub's address.
    #[getter]
    fn address(&self) -> String {
        self.address.clone()
    }

    /// Reasons over one encoding through the hub.
    fn reason(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>) -> PyResult<Reasoning> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, x.len(), None)?;
        self.with(py, |live| {
            live.runtime
                .block_on(live.client.reason(&x, self.timeout))
                .map(Reasoning::from_answer)
                .map_err(error::from_client)
        })
    }

    /// Reasons over a batch `[N, D]` through the hub; results in input order.
    fn reason_batch(
        &self,
        py: Python<'_>,
        encodings: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Reasoning>> {
        let (values, dim) = convert::batch(encodings)?;
        convert::validate_batch(&values, dim, dim)?;
        let rows: Vec<Vec<f32>> = values.chunks(dim).map(<[f32]>::to_vec).collect();
        self.with(py, |live| {
            live.runtime
                .block_on(live.client.reason_batch(&rows, self.timeout))
                .map(|answers| answers.into_iter().map(Reasoning::from_answer).collect())
                .map_err(error::from_client)
        })
    }

    /// Teaches `label` for `encoding` to the hub's student replicas, as an update to the
    /// model at `base_version`; the new model state as JSON text (`Client.learn` parses it).
    #[pyo3(signature = (encoding, label, base_version))]
    fn learn_json(
        &self,
        py: Python<'_>,
        encoding: &Bound<'_, PyAny>,
        label: u32,
        base_version: u64,
    ) -> PyResult<String> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, x.len(), None)?;
        self.with(py, |live| {
            let state = live
                .runtime
                .block_on(live.client.learn(&x, label, base_version, self.timeout))
                .map_err(error::from_client)?;
            serde_json::to_string(&state).map_err(|e| error::QnllmError::new_err(e.to_string()))
        })
    }

    /// Asks `teachers` of the hub's teachers (0: all) for their label of `encoding`, the
    /// student learning the consensus when `learn`; the outcome as JSON text.
    #[pyo3(signature = (encoding, teachers, learn))]
    fn coordinate_json(
        &self,
        py: Python<'_>,
        encoding: &Bound<'_, PyAny>,
        teachers: u8,
        learn: bool,
    ) -> PyResult<String> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, x.len(), None)?;
        self.with(py, |live| {
            let outcome = live
                .runtime
                .block_on(live.client.coordinate(&x, teachers, learn, self.timeout))
                .map_err(error::from_client)?;
            serde_json::to_string(&outcome).map_err(|e| error::QnllmError::new_err(e.to_string()))
        })
    }

    /// The hub's metrics as JSON text; `Client.metrics()` in Python parses it.
    fn metrics_json(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |live| {
            let value = live
                .runtime
                .block_on(live.client.metrics(self.timeout))
                .map_err(error::from_client)?;
            Ok(value.to_string())
        })
    }

    /// For bench.py: `n` requests by the Rust client on this connection, timed one by one
    /// in Rust (nanoseconds each), the baseline the Python call is compared with.
    fn _bench_reason(
        &self,
        py: Python<'_>,
        encoding: &Bound<'_, PyAny>,
        n: usize,
    ) -> PyResult<Vec<u64>> {
        let x = convert::encoding(encoding)?;
        self.with(py, |live| {
            live.runtime.block_on(async {
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let started = std::time::Instant::now();
                    live.client
                        .reason(&x, self.timeout)
                        .await
                        .map_err(error::from_client)?;
                    times.push(started.elapsed().as_nanos() as u64);
                }
                Ok(times)
            })
        })
    }

    /// Closes the connection and its thread. Closing twice does nothing.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let taken = self
                .live
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(Live { runtime, client }) = taken {
                drop(client);
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        });
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }
}
