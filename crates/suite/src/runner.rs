//! Running a suite on one loaded checkpoint: every prompt greedy, plus K seeded samples when asked; multi-turn
//! prompts feed the model's own earlier answers back. Each conversation is stored in one transaction as soon as it
//! is done, and conversations already stored are skipped, so a run can stop at any moment and resume.
//!
//! The unit of work is a [`Job`] (one prompt, one sample); [`answer_jobs`] answers a list of them together, turn by
//! turn, through whatever [`Answerer`] runs the checkpoint: vibecheck's own engine (a loaded [`Model`], through the
//! decoder's batch dimension, `RunnerSettings::batch` at a time) or an engine it drives over HTTP
//! (`endpoint.rs`: vLLM, SGLang).

use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use vibecheck_engine::{
    ChatMessage, EngineError, Model, Prompt, SamplingOverrides, SamplingParams, DEFAULT_MAX_TOKENS,
};
use vibecheck_store::{NewAnswer, Store, StoreError};

use crate::suite::{hex, Overrides, Suite, SuitePrompt};

/// How a suite is run.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Seeded samples per prompt besides the greedy answer.
    pub samples: u32,
    /// Used when neither the prompt nor the suite sets `max_tokens`.
    pub max_tokens: usize,
    /// Caps every prompt's `max_tokens` (the demo keeps answers short).
    pub max_tokens_cap: Option<usize>,
    /// Conversations decoded together (1: one at a time).
    pub batch: usize,
    /// The quantization the model was loaded with (`q8_0`, ...), recorded with every answer.
    pub quantize: Option<String>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            samples: 0,
            max_tokens: DEFAULT_MAX_TOKENS,
            max_tokens_cap: None,
            batch: 8,
            quantize: None,
        }
    }
}

/// One conversation to produce: a prompt (index into the suite) and a sample (0 = greedy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub prompt: usize,
    pub sample: u32,
}

/// Sampling for one job: greedy for sample 0 (with the prompt's or suite's length, penalties and stop strings);
/// for a sample, also their temperature, top-p, top-k and min-p (0.7 and 0.95 when neither gives a temperature
/// above 0 or a top-p), seeded with the sample's number.
pub fn params_for(
    suite: &Suite,
    prompt: &SuitePrompt,
    sample: u32,
    s: &RunnerSettings,
) -> SamplingParams {
    let o: Overrides = prompt.params.or(&suite.defaults);
    let base = SamplingParams::greedy(s.max_tokens);
    let mut p = if sample == 0 {
        o.for_greedy().apply(base)
    } else {
        let sampled = SamplingOverrides {
            temperature: o.temperature.filter(|t| *t > 0.0).or(Some(0.7)),
            top_p: o.top_p.or(Some(0.95)),
            seed: Some(u64::from(sample)),
            ..o.clone()
        };
        sampled.apply(base)
    };
    if let Some(cap) = s.max_tokens_cap {
        p.max_tokens = p.max_tokens.min(cap);
    }
    p
}

/// An f32 as the shortest decimal that reads back as it (0.7, not 0.699999988079071).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// One answer, from whichever engine made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// What answers a suite's conversations.
pub trait Answerer {
    /// Each conversation so far answered once, with its parameters; one result per conversation.
    fn answer_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        params: &[SamplingParams],
    ) -> Vec<Result<Answered, String>>;
    /// SHA-256 of the chat template the answers are made with (`none` without one).
    fn template_hash(&self) -> String;
    /// Keys added to every answer's stored parameters: what else decides the answers (a LoRA adapter's base; the
    /// engine, its version, the weight version and how the weights got there).
    fn provenance(&self) -> Vec<(&'static str, Value)>;
}

impl From<vibecheck_engine::Generation> for Answered {
    fn from(g: vibecheck_engine::Generation) -> Self {
        Self {
            text: g.text,
            prompt_tokens: g.usage.prompt_tokens as u32,
            completion_tokens: g.usage.completion_tokens as u32,
            finish_reason: g.finish_reason.as_str().to_string(),
            prefill_ms: g.timings.prefill_ms,
            decode_ms: g.timings.decode_ms,
        }
    }
}

/// vibecheck's own engine: the conversations decoded as one batch, or one at a time when the batch fails (a
/// prompt beyond the context, say), so one bad prompt fails alone.
impl Answerer for Model {
    fn answer_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        params: &[SamplingParams],
    ) -> Vec<Result<Answered, String>> {
        let prompts: Vec<Prompt> = conversations.iter().cloned().map(Prompt::Chat).collect();
        match self.generate_batch(&prompts, params) {
            Ok(gens) => gens.into_iter().map(|g| Ok(g.into())).collect(),
            Err(e) => {
                tracing::warn!(
                    "a batch of {} failed ({e}); answering one at a time",
                    prompts.len()
                );
                prompts
                    .iter()
                    .zip(params)
                    .map(|(p, sp)| {
                        self.generate(p, sp)
                            .map(Answered::from)
                            .map_err(|e: EngineError| e.to_string())
                    })
                    .collect()
            }
        }
    }

    fn template_hash(&self) -> String {
        template_hash(self)
    }

    fn provenance(&self) -> Vec<(&'static str, Value)> {
        self.adapter
            .iter()
            .map(|a| {
                ("base", json!({"name": a.base.source.name,
                                "hash": a.base.content_hash().unwrap_or_else(|e| format!("unknown: {e}"))}))
            })
            .collect()
    }
}

/// The parameters as stored with the answer, with the batch size it was decoded in (on the CPU a batch of up to
/// 31 sequences computes each exactly as a lone decode does, but larger batches take the prompt GEMM and a GPU's
/// batched products may round differently, so the batch is part of what reproduces an answer exactly).
/// A LoRA adapter's answers also record its base (name and content hash), without which they cannot be
/// reproduced.
fn params_json(
    p: &SamplingParams,
    batch: usize,
    quantize: Option<&str>,
    provenance: &[(&'static str, Value)],
) -> String {
    let mut v = json!({"temperature": short(p.temperature), "top_p": short(p.top_p), "top_k": p.top_k,
                       "min_p": short(p.min_p), "repetition_penalty": short(p.repetition_penalty),
                       "max_tokens": p.max_tokens, "seed": p.seed, "batch": batch});
    // Settings older answers never used are written only when set, so those answers' parameters read as before.
    if p.frequency_penalty != 0.0 {
        v["frequency_penalty"] = json!(short(p.frequency_penalty));
    }
    if p.presence_penalty != 0.0 {
        v["presence_penalty"] = json!(short(p.presence_penalty));
    }
    if !p.stop.is_empty() {
        v["stop"] = json!(p.stop);
    }
    if let Some(q) = quantize {
        v["quantize"] = json!(q);
    }
    for (key, value) in provenance {
        v[*key] = value.clone();
    }
    v.to_string()
}

/// SHA-256 of the chat template the answers were made with (`none` without one).
pub fn template_hash(model: &Model) -> String {
    hash_template(model.template.as_ref().map(|t| t.source.as_str()))
}

/// SHA-256 of a chat template's source, `none` without one.
pub fn hash_template(source: Option<&str>) -> String {
    match source {
        Some(s) => hex(&Sha256::digest(s.as_bytes())),
        None => "none".into(),
    }
}

/// Answers one conversation: each user turn in order, the model's own answers fed back.
pub fn answer(
    model: &dyn Answerer,
    suite: &Suite,
    job: Job,
    s: &RunnerSettings,
) -> Result<Vec<NewAnswer>, String> {
    answer_jobs(model, suite, &[job], s)
        .pop()
        .expect("one result per job")
}

/// Answers several conversations together: turn by turn, the conversations that have that turn are decoded as
/// one batch (each with its own sampling parameters and seed), and the answers are fed back for the next turn.
pub fn answer_jobs(
    model: &dyn Answerer,
    suite: &Suite,
    jobs: &[Job],
    s: &RunnerSettings,
) -> Vec<Result<Vec<NewAnswer>, String>> {
    let template = model.template_hash();
    let provenance = model.provenance();
    let params: Vec<SamplingParams> = jobs
        .iter()
        .map(|j| params_for(suite, &suite.prompts[j.prompt], j.sample, s))
        .collect();
    let mut messages: Vec<Vec<ChatMessage>> = jobs
        .iter()
        .map(|j| {
            suite.prompts[j.prompt]
                .system
                .iter()
                .map(|sys| ChatMessage::new("system", sys))
                .collect()
        })
        .collect();
    let mut results: Vec<Result<Vec<NewAnswer>, String>> =
        jobs.iter().map(|_| Ok(Vec::new())).collect();
    let turns = jobs
        .iter()
        .map(|j| suite.prompts[j.prompt].turns.len())
        .max()
        .unwrap_or(0);
    for turn in 0..turns {
        let active: Vec<usize> = (0..jobs.len())
            .filter(|&i| results[i].is_ok() && suite.prompts[jobs[i].prompt].turns.len() > turn)
            .collect();
        for &i in &active {
            messages[i].push(ChatMessage::new(
                "user",
                &suite.prompts[jobs[i].prompt].turns[turn],
            ));
        }
        let conversations: Vec<Vec<ChatMessage>> =
            active.iter().map(|&i| messages[i].clone()).collect();
        let batch_params: Vec<SamplingParams> = active.iter().map(|&i| params[i].clone()).collect();
        let generated = model.answer_batch(&conversations, &batch_params);
        for (&i, g) in active.iter().zip(generated) {
            match g {
                Ok(g) => {
                    messages[i].push(ChatMessage::new("assistant", &g.text));
                    if let Ok(turns) = &mut results[i] {
                        turns.push(NewAnswer {
                            turn: turn as u32,
                            text: g.text,
                            params: params_json(
                                &params[i],
                                active.len(),
                                s.quantize.as_deref(),
                                &provenance,
                            ),
                            seed: params[i].seed,
                            template_hash: template.clone(),
                            vibecheck_version: env!("CARGO_PKG_VERSION").to_string(),
                            prompt_tokens: g.prompt_tokens,
                            completion_tokens: g.completion_tokens,
                            finish_reason: g.finish_reason,
                            prefill_ms: g.prefill_ms,
                            decode_ms: g.decode_ms,
                        });
                    }
                }
                Err(e) => results[i] = Err(e),
            }
        }
    }
    results
}

/// What running a suite on a checkpoint did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutcome {
    /// Conversations answered and stored now.
    pub answered: usize,
    /// Conversations already in the store.
    pub skipped: usize,
    /// Conversations whose generation failed (each logged with its error).
    pub failed: Vec<(String, String)>,
    pub completion_tokens: u64,
    pub seconds: f64,
    /// Stopped early on request; what was answered is stored.
    pub interrupted: bool,
}

/// Progress of one checkpoint's suite.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub prompt_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The jobs of a suite not yet stored for this checkpoint.
pub fn pending_jobs(
    store: &Store,
    checkpoint_id: i64,
    suite: &Suite,
    suite_hash: &str,
    samples: u32,
) -> Result<(Vec<Job>, usize), StoreError> {
    let done = store.done(checkpoint_id, suite_hash)?;
    let mut jobs = Vec::new();
    let mut skipped = 0;
    for (i, p) in suite.prompts.iter().enumerate() {
        for sample in 0..=samples {
            if done.contains(&(p.id.clone(), sample)) {
                skipped += 1;
            } else {
                jobs.push(Job { prompt: i, sample });
            }
        }
    }
    Ok((jobs, skipped))
}

/// Runs the suite's pending jobs on a loaded checkpoint, storing each conversation when it is done. `keep_going`
/// is asked between conversations; returning false stops early (what is stored stays).
pub fn run_suite(
    model: &dyn Answerer,
    suite: &Suite,
    store: &mut Store,
    checkpoint_id: i64,
    s: &RunnerSettings,
    on_progress: &mut dyn FnMut(Progress<'_>),
    keep_going: &dyn Fn() -> bool,
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let hash = suite.hash();
    store.put_suite(&hash, &suite.name, &suite.canonical_json())?;
    let (jobs, skipped) = pending_jobs(store, checkpoint_id, suite, &hash, s.samples)?;
    let mut out = RunOutcome {
        skipped,
        ..Default::default()
    };
    let total = jobs.len();
    let mut done = 0;
    for chunk in jobs.chunks(s.batch.max(1)) {
        if !keep_going() {
            out.interrupted = true;
            break;
        }
        on_progress(Progress {
            done,
            total,
            prompt_id: &suite.prompts[chunk[0].prompt].id,
        });
        for (job, result) in chunk.iter().zip(answer_jobs(model, suite, chunk, s)) {
            let prompt = &suite.prompts[job.prompt];
            match result {
                Ok(turns) => {
                    out.completion_tokens += turns
                        .iter()
                        .map(|t| u64::from(t.completion_tokens))
                        .sum::<u64>();
                    if store.insert_conversation(
                        checkpoint_id,
                        &hash,
                        &prompt.id,
                        job.sample,
                        &turns,
                    )? {
                        out.answered += 1;
                    } else {
                        out.skipped += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(prompt = %prompt.id, sample = job.sample, "not answered: {e}");
                    out.failed.push((prompt.id.clone(), e));
                }
            }
        }
        done += chunk.len();
    }
    on_progress(Progress {
        done: total,
        total,
        prompt_id: "",
    });
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_take_every_sampling_setting_and_old_suites_keep_their_version() {
        let text = "[defaults]\nmax_tokens = 40\nstop = [\"END\"]\n[[prompts]]\nid = \"a\"\nprompt = \"x\"\n\
                    temperature = 0.9\nfrequency_penalty = 0.5\n[[prompts]]\nid = \"b\"\nprompt = \"y\"\n";
        let s = Suite::from_toml(text, "s", "f").unwrap();
        let settings = RunnerSettings::default();
        let greedy = params_for(&s, &s.prompts[0], 0, &settings);
        assert_eq!(
            (
                greedy.temperature,
                greedy.max_tokens,
                greedy.frequency_penalty
            ),
            (0.0, 40, 0.5),
            "the greedy answer takes length and penalties, not the temperature"
        );
        assert_eq!(greedy.stop, ["END"]);
        let sample = params_for(&s, &s.prompts[0], 2, &settings);
        assert_eq!((sample.temperature, sample.seed), (0.9, Some(2)));
        let other = params_for(&s, &s.prompts[1], 1, &settings);
        assert_eq!((other.temperature, other.top_p), (0.7, 0.95));
        // A suite that uses only the settings suites always had serializes as it did, so its version holds.
        let old = Suite::from_toml(
            "[[prompts]]\nid = \"x\"\nprompt = \"Hi\"\nmax_tokens = 9\ntop_k = 4\n",
            "s",
            "f",
        )
        .unwrap();
        assert_eq!(
            old.canonical_json(),
            r#"{"name":"s","prompts":[{"id":"x","turns":["Hi"],"params":{"max_tokens":9,"top_k":4}}]}"#
        );
    }
}
