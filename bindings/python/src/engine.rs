//! `Engine`: the native half of `qnllm.UnifiedNeuralEngine`, a `qnllm::UnifiedEngine` on a
//! runtime of its own. Every call that reaches Rust releases the GIL.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use qnllm::{Model, Params, UnifiedEngine};
use qnllm_hub::HubConfig;
use tokio_util::sync::CancellationToken;

use crate::convert;
use crate::error::{self, ConfigError, EngineStopped, HubError, ModelError};
use crate::pyengine::{PyBackend, PyEngine};
use crate::result::Reasoning;
use crate::strategy;

/// A model from `seed:N` or a safetensors path.
pub(crate) fn load_model(spec: &str) -> PyResult<Model> {
    match spec.strip_prefix("seed:") {
        Some(seed) => {
            let seed: u64 = seed.parse().map_err(|_| {
                ConfigError::new_err(format!("`{spec}`: the seed must be an unsigned integer"))
            })?;
            Model::from_seed(seed, Params::default())
                .map_err(|e| ModelError::new_err(e.to_string()))
        }
        None => {
            let path = PathBuf::from(spec);
            if !path.exists() {
                return Err(ConfigError::new_err(format!(
                    "model `{spec}` is neither seed:N nor an existing file"
                )));
            }
            Model::load(&path).map_err(|e| ModelError::new_err(e.to_string()))
        }
    }
}

/// What lives until `stop`: the runtime, the engine on it, and the web front once started.
#[derive(Debug)]
struct Live {
    runtime: tokio::runtime::Runtime,
    /// Shared with the front while it runs; only this struct holds it otherwise.
    engine: Arc<UnifiedEngine>,
    front: Option<Front>,
}

/// The running KServe v2 front and what stops it.
#[derive(Debug)]
struct Front {
    stop: CancellationToken,
    running: qnllm_front::RunningFront,
    http: Option<std::net::SocketAddr>,
    grpc: Option<std::net::SocketAddr>,
}

/// The native engine; `qnllm.UnifiedNeuralEngine` is its Python face.
#[pyclass(module = "qnllm._native", subclass, frozen, name = "Engine")]
#[derive(Debug)]
pub(crate) struct NativeEngine {
    live: RwLock<Option<Live>>,
    hub: std::sync::Mutex<HubConfig>,
    dim: usize,
    deadline: Duration,
}

impl NativeEngine {
    /// Runs `f` on the live engine with the GIL released.
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
                None => Err(EngineStopped::new_err(
                    "this engine was stopped; create a new UnifiedNeuralEngine",
                )),
            }
        })
    }

    fn front_addr(&self, pick: impl Fn(&Front) -> Option<std::net::SocketAddr>) -> Option<String> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|live| live.front.as_ref())
            .and_then(pick)
            .map(|a| a.to_string())
    }

    fn hub_config(&self) -> std::sync::MutexGuard<'_, HubConfig> {
        self.hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[pymethods]
impl NativeEngine {
    #[new]
    #[pyo3(signature = (
        *, listen = Some("127.0.0.1:9999".to_string()), unix = None, token = None,
        local_engines = 1, model = "seed:1".to_string(), strategy = "round_robin".to_string(),
        redundancy = 3, cache_size = 1000, cache_results = false, timeout = 5.0,
        teachers = Vec::new(), engines = None, heartbeat_ms = None, threads = None,
        http = None, grpc = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        listen: Option<String>,
        unix: Option<PathBuf>,
        token: Option<String>,
        local_engines: usize,
        model: String,
        strategy: String,
        redundancy: usize,
        cache_size: usize,
        cache_results: bool,
        timeout: f64,
        teachers: Vec<String>,
        engines: Option<Bound<'_, PyList>>,
        heartbeat_ms: Option<u64>,
        threads: Option<usize>,
        http: Option<String>,
        grpc: Option<String>,
    ) -> PyResult<NativeEngine> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(ConfigError::new_err(format!(
                "timeout must be a positive number of seconds, got {timeout}"
            )));
        }
        let mut hub = HubConfig {
            listen,
            unix,
            token,
            redundancy,
            cache_capacity: cache_size,
            ..HubConfig::default()
        };
        if let Some(ms) = heartbeat_ms {
            hub.heartbeat_interval_ms = ms;
            hub.heartbeat_timeout_ms = ms * 3;
        }
        strategy::apply(&mut hub, &strategy)?;
        hub.validate()
            .map_err(|e| ConfigError::new_err(e.to_string()))?;
        let model = load_model(&model)?;
        let dim = model.params().inputs as usize;
        let mut builder = UnifiedEngine::builder()
            .hub_config(hub.clone())
            .local_engines(local_engines)
            .model(model)
            .deadline(Duration::from_secs_f64(timeout));
        for spec in &teachers {
            builder = builder.teacher(load_model(spec)?);
        }
        if let Some(addr) = http {
            builder = builder.http(addr);
        }
        if let Some(addr) = grpc {
            builder = builder.grpc(addr);
        }
        // The hub's token guards the front too: one secret for every listener.
        if let Some(token) = &hub.token {
            builder = builder.front_token(token.clone());
        }
        let mut python = Vec::new();
        if let Some(engines) = engines {
            for (i, object) in engines.iter().enumerate() {
                let engine = PyEngine::new(&object)?;
                let name = engine
                    .preferred_name()
                    .unwrap_or_else(|| format!("python-{i}"));
                python.push(Arc::new(PyBackend::new(name, engine)));
            }
        }
        let runtime =
            crate::runtime::new("engine", threads.unwrap_or_else(crate::runtime::threads))?;
        let engine = {
            let _entered = runtime.enter();
            builder.build().map_err(error::from_facade)?
        };
        for backend in python {
            engine.router().add(backend);
        }
        engine.router().set_cache_enabled(cache_results);
        Ok(NativeEngine {
            live: RwLock::new(Some(Live {
                runtime,
                engine: Arc::new(engine),
                front: None,
            })),
            hub: std::sync::Mutex::new(hub),
            dim,
            deadline: Duration::from_secs_f64(timeout),
        })
    }

    /// Starts the embedded hub so worker processes can join (`127.0.0.1:9999` unless
    /// `listen` says otherwise), and the KServe v2 front when `http` or `grpc` is set.
    /// Starting twice does nothing.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let mut live = self
                .live
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(live) = live.as_mut() else {
                return Err(EngineStopped::new_err(
                    "this engine was stopped; create a new UnifiedNeuralEngine",
                ));
            };
            if live.front.is_some() {
                return Ok(());
            }
            // Nothing else holds the engine before the front starts.
            if let Some(engine) = Arc::get_mut(&mut live.engine) {
                live.runtime
                    .block_on(engine.start())
                    .map_err(error::from_facade)?;
            }
            if live.engine.front_settings().enabled() {
                let stop = CancellationToken::new();
                let config = qnllm_front::FrontConfig::for_engine(&live.engine);
                let running = live
                    .runtime
                    .block_on(qnllm_front::start(
                        live.engine.clone(),
                        config,
                        stop.clone(),
                    ))
                    .map_err(|e| HubError::new_err(e.to_string()))?;
                live.front = Some(Front {
                    stop,
                    http: running.http,
                    grpc: running.grpc,
                    running,
                });
            }
            Ok(())
        })
    }

    /// Stops the hub (workers are told goodbye, work in flight finishes within `grace`
    /// seconds) and the engine's threads. Stopping twice does nothing.
    #[pyo3(signature = (grace = 5.0))]
    fn stop(&self, py: Python<'_>, grace: f64) {
        py.detach(|| {
            let taken = self
                .live
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(Live {
                runtime,
                engine,
                front,
            }) = taken
            {
                let grace = Duration::from_secs_f64(grace.max(0.0));
                // The front first (not-ready, then drain), so it lets go of the engine.
                if let Some(front) = front {
                    front.stop.cancel();
                    let _ = runtime.block_on(async {
                        tokio::time::timeout(grace, front.running.wait()).await
                    });
                }
                if let Ok(engine) = Arc::try_unwrap(engine) {
                    let _ = runtime
                        .block_on(async { tokio::time::timeout(grace, engine.stop()).await });
                }
                runtime.shutdown_timeout(grace);
            }
        });
    }

    /// Whether `stop` has not run yet.
    #[getter]
    fn running(&self) -> bool {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// The hub's TCP address as `host:port`, once started.
    #[getter]
    fn address(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |live| Ok(live.engine.tcp_addr().map(|a| a.to_string())))
    }

    /// The KServe v2 HTTP front's address as `host:port`, once started with `http`.
    #[getter]
    fn http_address(&self) -> Option<String> {
        self.front_addr(|f| f.http)
    }

    /// The KServe v2 gRPC front's address as `host:port`, once started with `grpc`.
    #[getter]
    fn grpc_address(&self) -> Option<String> {
        self.front_addr(|f| f.grpc)
    }

    /// Values per encoding the model takes.
    #[getter]
    fn input_size(&self) -> usize {
        self.dim
    }

    /// Reasons over one encoding (768 numbers: a float32 array is read as is; float64
    /// arrays and lists are converted once).
    ///
    /// Raises InvalidInput (with `index`), NoEngineAvailable, DeadlineExceeded or
    /// Disagreement.
    fn reason(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>) -> PyResult<Reasoning> {
        let x = convert::encoding(encoding)?;
        // Checked here, not only by the engines, so a bad input is InvalidInput naming the
        // index even when no engine is registered.
        convert::validate(&x, self.dim, None)?;
        self.with(py, |live| {
            crate::runtime::run(&live.runtime, live.engine.reason(&x))
                .map(Reasoning::from_answer)
                .map_err(error::from_facade)
        })
    }

    /// Reasons over a batch `[N, 768]`; results in input order.
    fn reason_batch(
        &self,
        py: Python<'_>,
        encodings: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Reasoning>> {
        let (values, dim) = convert::batch(encodings)?;
        convert::validate_batch(&values, dim, self.dim)?;
        self.with(py, |live| {
            live.runtime
                .block_on(
                    live.engine
                        .router()
                        .reason_batch(&values, dim, self.deadline),
                )
                .map(|answers| answers.into_iter().map(Reasoning::from_answer).collect())
                .map_err(error::from_router)
        })
    }

    /// Multi-teacher coordination: every teacher votes on `encoding`; with `learn`, the
    /// consensus is taught to every engine in rotation. Returns the outcome as a dict.
    #[pyo3(signature = (encoding, learn = true))]
    fn coordinate(
        &self,
        py: Python<'_>,
        encoding: &Bound<'_, PyAny>,
        learn: bool,
    ) -> PyResult<String> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, self.dim, None)?;
        self.with(py, |live| {
            let outcome = live
                .runtime
                .block_on(live.engine.coordinate(&x, learn))
                .map_err(error::from_facade)?;
            serde_json::to_string(&outcome).map_err(|e| error::QnllmError::new_err(e.to_string()))
        })
    }

    /// Teaches `label` for `encoding` to every engine in rotation; returns the new model
    /// state as JSON text (`None` when nothing changed).
    fn learn(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>, label: u32) -> PyResult<String> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, self.dim, None)?;
        self.with(py, |live| {
            let state = live
                .runtime
                .block_on(live.engine.learn(&x, label))
                .map_err(error::from_facade)?;
            serde_json::to_string(&state).map_err(|e| error::QnllmError::new_err(e.to_string()))
        })
    }

    /// Every figure as JSON text; `get_metrics()` parses it.
    fn metrics_json(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |live| {
            serde_json::to_string(&live.engine.metrics())
                .map_err(|e| error::QnllmError::new_err(e.to_string()))
        })
    }

    /// Changes the strategy (or mode: `redundant`, `hedged`) at run time.
    fn set_strategy(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let mut hub = self.hub_config().clone();
        strategy::apply(&mut hub, name)?;
        let config = hub
            .router_config()
            .map_err(|e| ConfigError::new_err(e.to_string()))?;
        self.with(py, |live| {
            live.engine
                .router()
                .set_policy(config.strategy, config.mode);
            Ok(())
        })?;
        *self.hub_config() = hub;
        Ok(())
    }

    /// The strategy and mode in force, as `(strategy, mode)`.
    #[getter]
    fn policy(&self) -> (String, String) {
        let hub = self.hub_config();
        (hub.strategy.clone(), hub.mode.clone())
    }

    /// For bench.py: `n` calls of the Rust `reason` on this engine, timed one by one in
    /// Rust (nanoseconds each), the baseline the Python call is compared with.
    fn _bench_reason(
        &self,
        py: Python<'_>,
        encoding: &Bound<'_, PyAny>,
        n: usize,
    ) -> PyResult<Vec<u64>> {
        let x = convert::encoding(encoding)?;
        convert::validate(&x, self.dim, None)?;
        self.with(py, |live| {
            live.runtime.block_on(async {
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let started = std::time::Instant::now();
                    live.engine.reason(&x).await.map_err(error::from_facade)?;
                    times.push(started.elapsed().as_nanos() as u64);
                }
                Ok(times)
            })
        })
    }

    /// Turns the result cache on or off at run time (entries are kept).
    fn set_cache(&self, py: Python<'_>, enabled: bool) -> PyResult<()> {
        self.with(py, |live| {
            live.engine.router().set_cache_enabled(enabled);
            Ok(())
        })
    }

    /// Empties the result cache.
    fn clear_cache(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |live| {
            live.engine.router().clear_cache();
            Ok(())
        })
    }
}
