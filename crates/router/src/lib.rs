//! The router: the [`Backend`] abstraction every engine hides behind (in-process or a
//! worker across a socket), strategies that order them, and the ways of running a request
//! (failover, hedging, redundancy with a vote), with a result cache, a retry budget,
//! outlier ejection and metrics. It never sees a socket.

mod backend;
mod batch;
mod budget;
mod cache;
mod consensus;
mod coordinate;
mod health;
mod layer;
mod local;
mod router;
pub mod strategy;

pub use backend::{
    Activity, Agreement, Answer, Backend, BackendError, BackendFuture, EngineId, EngineInfo,
    ModelState,
};
pub use batch::{BatchPolicy, DynamicBatcher, SharedBatchPolicy};
pub use budget::RetryBudget;
pub use cache::{CacheStats, ResultCache};
pub use consensus::ConsensusPolicy;
pub use coordinate::{
    Coordination, CoordinationMetrics, Coordinator, LearnError, TeacherVote, AGREEMENT_WINDOW,
    MAX_REPLAY_UPDATES,
};
pub use health::{latency_histogram, HealthSnapshot};
pub use local::LocalBackend;
pub use router::{
    Admission, EngineMetrics, Mode, Pool, RequestOptions, Router, RouterConfig, RouterError,
    RouterMetrics, MIN_BATCH_PART,
};
