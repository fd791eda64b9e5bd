//! What an engine can refuse or fail at.

/// Why an engine could not reason, learn or be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The encoding does not have the model's input size.
    #[error("encoding has {found} values, the model takes {expected}")]
    WrongLength {
        /// The model's input size.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A value of the encoding is NaN or infinite.
    #[error("value at index {index} is {value}: encodings must be finite")]
    NotFinite {
        /// Position of the first bad value.
        index: usize,
        /// The value itself (NaN, inf or -inf).
        value: f32,
    },
    /// One encoding of a batch was refused; the batch was not run.
    #[error("encoding {item} of the batch: {reason}")]
    InBatch {
        /// Position of the bad encoding in the batch.
        item: usize,
        /// Why it was refused (shown in this error's message, so not also a `source()`).
        reason: Box<EngineError>,
    },
    /// A learn request named a label the model does not have.
    #[error("label {label} is out of range: the model has labels 0..{labels}")]
    UnknownLabel {
        /// The label given.
        label: u32,
        /// Number of labels.
        labels: u32,
    },
    /// Hyper-parameters that would break the integer bounds or make no network.
    #[error("invalid model parameters: {0}")]
    InvalidParams(String),
    /// The engine itself failed on a valid request (an engine written in another language
    /// raised, say): that request's failure, not bad input; another engine may answer it.
    #[error("{0}")]
    Failed(String),
    /// A model file could not be read or written.
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
}

/// Why a safetensors model file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a safetensors file.
    #[error("{path}: not a safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A safetensors file, but not a qnllm model (a tensor or setting missing or wrong).
    #[error("{path}: not a qnllm spiking model: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is missing or wrong.
        reason: String,
    },
}
