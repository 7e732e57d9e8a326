//! The engine: checkpoint files in, streaming text out.
//!
//! `loader` resolves and loads a model (safetensors folders and GGUF files), `model` is the one decoder for all
//! supported architectures, `tokenizer` and `template` turn chat messages into token ids, `sampling` picks
//! tokens, and `generate` runs the decode loop. `convert` writes a GGUF file out as a Hugging Face folder.
//! Nothing here knows about HTTP or SQL.

mod attention;
mod batch;
mod cache;
pub mod config;
pub mod convert;
mod error;
pub mod generate;
pub mod gguf;
pub mod kernels;
mod linear;
pub mod loader;
pub mod lora;
mod masks;
mod mlp;
pub mod model;
mod norm;
pub mod rope;
pub mod sampling;
pub mod scheduler;
pub mod synthetic;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use candle_core::{DType, Device};
pub use config::{Arch, ModelConfig};
pub use error::EngineError;
pub use generate::{FinishReason, Generation, Prompt, Timings, Usage};
pub use loader::{LoadOptions, Model};
pub use sampling::{ParamError, SamplingOverrides, SamplingParams, DEFAULT_MAX_TOKENS};
pub use scheduler::{BatchCounts, BatchEvent, Batcher, BatcherSettings};
pub use template::{ChatMessage, ChatTemplate};

/// Parses a device name: `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, EngineError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse::<usize>)
                .map_err(|_| {
                    EngineError::Config(format!("device {n:?}: expected cuda:N with N a GPU index"))
                })?;
            Device::new_cuda(ordinal).map_err(|e| {
                EngineError::Config(format!(
                    "device {n:?} is not available ({e}); CUDA needs a build with `--features cuda` and a GPU"
                ))
            })
        }
        other => Err(EngineError::Config(format!(
            "unknown device {other:?}; use cpu, cuda or cuda:N"
        ))),
    }
}

/// Parses a dtype name: `f32`, `bf16`, `f16`.
pub fn parse_dtype(name: &str) -> Result<DType, EngineError> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(EngineError::Config(format!(
            "unknown dtype {other:?}; use f32, bf16 or f16"
        ))),
    }
}
