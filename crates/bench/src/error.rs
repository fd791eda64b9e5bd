//! `BenchError`: why a benchmark run could not start a server or finish a measurement.

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A server process could not be started or did not report its address.
    #[error("cannot start {what}: {reason}")]
    Start {
        /// Which server.
        what: String,
        /// Why.
        reason: String,
    },
    /// The hidden `bench-server` subcommand was given a role it cannot read.
    #[error("bench-server: bad role {role:?}: {reason}")]
    Role {
        /// The role as given.
        role: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A file or socket operation of the bench itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A request on a path under measurement failed.
    #[error("{path}: {reason}")]
    Measure {
        /// The path (row) measured.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl BenchError {
    /// A failed measurement on `path`.
    pub(crate) fn measure(path: impl Into<String>, reason: impl ToString) -> BenchError {
        BenchError::Measure {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A server that could not start.
    pub(crate) fn start(what: impl Into<String>, reason: impl ToString) -> BenchError {
        BenchError::Start {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
