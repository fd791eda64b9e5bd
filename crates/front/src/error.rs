//! `FrontError`: what a front request can fail with, and the HTTP and gRPC status of each.

use qnllm::Error as EngineError;
use qnllm::RouterError;

/// Why a request to the front failed; the message is what the caller reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontError {
    /// The request is malformed: shape, datatype, a value that is not finite, bad JSON.
    #[error("{0}")]
    BadRequest(String),
    /// The model (or that version of it) is not served here.
    #[error("{0}")]
    UnknownModel(String),
    /// No engine can answer now, or the front is draining.
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before an engine answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The body is larger than the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The client was too slow sending its body.
    #[error("{0}")]
    SlowClient(String),
    /// A token is required and was missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// Something failed inside: engines disagreed, a setting is wrong.
    #[error("{0}")]
    Internal(String),
}

impl FrontError {
    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            FrontError::BadRequest(_) => 400,
            FrontError::Unauthorized(_) => 401,
            FrontError::UnknownModel(_) => 404,
            FrontError::SlowClient(_) => 408,
            FrontError::TooLarge(_) => 413,
            FrontError::Internal(_) => 500,
            FrontError::Unavailable(_) => 503,
            FrontError::DeadlineExceeded(_) => 504,
        }
    }

    /// The gRPC status code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            FrontError::BadRequest(_) => tonic::Code::InvalidArgument,
            FrontError::Unauthorized(_) => tonic::Code::Unauthenticated,
            FrontError::UnknownModel(_) => tonic::Code::NotFound,
            FrontError::SlowClient(_) => tonic::Code::Cancelled,
            FrontError::TooLarge(_) => tonic::Code::ResourceExhausted,
            FrontError::Internal(_) => tonic::Code::Internal,
            FrontError::Unavailable(_) => tonic::Code::Unavailable,
            FrontError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
        }
    }

    /// A short name of the outcome, for metrics labels.
    pub fn outcome(&self) -> &'static str {
        match self {
            FrontError::BadRequest(_) => "bad_request",
            FrontError::Unauthorized(_) => "unauthorized",
            FrontError::UnknownModel(_) => "unknown_model",
            FrontError::SlowClient(_) => "slow_client",
            FrontError::TooLarge(_) => "too_large",
            FrontError::Internal(_) => "error",
            FrontError::Unavailable(_) => "unavailable",
            FrontError::DeadlineExceeded(_) => "deadline_exceeded",
        }
    }
}

impl From<EngineError> for FrontError {
    fn from(e: EngineError) -> FrontError {
        match e {
            EngineError::Request(r) => FrontError::from(r),
            other => FrontError::Internal(other.to_string()),
        }
    }
}

impl From<RouterError> for FrontError {
    fn from(e: RouterError) -> FrontError {
        let text = e.to_string();
        match e {
            RouterError::InvalidInput(_) => FrontError::BadRequest(text),
            RouterError::NoEngineAvailable { .. } => FrontError::Unavailable(text),
            RouterError::DeadlineExceeded { .. } => FrontError::DeadlineExceeded(text),
            _ => FrontError::Internal(text),
        }
    }
}

impl From<FrontError> for tonic::Status {
    fn from(e: FrontError) -> tonic::Status {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
