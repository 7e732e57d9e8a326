//! The engine's one error type: each variant names the file or field at fault, so a caller can show it as is.

use std::path::PathBuf;

/// Errors of the engine, each naming the file or field at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Checkpoint(#[from] vibecheck_checkpoint::CheckpointError),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the sequence needs {needed} positions but this model instance holds at most {max}")]
    ContextFull { needed: usize, max: usize },
    #[error("invalid request: {0}")]
    Request(String),
    /// A sampling setting out of range (it names the field).
    #[error("invalid request: {0}")]
    Param(#[from] crate::sampling::ParamError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
