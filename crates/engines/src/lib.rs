//! Engines vibecheck launches or drives, and what serving costs.
//!
//! - `launch.rs`: each engine's command line (vLLM, SGLang, llama.cpp's `llama-server`) and the checks before it
//!   runs; `process.rs`: the running engine (its process group, log relay, readiness, stop).
//! - `swap.rs`: a new checkpoint into a running engine (SGLang's `update_weights_from_disk`, vLLM's dev-mode
//!   `reload_weights`), verified.
//! - `metrics.rs`: Prometheus text and the engines' token counters.
//! - `load.rs`: the bounded load test and the latency target it must meet; `cost.rs`: the arithmetic of $/hour,
//!   $/1M tokens and break-even; `prices.rs`: the bundled GPU and API price table (`prices.toml`), each row with
//!   its source and the date it was checked.
//! - `deploy.rs`: SkyPilot, Slurm and Kubernetes files for a long-lasting demo.

pub mod cost;
pub mod deploy;
pub mod launch;
pub mod load;
pub mod metrics;
pub mod prices;
pub mod process;
pub mod swap;

pub use launch::{CommandLine, EngineKind, LaunchSpec, MultiNode, SwapPath};
pub use process::{Engine, EngineState, Relay};

/// What went wrong with an engine, naming it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// A setting that cannot work, with what would fix it.
    #[error("{0}")]
    Config(String),
    #[error("{engine} exited before it was ready ({status}); its last lines:\n{log}")]
    Exited {
        engine: String,
        status: String,
        log: String,
    },
    #[error("{engine} was not ready within {secs} s (waiting for {step}); its last lines:\n{log}")]
    NotReady {
        engine: String,
        secs: u64,
        step: String,
        log: String,
    },
    /// A call to a running engine failed or was refused.
    #[error("{0}")]
    Call(String),
}
