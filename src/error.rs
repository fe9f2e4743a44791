//! The crate's one error type. Every failure a caller can cause (bad files, bad text, a missing
//! GPU) comes back as an [`Error`] with a message a person can act on; in wasm it becomes a JS
//! `Error` with that message.

use crate::weights::gguf::GgufError;

/// Everything that can go wrong in webguard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed or unsupported GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A malformed safetensors file, or one without the tensors a model needs.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A tokenizer that could not be built, or text it could not handle.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The compute backend could not be set up or failed while running.
    #[error("backend: {0}")]
    Backend(String),
    /// An argument out of range or otherwise unusable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The caller stopped a long operation; nothing was changed.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Reading a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The path that failed.
        path: String,
        /// What the OS said.
        message: String,
    },
}

/// `Result` with webguard's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<std::path::Path>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            message: err.to_string(),
        }
    }
}
