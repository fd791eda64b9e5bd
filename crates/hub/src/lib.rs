//! The qnllm hub and its two kinds of peer. The hub listens on TCP and Unix sockets,
//! welcomes clients and workers, keeps a registry of the engines workers offer, and routes
//! client requests through the router, to which a worker is just another backend. The same
//! crate holds the worker side (serve an engine, reconnect) and the client side.

mod accept;
mod alarm;
mod config;
mod connection;
pub mod convert;
mod endpoint;
mod fair;
mod handshakes;
mod hub;
mod peer;
mod registry;
mod remote;
mod session;
mod shared;
mod stats;
mod stream;

mod cmd;

pub mod client;
pub mod worker;

pub use client::{Client, ClientError, Subscription};
pub use config::{ConfigError, HubConfig};
pub use endpoint::Endpoint;
pub use hub::{Handler, Hub, HubError, RunningHub};
pub use qnllm_protocol::EngineRole;
pub use stream::Stream;
pub use worker::{WorkerConfig, WorkerError};
