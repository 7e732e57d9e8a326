//! Prompt suites and what is done with them: reading suites (our TOML format, MT-Bench jsonl, the built-in
//! default), running them on a checkpoint into the store (`runner`), watching a run folder for new checkpoints
//! (`watch`), and comparing answers across steps (`diff`, `timeline`).

pub mod diff;
pub mod endpoint;
pub mod runner;
pub mod suite;
pub mod timeline;
pub mod watch;

pub use runner::{RunOutcome, RunnerSettings};
pub use suite::{Suite, SuiteError, SuitePrompt};
pub use timeline::{timeline, Timeline};
/// The `max_tokens` a prompt gets when neither it nor its suite sets one (the engine's one default).
pub use vibecheck_engine::DEFAULT_MAX_TOKENS;
pub use watch::{run_name, watch, CheckpointSummary, EngineWatch, WatchEvent, WatchOptions};
