//! Where a model comes from, before any tensor is touched.
//!
//! A user names a model as a checkpoint folder, a GGUF file, or a Hugging Face hub id. This crate turns that
//! name into a [`Source`] on disk, reads a folder's shard index, and checks every safetensors header against
//! the file it lives in, so a checkpoint that a trainer is still writing (or that is corrupt) is reported
//! with the file and the fault instead of crashing the loader; GGUF headers are read and checked here too
//! ([`gguf`]). It never loads tensor data.

mod error;
pub mod gguf;
pub mod hub;
pub mod layout;
pub mod run;
pub mod safetensors_header;
mod source;
pub mod torch;

pub use error::CheckpointError;
pub use source::{
    adapter_base, adapter_config, index_shard_names, resolve, shard_files, weight_header, Source,
    SourceKind,
};
