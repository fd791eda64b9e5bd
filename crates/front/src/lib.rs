//! The web front of qnllm: the Open Inference Protocol (KServe v2) over HTTP and gRPC,
//! Prometheus `/metrics` and a live dashboard, standing on a [`qnllm::UnifiedEngine`].
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut engine = qnllm::UnifiedEngine::builder().build()?;
//! engine.start().await?;
//! let config = qnllm_front::FrontConfig {
//!     http: Some("127.0.0.1:8000".into()),
//!     grpc: Some("127.0.0.1:8001".into()),
//!     ..qnllm_front::FrontConfig::default()
//! };
//! let stop = tokio_util::sync::CancellationToken::new();
//! let front = qnllm_front::start(std::sync::Arc::new(engine), config, stop).await?;
//! front.wait().await;
//! # Ok(()) }
//! ```

mod auth;
mod dashboard;
mod error;
mod events;
mod grpc;
mod http;
mod metrics;
mod server;
mod state;
mod statistics;
mod tensor;

/// The protocol's gRPC messages, server and client, generated from `proto/kserve.proto`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod pb {
    tonic::include_proto!("inference");
}

use std::time::Duration;

pub use error::FrontError;
pub use http::HEADER_LENGTH;
pub use server::{start, RunningFront, ServeError};
pub use tensor::{INPUT, OUTPUTS};

/// Settings of the front; every one has a safe default.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// HTTP address (`None`: no HTTP).
    pub http: Option<String>,
    /// gRPC address (`None`: no gRPC).
    pub grpc: Option<String>,
    /// Bearer token; required when either address is not loopback.
    pub token: Option<String>,
    /// The model's name in URLs and requests.
    pub model_name: String,
    /// Largest request body (HTTP) or message (gRPC).
    pub max_body_bytes: usize,
    /// Most inference requests in flight at once; more are refused with 503.
    pub max_in_flight: usize,
    /// Most concurrent requests (HTTP/2 and gRPC streams) on one connection.
    pub max_streams_per_connection: u32,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a client has to send its request body.
    pub body_timeout: Duration,
    /// Longest deadline a request may ask for.
    pub max_timeout: Duration,
    /// At shutdown, time between reporting not-ready and closing the listeners, so load
    /// balancers stop sending first.
    pub drain_delay: Duration,
    /// At shutdown, time in-flight requests get to finish.
    pub grace: Duration,
    /// How often the dashboard receives a new snapshot.
    pub dashboard_interval: Duration,
}

impl FrontConfig {
    /// The defaults, with the addresses and token `engine`'s builder was given
    /// (`Builder::http`, `Builder::grpc`, `Builder::front_token`): a protocol the builder
    /// did not name is not served.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut engine = qnllm::UnifiedEngine::builder().http("127.0.0.1:0").build()?;
    /// engine.start().await?;
    /// let engine = std::sync::Arc::new(engine);
    /// let config = qnllm_front::FrontConfig::for_engine(&engine);
    /// let stop = tokio_util::sync::CancellationToken::new();
    /// let front = qnllm_front::start(engine, config, stop).await?;
    /// println!("HTTP on {:?}", front.http);
    /// # Ok(()) }
    /// ```
    pub fn for_engine(engine: &qnllm::UnifiedEngine) -> FrontConfig {
        let settings = engine.front_settings();
        FrontConfig {
            http: settings.http.clone(),
            grpc: settings.grpc.clone(),
            token: settings.token.clone(),
            ..FrontConfig::default()
        }
    }
}

impl Default for FrontConfig {
    fn default() -> FrontConfig {
        FrontConfig {
            http: Some("127.0.0.1:8000".into()),
            grpc: None,
            token: None,
            model_name: "qnllm".into(),
            max_body_bytes: 16 << 20,
            max_in_flight: 1_024,
            max_streams_per_connection: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(60),
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(10),
            dashboard_interval: Duration::from_millis(500),
        }
    }
}
