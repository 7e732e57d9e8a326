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
    /// A failure described for a client: a short sentence, the detail left to the log ([`EngineError::for_client`]).
    #[error("{0}")]
    Internal(String),
}

/// What a client is told when a computation fails: candle's errors name kernels and, with `RUST_BACKTRACE`
/// set, carry a backtrace with source paths, none of which a client can act on.
pub const COMPUTE_FAILED: &str =
    "the engine failed while computing this answer; the server's log has the detail";

impl EngineError {
    /// Whether the request (not the server) is at fault: a client error, shown as a 400.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            EngineError::Request(_) | EngineError::Param(_) | EngineError::ContextFull { .. }
        )
    }

    /// This error as a client may see it: request faults keep their message, computation failures become
    /// [`COMPUTE_FAILED`] (log the original with `%self` first).
    pub fn for_client(&self) -> EngineError {
        match self {
            EngineError::Request(m) => EngineError::Request(m.clone()),
            EngineError::Param(p) => EngineError::Request(p.to_string()),
            EngineError::ContextFull { needed, max } => EngineError::ContextFull {
                needed: *needed,
                max: *max,
            },
            EngineError::Candle(_) => EngineError::Internal(COMPUTE_FAILED.into()),
            EngineError::Internal(m) => EngineError::Internal(m.clone()),
            other => EngineError::Internal(other.to_string()),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A computation failure reaches a client as one short sentence: no kernel message, no backtrace, however
    /// `RUST_BACKTRACE` is set; request faults keep their words.
    #[test]
    fn clients_never_see_internals() {
        let inner =
            candle_core::Error::Msg("slice-set only supports contiguous tensors".into()).bt();
        let e = EngineError::Candle(inner);
        let shown = e.for_client().to_string();
        assert_eq!(shown, COMPUTE_FAILED);
        assert!(!e.is_client_fault());
        let r = EngineError::Request("`messages` is empty".into());
        assert!(r.is_client_fault());
        assert_eq!(r.for_client().to_string(), r.to_string());
    }
}
