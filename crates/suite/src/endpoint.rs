//! A checkpoint answered by an engine vibecheck drives over HTTP (vLLM, SGLang): each conversation is one chat
//! request with the suite's sampling settings (vLLM, SGLang and llama.cpp all take `top_k`, `min_p` and
//! `repetition_penalty` beside OpenAI's fields), the requests of a batch sent at once so the engine batches them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vibecheck_client::{Client, Timeouts};
use vibecheck_engine::{ChatMessage, SamplingParams};

use crate::runner::{Answered, Answerer};

/// An OpenAI-compatible engine serving one checkpoint.
pub struct EndpointAnswerer {
    pub client: Client,
    /// The model name the engine answers to.
    pub model: String,
    /// SHA-256 of the checkpoint's own chat template (the engine applies it), `none` without one.
    pub template_hash: String,
    /// Stored with every answer: which engine, its version, the weight version, the swap path, the probe.
    pub provenance: Vec<(&'static str, Value)>,
}

/// The chat template a checkpoint folder carries (read as vibecheck's engine reads it), hashed as the local runner
/// hashes a loaded model's.
pub fn folder_template_hash(dir: &std::path::Path) -> Result<String, String> {
    vibecheck_engine::template::template_source_from_dir(dir)
        .map(|source| crate::runner::hash_template(source.as_deref()))
        .map_err(|e| e.to_string())
}

/// A request's body: the conversation and the sampling settings, in the engines' names.
fn body(model: &str, messages: &[ChatMessage], p: &SamplingParams) -> Value {
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut b = json!({"model": model, "messages": msgs, "max_tokens": p.max_tokens,
                       "temperature": p.temperature, "top_p": p.top_p, "stream": false});
    if p.top_k > 0 {
        b["top_k"] = json!(p.top_k);
    }
    if p.min_p > 0.0 {
        b["min_p"] = json!(p.min_p);
    }
    if p.repetition_penalty != 1.0 {
        b["repetition_penalty"] = json!(p.repetition_penalty);
    }
    if p.frequency_penalty != 0.0 {
        b["frequency_penalty"] = json!(p.frequency_penalty);
    }
    if p.presence_penalty != 0.0 {
        b["presence_penalty"] = json!(p.presence_penalty);
    }
    if let Some(seed) = p.seed {
        b["seed"] = json!(seed);
    }
    if !p.stop.is_empty() {
        b["stop"] = json!(p.stop);
    }
    b
}

impl EndpointAnswerer {
    fn one(&self, messages: &[ChatMessage], p: &SamplingParams) -> Result<Answered, String> {
        let started = Instant::now();
        let t = Timeouts::Phases {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(1800),
        };
        let reply = self
            .client
            .post_json("/chat/completions", &body(&self.model, messages, p), t)
            .map_err(|e| e.to_string())?;
        let status = reply.status;
        let text = reply.text(64 << 20).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "the engine answered HTTP {status}: {}",
                vibecheck_client::error_detail(&text, 300)
            ));
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("the engine's reply is not JSON ({e})"))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                format!(
                    "the engine's reply has no message text: {}",
                    vibecheck_client::clip_chars(&text, 200)
                )
            })?;
        Ok(Answered {
            text: content.to_string(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as u32,
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as u32,
            finish_reason: v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            // The engine does not say how its time split between the prompt and the answer.
            prefill_ms: 0.0,
            decode_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

impl Answerer for EndpointAnswerer {
    fn answer_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        params: &[SamplingParams],
    ) -> Vec<Result<Answered, String>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = conversations
                .iter()
                .zip(params)
                .map(|(c, p)| scope.spawn(move || self.one(c, p)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("the request thread panicked".into()))
                })
                .collect()
        })
    }

    fn template_hash(&self) -> String {
        self.template_hash.clone()
    }

    fn provenance(&self) -> Vec<(&'static str, Value)> {
        self.provenance.clone()
    }
}
