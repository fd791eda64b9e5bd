//! qnllm past one machine: workers and hubs meet on a NATS cluster. A worker serves any
//! engine on its own subject and announces itself with heartbeats; each hub turns every
//! worker it hears of into a router [`Backend`](qnllm_router::Backend), so routing stays
//! with qnllm. Requests and replies are the protocol's binary frames, unchanged. Learning
//! updates go through one JetStream stream per model lineage, so every replica on every
//! host applies them in one order. The design is `docs/scaling.md`.

mod announce;
mod backend;
mod connect;
mod discovery;
mod error;
mod frame;
mod log;
pub mod subject;
pub mod worker;

pub use announce::Announce;
pub use backend::NatsBackend;
pub use connect::{connect, NatsOptions};
pub use discovery::{Discovery, DiscoveryConfig};
pub use error::NatsError;
pub use frame::{decode_one, FrameOfOne};
pub use log::{Fetched, LearnLog, LogEntry, Snapshot};
pub use worker::WorkerConfig;
