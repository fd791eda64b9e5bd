//! `Backend`: one engine as the router sees it, whatever process it lives in.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use qnllm_engine::{Digest, Reasoning};
use serde::Serialize;

/// A boxed future returned by [`Backend`] methods, so backends can live in one list.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reasoning and who produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The engine's output.
    pub reasoning: Reasoning,
    /// Name of the engine that answered.
    pub engine: String,
    /// Time the engine spent computing.
    pub compute: Duration,
    /// Time from the router receiving the request to the answer (zero until routed).
    pub latency: Duration,
    /// Whether the answer came from the result cache.
    pub cached: bool,
    /// In redundant mode, how many engines agreed on it out of how many were asked and
    /// wanted; `None` in the other modes.
    pub agreement: Option<Agreement>,
}

/// How a redundant answer was agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Agreement {
    /// Engines whose result digest is this answer's.
    pub agreed: u32,
    /// Engines asked.
    pub asked: u32,
    /// Copies the mode asks for.
    pub wanted: u32,
}

impl Agreement {
    /// Fewer engines agreed than the mode wanted (fewer were healthy): the answer is
    /// served, and marked so.
    pub fn degraded(&self) -> bool {
        self.agreed < self.wanted
    }
}

/// The router's name for one engine it holds: unique for the router's life, so two
/// engines with the same name never stand for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EngineId(pub u64);

impl std::fmt::Display for EngineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl Answer {
    /// An answer just computed by `engine`.
    pub fn new(reasoning: Reasoning, engine: impl Into<String>, compute: Duration) -> Answer {
        Answer {
            reasoning,
            engine: engine.into(),
            compute,
            latency: Duration::ZERO,
            cached: false,
            agreement: None,
        }
    }
}

/// What the router knows of an engine: enough to route to it and to list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// Unique name.
    pub name: String,
    /// `local` or `remote`.
    pub kind: &'static str,
    /// Values per encoding.
    pub input_size: u32,
    /// Number of labels.
    pub labels: u32,
    /// Model version.
    pub model_version: u64,
    /// Model digest.
    pub model_digest: Digest,
}

/// A model's state after a learning update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelState {
    /// Version (updates applied).
    pub version: u64,
    /// Digest of weights and version.
    pub digest: Digest,
}

/// What a remote engine has done, as the process that reaches it counts it: for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// Requests sent to it and not yet answered.
    pub in_flight: u64,
    /// Encodings it has answered.
    pub served: u64,
    /// Milliseconds since it was last heard from (a reply or a heartbeat).
    pub last_heard_ms: u64,
}

/// Why a backend did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The request itself is bad (wrong length, NaN, unknown label): no engine would take it.
    #[error("{0}")]
    InvalidInput(String),
    /// The engine went away (process died, connection closed) before answering.
    #[error("engine {engine} is gone: {reason}")]
    Gone {
        /// Engine name.
        engine: String,
        /// What happened.
        reason: String,
    },
    /// The engine did not answer within the time allowed.
    #[error("engine {engine} did not answer within {budget:?}")]
    Timeout {
        /// Engine name.
        engine: String,
        /// The budget it had.
        budget: Duration,
    },
    /// A learning update named a model version other than the engine's.
    #[error("engine {engine} is at model version {actual}, the update was for {expected}")]
    VersionConflict {
        /// Engine name.
        engine: String,
        /// The version the update was for.
        expected: u64,
        /// The engine's version.
        actual: u64,
    },
    /// The engine answered with a failure of its own.
    #[error("engine {engine} failed: {reason}")]
    Failed {
        /// Engine name.
        engine: String,
        /// What it said.
        reason: String,
    },
    /// The engine's reply failed the router's checks (shape, model digest, batch count,
    /// result digest): the engine is at fault, and the request goes elsewhere.
    #[error("engine {engine} gave a bad reply: {reason}")]
    BadReply {
        /// Engine name.
        engine: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl BackendError {
    /// Whether another engine might succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BackendError::InvalidInput(_))
    }
}

/// One engine, local or remote.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A stable name for logs, metrics and results.
    fn name(&self) -> &str;

    /// What it serves.
    fn describe(&self) -> EngineInfo;

    /// `"local"` or `"remote"`, as [`EngineInfo::kind`], without building the whole
    /// description (the router asks on every request).
    fn kind(&self) -> &'static str {
        self.describe().kind
    }

    /// How the router reaches it, for listings: `in-process` (a local engine), `socket` (a
    /// worker connected to this hub), `nats` (a worker on a NATS cluster).
    fn transport(&self) -> &'static str {
        if self.kind() == "local" {
            "in-process"
        } else {
            "socket"
        }
    }

    /// The digest of the model it serves, as [`EngineInfo::model_digest`], without
    /// building the whole description (a router with a cache asks on every request).
    fn model_digest(&self) -> Digest {
        self.describe().model_digest
    }

    /// The version and digest of the model it serves now, without building the whole
    /// description: the router reads it for every request to keep lagging replicas and
    /// other models out of rotation.
    fn model_state(&self) -> ModelState {
        let info = self.describe();
        ModelState {
            version: info.model_version,
            digest: info.model_digest,
        }
    }

    /// Most requests it takes at once (a worker says so in `register`); `None`: no limit.
    /// The router sends no more than this many tries to it at a time, so one stalled
    /// engine cannot hold every request.
    fn max_in_flight(&self) -> Option<u32> {
        None
    }

    /// Requests it holds now, as it counts them itself (a worker's table of requests sent
    /// and not yet answered), when it keeps such a count; `None` otherwise. With
    /// [`Backend::max_in_flight`] this is its readiness: the router sends no try to an
    /// engine that holds its limit while another has room, counting requests that reached
    /// it around this router (another router, a coordinator's learning calls) as well as
    /// its own. Read on every request for every engine with a limit: keep it cheap (an
    /// atomic load).
    fn in_flight(&self) -> Option<u64> {
        None
    }

    /// Whether it applies learning updates in an order kept outside any one coordinator: a
    /// shared update log that it follows by itself, as a worker on NATS does. A coordinator
    /// neither replays updates to such a replica nor reads its described version as the
    /// student's order (that description may lag the log).
    fn follows_update_log(&self) -> bool {
        false
    }

    /// What it has done, for listings, when it keeps such figures (a worker reached over
    /// NATS does); `None` otherwise.
    fn activity(&self) -> Option<Activity> {
        None
    }

    /// Reasons over one encoding within `budget`.
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>>;

    /// Reasons over several encodings of one dimension (`values.len() / dim` of them) within
    /// `budget`; answers come back in input order.
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>>;

    /// Applies the learning update for `(encoding, label)` if the model is at
    /// `base_version`; replicas that apply one ordered stream of updates stay identical.
    /// Engines that do not learn refuse.
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        let _ = (encoding, label, base_version, budget);
        let engine = self.name().to_string();
        Box::pin(async move {
            Err(BackendError::Failed {
                engine,
                reason: "this engine does not learn".into(),
            })
        })
    }
}
