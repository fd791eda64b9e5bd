//! The router: the [`Backend`] abstraction every engine hides behind (in-process or a
//! worker across a socket), strategies that order them, and the ways of running a request
//! (failover, hedging, redundancy with a vote), with a result cache, a retry budget,
//! outlier ejection and metrics. It never sees a socket.

mod backend;
mod batch;
mod budget;
mod cache;
mod coordinate;
mod health;
mod local;
mod router;
pub mod strategy;

pub use backend::{Answer, Backend, BackendError, BackendFuture, EngineInfo, ModelState};
pub use batch::{BatchPolicy, DynamicBatcher, SharedBatchPolicy};
pub use budget::RetryBudget;
pub use cache::{CacheStats, ResultCache};
pub use coordinate::{
    Coordination, CoordinationMetrics, Coordinator, TeacherVote, AGREEMENT_WINDOW,
};
pub use health::HealthSnapshot;
pub use local::LocalBackend;
pub use router::{
    EngineMetrics, Mode, RequestOptions, Router, RouterConfig, RouterError, RouterMetrics,
    MIN_BATCH_PART,
};
