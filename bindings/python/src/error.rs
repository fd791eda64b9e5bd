//! The exception hierarchy under `qnllm.QnllmError` and the mapping from Rust errors to it.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use qnllm_hub::ClientError;
use qnllm_protocol::ErrorCode;
use qnllm_router::RouterError;

pyo3::create_exception!(
    qnllm,
    QnllmError,
    PyException,
    "Base of every error qnllm raises."
);
pyo3::create_exception!(
    qnllm,
    InvalidInput,
    QnllmError,
    "The encoding was refused (wrong length, NaN or infinite value, bad label); `index` names the value, `item` the encoding of a batch."
);
pyo3::create_exception!(
    qnllm,
    NoEngineAvailable,
    QnllmError,
    "No engine could answer: none registered, or every engine tried failed (the message says how)."
);
pyo3::create_exception!(
    qnllm,
    DeadlineExceeded,
    QnllmError,
    "The request's deadline passed before an engine answered."
);
pyo3::create_exception!(
    qnllm,
    Disagreement,
    QnllmError,
    "Redundant engines returned different results and no majority emerged."
);
pyo3::create_exception!(
    qnllm,
    ConfigError,
    QnllmError,
    "A setting is wrong; the message names it."
);
pyo3::create_exception!(
    qnllm,
    HubError,
    QnllmError,
    "The embedded hub could not start (an address in use, a socket path not writable)."
);
pyo3::create_exception!(
    qnllm,
    ModelError,
    QnllmError,
    "A model could not be built or loaded."
);
pyo3::create_exception!(
    qnllm,
    ConnectionLost,
    QnllmError,
    "The connection to a hub could not be made or closed before the answer."
);
pyo3::create_exception!(
    qnllm,
    EngineFailed,
    QnllmError,
    "An engine failed while handling the request (a Python engine raised, a worker crashed)."
);
pyo3::create_exception!(
    qnllm,
    EngineStopped,
    QnllmError,
    "The engine was stopped; create a new one."
);
pyo3::create_exception!(
    qnllm,
    VersionConflict,
    QnllmError,
    "A learning update named a model version other than the student's; the message names both."
);
pyo3::create_exception!(
    qnllm,
    ShuttingDown,
    QnllmError,
    "The hub is shutting down and takes no new requests."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("QnllmError", py.get_type::<QnllmError>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("NoEngineAvailable", py.get_type::<NoEngineAvailable>())?;
    m.add("DeadlineExceeded", py.get_type::<DeadlineExceeded>())?;
    m.add("Disagreement", py.get_type::<Disagreement>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("HubError", py.get_type::<HubError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("ConnectionLost", py.get_type::<ConnectionLost>())?;
    m.add("EngineFailed", py.get_type::<EngineFailed>())?;
    m.add("EngineStopped", py.get_type::<EngineStopped>())?;
    m.add("ShuttingDown", py.get_type::<ShuttingDown>())?;
    m.add("VersionConflict", py.get_type::<VersionConflict>())?;
    Ok(())
}

/// Where a bad value sits: the encoding of a batch (`item`) and the value in it (`index`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Place {
    pub(crate) item: Option<usize>,
    pub(crate) index: Option<usize>,
}

/// An `InvalidInput` exception with `index` and `item` attributes (None when not known).
pub(crate) fn invalid_input(message: String, place: Place) -> PyErr {
    Python::attach(|py| {
        let err = InvalidInput::new_err(message);
        let value = err.value(py);
        // Setting attributes on a fresh exception instance cannot fail short of memory.
        let _ = value.setattr("index", place.index);
        let _ = value.setattr("item", place.item);
        err
    })
}

/// The exception a caller handles for a router error.
pub(crate) fn from_router(err: RouterError) -> PyErr {
    let text = err.to_string();
    match err {
        RouterError::InvalidInput(_) => invalid_input(text, Place::default()),
        RouterError::NoEngineAvailable { .. } => NoEngineAvailable::new_err(text),
        RouterError::DeadlineExceeded { .. } => DeadlineExceeded::new_err(text),
        RouterError::Disagreement { .. } => Disagreement::new_err(text),
        RouterError::EnginesFailed { .. } | RouterError::RetryBudgetExhausted { .. } => {
            EngineFailed::new_err(text)
        }
        _ => QnllmError::new_err(text),
    }
}

/// The exception for a facade error.
pub(crate) fn from_facade(err: qnllm::Error) -> PyErr {
    let text = err.to_string();
    match err {
        qnllm::Error::Request(err) => from_router(err),
        qnllm::Error::Config(_) => ConfigError::new_err(text),
        qnllm::Error::Hub(_) => HubError::new_err(text),
        qnllm::Error::Engine(_) => ModelError::new_err(text),
        qnllm::Error::RaggedBatch => invalid_input(text, Place::default()),
        _ => QnllmError::new_err(text),
    }
}

/// The exception for a client error: an error frame keeps the class its code names.
pub(crate) fn from_client(err: ClientError) -> PyErr {
    let text = err.to_string();
    match err {
        ClientError::Remote { code, message } => match code {
            ErrorCode::InvalidInput => invalid_input(message, Place::default()),
            ErrorCode::NoEngineAvailable => NoEngineAvailable::new_err(message),
            ErrorCode::DeadlineExceeded => DeadlineExceeded::new_err(message),
            ErrorCode::Disagreement => Disagreement::new_err(message),
            ErrorCode::EngineFailed => EngineFailed::new_err(message),
            ErrorCode::ShuttingDown => ShuttingDown::new_err(message),
            ErrorCode::VersionConflict => VersionConflict::new_err(message),
            _ => QnllmError::new_err(text),
        },
        ClientError::Timeout(_) => DeadlineExceeded::new_err(text),
        ClientError::Connect { .. } | ClientError::Closed(_) => ConnectionLost::new_err(text),
        _ => QnllmError::new_err(text),
    }
}
