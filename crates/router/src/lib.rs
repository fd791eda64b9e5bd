//! The router: the [`Backend`] abstraction every engine hides behind (in-process or a
//! worker across a socket), strategies that pick one, and failover when a pick fails.
//! It never sees a socket.

mod backend;
mod local;
mod router;
pub mod strategy;

pub use backend::{Answer, Backend, BackendError, BackendFuture, EngineInfo};
pub use local::LocalBackend;
pub use router::{Router, RouterError};
