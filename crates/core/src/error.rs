//! Typed errors. Every message names the thing that is wrong and, where there is one, the fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder the user pointed at is missing or unreadable.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },

    /// A checkpoint or config is present but its content is wrong.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A tensor has the wrong shape or dtype for the op or the model.
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },

    /// Input the user gave (tokens, flags, lengths) is not acceptable.
    #[error("{0}")]
    Input(String),

    /// A backend name, device or plugin that cannot be used.
    #[error("backend '{name}': {reason}")]
    Backend { name: String, reason: String },

    /// An operation this backend does not implement.
    #[error("backend '{backend}' does not support {what}")]
    Unsupported { backend: String, what: String },

    /// A graph that does not hold together (a bug in the builder, caught before execution).
    #[error("invalid graph: {0}")]
    Graph(String),

    /// A configuration file with a bad key or value.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn tensor(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            reason: reason.into(),
        }
    }
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub fn backend(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Backend {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
