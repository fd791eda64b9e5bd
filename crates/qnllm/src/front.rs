//! `FrontSettings`: where the web front (KServe v2 over HTTP and gRPC) of an engine listens.
//!
//! The front itself lives in `qnllm-front`, which stands on this crate; the builder carries
//! its addresses so one `UnifiedEngine::builder()` describes the whole server, and
//! `qnllm_front::FrontConfig::for_engine` reads them back.

/// The front's addresses and token, as given to the builder; nothing listens by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrontSettings {
    /// HTTP/REST address (`host:port`; port 0 picks one), if any.
    pub http: Option<String>,
    /// gRPC address, if any.
    pub grpc: Option<String>,
    /// Bearer token clients must present; required for an address that is not loopback.
    pub token: Option<String>,
}

impl FrontSettings {
    /// Whether the front is asked for at all.
    pub fn enabled(&self) -> bool {
        self.http.is_some() || self.grpc.is_some()
    }
}
