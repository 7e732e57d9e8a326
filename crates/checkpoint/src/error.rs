//! What can be wrong with a checkpoint before its tensors are read, each error naming the file.

use std::path::PathBuf;

/// Everything that can be wrong with a checkpoint before its tensors are loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "model `{spec}` is neither a checkpoint folder, a .gguf file nor a hub id found in the local Hugging Face cache. \
         Searched: {searched}. {hint}"
    )]
    NotFound {
        spec: String,
        searched: String,
        hint: String,
    },
    /// `detail` says where it is cached, which revisions are, and how to fetch this one.
    #[error("hub model `{id}` is in the local cache but not at revision `{revision}`: {detail}")]
    RevisionNotCached {
        id: String,
        revision: String,
        detail: String,
    },
}

impl CheckpointError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
