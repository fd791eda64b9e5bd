//! `UnifiedEngine`: the one object an application holds. It owns an in-process engine, a
//! router (strategies, failover, cache, redundancy) and an embedded hub that worker
//! processes join, started with [`UnifiedEngine::start`] and stopped with
//! [`UnifiedEngine::stop`], as the original `engine.start()` / `engine.stop()`.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), qnllm::Error> {
//! let mut engine = qnllm::UnifiedEngine::builder().local_engines(1).build()?;
//! engine.start().await?;                          // hub on 127.0.0.1:9999
//! let x = vec![0.01_f32; 768];
//! let answer = engine.reason(&x).await?;
//! println!("label {} from {}", answer.reasoning.label, answer.engine);
//! engine.stop().await;
//! # Ok(()) }
//! ```

pub mod blocking;
mod builder;
mod error;
mod front;
mod unified;

pub use builder::Builder;
pub use error::Error;
pub use front::FrontSettings;
pub use qnllm_engine::{Model, NormalInputs, Params, Reasoning, SpikingEngine};
pub use qnllm_router::{
    Answer, BatchPolicy, CacheStats, Coordination, CoordinationMetrics, EngineMetrics, Mode,
    ModelState, RouterError, RouterMetrics,
};
pub use unified::{Metrics, UnifiedEngine};
