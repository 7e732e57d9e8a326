//! Counters for `GET /metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub chat_requests: AtomicU64,
    pub completion_requests: AtomicU64,
    pub errors: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub generations: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub generation_micros: AtomicU64,
    pub first_token_micros: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record(&self, g: &vibecheck_engine::Generation) {
        Self::add(&self.generations, 1);
        if g.finish_reason == vibecheck_engine::FinishReason::Cancelled {
            Self::add(&self.cancelled, 1);
        }
        Self::add(&self.prompt_tokens, g.usage.prompt_tokens as u64);
        Self::add(&self.completion_tokens, g.usage.completion_tokens as u64);
        let t = &g.timings;
        Self::add(
            &self.generation_micros,
            ((t.first_token_ms + t.decode_ms) * 1000.0) as u64,
        );
        Self::add(&self.first_token_micros, (t.first_token_ms * 1000.0) as u64);
    }

    /// The exposition text, with the gauges the caller reads at scrape time.
    pub fn render(
        &self,
        queue_depth: usize,
        running: usize,
        loaded: usize,
        served: usize,
        batches: vibecheck_engine::BatchCounts,
    ) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "vibecheck_requests_total",
            "counter",
            "Completion requests by endpoint.",
            &[
                (
                    "{endpoint=\"chat\"}".into(),
                    get(&self.chat_requests) as f64,
                ),
                (
                    "{endpoint=\"completions\"}".into(),
                    get(&self.completion_requests) as f64,
                ),
            ],
        );
        metric(
            "vibecheck_request_errors_total",
            "counter",
            "Requests answered with an error.",
            &[(String::new(), get(&self.errors) as f64)],
        );
        metric(
            "vibecheck_rejected_busy_total",
            "counter",
            "Requests refused with 429.",
            &[(String::new(), get(&self.rejected_busy) as f64)],
        );
        metric(
            "vibecheck_generations_total",
            "counter",
            "Finished generations.",
            &[(String::new(), get(&self.generations) as f64)],
        );
        metric(
            "vibecheck_cancelled_generations_total",
            "counter",
            "Generations stopped because the client went away.",
            &[(String::new(), get(&self.cancelled) as f64)],
        );
        metric(
            "vibecheck_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            &[(String::new(), get(&self.prompt_tokens) as f64)],
        );
        metric(
            "vibecheck_completion_tokens_total",
            "counter",
            "Tokens generated.",
            &[(String::new(), get(&self.completion_tokens) as f64)],
        );
        metric(
            "vibecheck_generation_seconds_total",
            "counter",
            "Time spent generating.",
            &[(String::new(), get(&self.generation_micros) as f64 / 1e6)],
        );
        metric(
            "vibecheck_first_token_seconds_total",
            "counter",
            "Sum of times to the first token.",
            &[(String::new(), get(&self.first_token_micros) as f64 / 1e6)],
        );
        metric(
            "vibecheck_queue_depth",
            "gauge",
            "Requests waiting for a generation slot.",
            &[(String::new(), queue_depth as f64)],
        );
        metric(
            "vibecheck_running_generations",
            "gauge",
            "Generations running now.",
            &[(String::new(), running as f64)],
        );
        metric(
            "vibecheck_loaded_models",
            "gauge",
            "Models loaded in memory.",
            &[(String::new(), loaded as f64)],
        );
        metric(
            "vibecheck_batch_steps_total",
            "counter",
            "Decode passes of the running batches (one token for every running sequence).",
            &[(String::new(), batches.decode_steps as f64)],
        );
        metric(
            "vibecheck_batch_tokens_total",
            "counter",
            "Tokens those passes decoded; divided by vibecheck_batch_steps_total, the mean batch size.",
            &[(String::new(), batches.decoded_rows as f64)],
        );
        metric(
            "vibecheck_batch_prefill_chunks_total",
            "counter",
            "Forward passes over the prompts of requests joining a batch.",
            &[(String::new(), batches.prefill_chunks as f64)],
        );
        metric(
            "vibecheck_batch_largest",
            "gauge",
            "The most sequences one decode pass has run (of loaded models).",
            &[(String::new(), batches.largest as f64)],
        );
        metric(
            "vibecheck_served_models",
            "gauge",
            "Models offered.",
            &[(String::new(), served as f64)],
        );
        out
    }
}
