//! The crate's one error type. Every failure a caller can cause (bad files, bad text, a missing
//! GPU) comes back as an [`Error`] with a message a person can act on; in wasm it becomes a JS
//! `Error` with that message whose `name` is the [`ErrorKind`]'s (`"BackendError"`, ...), so
//! callers branch on the kind, never on the text (the worker's GPU-to-CPU fallback does).

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
    /// A model file that parses but does not hold a usable model (not a llama GGUF, a tensor
    /// of the wrong shape, an unsupported config).
    #[error("model file: {0}")]
    ModelFile(String),
    /// An argument out of range or otherwise unusable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Tuning ran but failed (the loss diverged); the model is as it was before.
    #[error("tuning: {0}")]
    Tuning(String),
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

/// What kind of failure an [`Error`] is: what a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's arguments, text or data: fix the input.
    InvalidInput,
    /// A model, tokenizer or heads file is malformed or unsupported: use another file.
    ModelFile,
    /// The compute backend failed (no GPU, a lost device): retrying on the CPU may work.
    Backend,
    /// Tuning failed (diverged): try other options.
    Tuning,
    /// The caller cancelled.
    Cancelled,
    /// Reading a file failed.
    Io,
}

impl ErrorKind {
    /// Every kind (the `match` in [`ErrorKind::name`] keeps the list honest: a new kind
    /// needs a name, and the tests check every listed kind has a distinct one).
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::InvalidInput,
        ErrorKind::ModelFile,
        ErrorKind::Backend,
        ErrorKind::Tuning,
        ErrorKind::Cancelled,
        ErrorKind::Io,
    ];

    /// The name a JavaScript `Error` of this kind carries (`err.name`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "InvalidInputError",
            ErrorKind::ModelFile => "ModelFileError",
            ErrorKind::Backend => "BackendError",
            ErrorKind::Tuning => "TuningError",
            ErrorKind::Cancelled => "CancelledError",
            ErrorKind::Io => "IoError",
        }
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Gguf(_) | Error::Safetensors(_) | Error::Tokenizer(_) | Error::ModelFile(_) => {
                ErrorKind::ModelFile
            }
            Error::Backend(_) => ErrorKind::Backend,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Tuning(_) => ErrorKind::Tuning,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<std::path::Path>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_js_name() {
        let kinds = ErrorKind::ALL;
        let names: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), kinds.len());
        assert!(names.iter().all(|n| n.ends_with("Error")));
        assert_eq!(Error::Backend("x".into()).kind().name(), "BackendError");
        assert_eq!(Error::ModelFile("x".into()).kind(), ErrorKind::ModelFile);
    }
}
