//! What every request handler shares: the engine, the settings, readiness, limits and
//! metrics, and the one protocol-neutral inference path both HTTP and gRPC take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm::{Answer, UnifiedEngine};
use qnllm_router::strategy::{Performance, Preferred, RoundRobin, Strategy};
use qnllm_router::RequestOptions;
use tokio::sync::Semaphore;

use crate::error::FrontError;
use crate::metrics::FrontMetrics;
use crate::tensor::{self, Encodings, Output};
use crate::{events::EventLog, FrontConfig};

/// The model as the protocol shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelView {
    pub(crate) name: String,
    /// The model version of the engines in rotation; `None` while there is none.
    pub(crate) version: Option<u64>,
    pub(crate) digest: Option<String>,
    pub(crate) dim: usize,
    pub(crate) labels: u32,
}

/// Per-request settings from the request's parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Params {
    /// Microseconds, as in the protocol's `timeout` parameter.
    pub(crate) timeout: Option<Duration>,
    pub(crate) no_cache: bool,
    pub(crate) strategy: Option<String>,
}

/// Share of requests a `local-first` or `remote-first` request strategy gives its side, as
/// the hub's default.
const PREFER_SHARE: f64 = 0.8;

/// Strategy names a request may ask for.
pub(crate) const STRATEGIES: [&str; 4] =
    ["round-robin", "local-first", "remote-first", "performance"];

impl Params {
    /// Checks one named parameter; unknown names are left to the caller to ignore.
    pub(crate) fn set_timeout_us(&mut self, us: i64) -> Result<(), FrontError> {
        if us <= 0 {
            return Err(FrontError::BadRequest(format!(
                "parameter timeout must be a positive number of microseconds, got {us}"
            )));
        }
        self.timeout = Some(Duration::from_micros(us.unsigned_abs()));
        Ok(())
    }

    pub(crate) fn set_strategy(&mut self, name: &str) -> Result<(), FrontError> {
        if !STRATEGIES.contains(&name) {
            return Err(FrontError::BadRequest(format!(
                "parameter strategy `{name}` is unknown: use one of {}",
                STRATEGIES.join(", ")
            )));
        }
        self.strategy = Some(name.to_string());
        Ok(())
    }
}

/// The answers to one request, with what is needed to lay out its outputs.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) model: ModelView,
    pub(crate) answers: Vec<Answer>,
}

impl Reply {
    /// The outputs `names` asks for (every output when empty), in that order.
    pub(crate) fn outputs(&self, names: &[String]) -> Result<Vec<Output>, FrontError> {
        let wanted: Vec<&str> = if names.is_empty() {
            tensor::OUTPUTS.to_vec()
        } else {
            names.iter().map(String::as_str).collect()
        };
        wanted
            .into_iter()
            .map(|n| {
                tensor::output(n, &self.answers).ok_or_else(|| {
                    FrontError::BadRequest(format!(
                        "unknown output `{n}`: the outputs are {}",
                        tensor::OUTPUTS.join(", ")
                    ))
                })
            })
            .collect()
    }

    /// The model version that answered, as the protocol's version string.
    pub(crate) fn version(&self) -> String {
        self.answers
            .first()
            .map(|a| a.reasoning.model_version.to_string())
            .unwrap_or_default()
    }
}

/// Shared by every handler.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) engine: Arc<UnifiedEngine>,
    pub(crate) config: FrontConfig,
    pub(crate) draining: AtomicBool,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) metrics: FrontMetrics,
    pub(crate) events: EventLog,
    /// Snapshots for the dashboard's live stream.
    pub(crate) dashboard: tokio::sync::watch::Sender<Arc<String>>,
    /// Cancelled when the listeners close; ends the dashboard streams so draining finishes.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    /// The strategies a request may name, each keeping its own state (round-robin's turn).
    strategies: Vec<(&'static str, Box<dyn Strategy>)>,
}

impl State {
    pub(crate) fn new(
        engine: Arc<UnifiedEngine>,
        config: FrontConfig,
        closing: tokio_util::sync::CancellationToken,
    ) -> State {
        State {
            dashboard: crate::dashboard::channel(),
            closing,
            metrics: FrontMetrics::new(engine.clone()),
            events: EventLog::default(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            draining: AtomicBool::new(false),
            strategies: vec![
                ("round-robin", Box::new(RoundRobin::default())),
                ("local-first", Box::new(Preferred::local(PREFER_SHARE))),
                ("remote-first", Box::new(Preferred::remote(PREFER_SHARE))),
                ("performance", Box::new(Performance)),
            ],
            engine,
            config,
        }
    }

    /// Ready: not draining, and at least one engine can answer.
    pub(crate) fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.engine.router().backends().is_empty()
    }

    /// The model in rotation (the first engine's), or its shape alone while none is.
    pub(crate) fn model(&self) -> ModelView {
        let first = self
            .engine
            .router()
            .backends()
            .first()
            .map(|b| b.describe());
        let defaults = qnllm::Params::default();
        ModelView {
            name: self.config.model_name.clone(),
            version: first.as_ref().map(|i| i.model_version),
            digest: first.as_ref().map(|i| i.model_digest.to_hex()),
            dim: first
                .as_ref()
                .map_or(defaults.inputs as usize, |i| i.input_size as usize),
            labels: first.as_ref().map_or(defaults.labels, |i| i.labels),
        }
    }

    /// The model named `name` (at `version`, when given), or [`FrontError::UnknownModel`].
    pub(crate) fn find_model(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelView, FrontError> {
        let model = self.model();
        if name != model.name {
            return Err(FrontError::UnknownModel(format!(
                "unknown model `{name}`: this server serves `{}`",
                model.name
            )));
        }
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            if model.version.map(|m| m.to_string()).as_deref() != Some(v) {
                return Err(FrontError::UnknownModel(format!(
                    "model `{name}` has no version {v}: serving version {}",
                    model
                        .version
                        .map_or_else(|| "none (no engine)".to_string(), |m| m.to_string())
                )));
            }
        }
        Ok(model)
    }

    /// Runs a checked batch through the engine within the request's deadline.
    pub(crate) async fn infer(
        &self,
        model: ModelView,
        encodings: &Encodings,
        params: &Params,
    ) -> Result<Reply, FrontError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(FrontError::Unavailable(
                "the server is shutting down; send the request to another replica".into(),
            ));
        }
        let _permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            FrontError::Unavailable(format!(
                "{} requests already in flight, the most this server takes; retry shortly",
                self.config.max_in_flight
            ))
        })?;
        let budget = params
            .timeout
            .unwrap_or_else(|| self.engine.deadline())
            .min(self.config.max_timeout);
        let router = self.engine.router();
        let strategy = params.strategy.as_deref().and_then(|name| {
            self.strategies
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.as_ref())
        });
        let options = RequestOptions {
            no_cache: params.no_cache,
            strategy,
        };
        let answers = if encodings.rows == 1 {
            vec![
                router
                    .reason_with(&encodings.values, budget, options)
                    .await?,
            ]
        } else {
            router
                .reason_batch_with(&encodings.values, encodings.dim, budget, options)
                .await?
        };
        Ok(Reply { model, answers })
    }

    /// Records a finished request in the metrics.
    pub(crate) fn record(
        &self,
        protocol: &str,
        started: Instant,
        rows: usize,
        outcome: Result<&Reply, &FrontError>,
    ) {
        match outcome {
            Ok(reply) => {
                self.metrics
                    .record(protocol, "ok", &reply.answers, rows, started.elapsed());
            }
            Err(e) => self
                .metrics
                .record(protocol, e.outcome(), &[], rows, started.elapsed()),
        }
    }
}
