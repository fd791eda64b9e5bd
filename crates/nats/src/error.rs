//! `NatsError`: what can go wrong between qnllm and a NATS cluster.

/// Why a NATS worker, discovery or log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The options are unsafe or inconsistent.
    #[error("{0}")]
    Options(String),
    /// The first connection to the cluster failed.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URLs tried.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A subscription could not be made.
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// What the client said.
        reason: String,
    },
    /// The update log (a JetStream stream) refused an operation.
    #[error("update log {stream}: {reason}")]
    Log {
        /// The stream.
        stream: String,
        /// What JetStream said.
        reason: String,
    },
}
