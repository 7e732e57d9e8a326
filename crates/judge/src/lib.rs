//! Judging: any OpenAI-compatible endpoint grades answers (`client`, `prompts`, `verdict`), pairs are judged in both
//! orders with disagreements as ties (`run`), and the results become win rates, length-controlled win rates and
//! Bradley–Terry ratings (`stats`, `summary`, `arena`) and SVG charts over training steps (`plot`). A judge is just an
//! endpoint: this crate never loads a model.

pub mod arena;
pub mod client;
pub mod plot;
pub mod prompts;
pub mod run;
pub mod stats;
pub mod summary;
pub mod verdict;

pub use client::{CallError, Endpoint};
pub use prompts::{JudgePrompt, JudgePrompts, Kind};
pub use run::{judge_run, Baseline, JudgeError, JudgeOptions, JudgeReport, Mode};
pub use summary::{summarize, Summary};
