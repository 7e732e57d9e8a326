//! The OpenAI request and response shapes, and the one place requests are validated.

use serde::Deserialize;
use serde_json::{json, Value};
use vibecheck_engine::{ChatMessage, Generation, SamplingParams};

use crate::ApiError;

pub const MAX_STOP: usize = 4;
pub const MAX_N: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    #[serde(flatten)]
    pub common: Common,
}

/// A request after validation: engine parameters and what the response needs.
pub struct Valid {
    pub model: String,
    pub params: SamplingParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// The model name replies carry instead of the real id (the blind arena hides which model answered).
    pub shown_as: Option<String>,
    /// The client set `max_tokens`; without it the default shrinks to what the context has room for.
    pub max_tokens_given: bool,
}

fn number(v: Option<f64>, name: &str, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    let x = v.unwrap_or(default);
    if !x.is_finite() || x < lo || x > hi {
        return Err(ApiError::bad_request(
            format!("`{name}` must be a number between {lo} and {hi}"),
            Some(name),
        ));
    }
    Ok(x as f32)
}

impl Common {
    pub fn validate(&self, cap: usize) -> Result<Valid, ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::bad_request("`model` is required", Some("model")));
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(256.min(cap as i64));
        if max_tokens <= 0 || max_tokens as u64 > cap as u64 {
            return Err(ApiError::bad_request(
                format!("`max_tokens` must be between 1 and {cap}"),
                Some("max_tokens"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N as i64).contains(&n) {
            return Err(ApiError::bad_request(
                format!("`n` must be between 1 and {MAX_N}"),
                Some("n"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::bad_request(
                format!("`stop` takes at most {MAX_STOP} non-empty strings"),
                Some("stop"),
            ));
        }
        let params = SamplingParams {
            temperature: number(self.temperature, "temperature", 0.0, 2.0, 1.0)?,
            top_p: number(self.top_p, "top_p", 0.0, 1.0, 1.0)?.max(f32::MIN_POSITIVE),
            frequency_penalty: number(self.frequency_penalty, "frequency_penalty", -2.0, 2.0, 0.0)?,
            presence_penalty: number(self.presence_penalty, "presence_penalty", -2.0, 2.0, 0.0)?,
            seed: self.seed,
            max_tokens: max_tokens as usize,
            stop,
            ..SamplingParams::default()
        };
        Ok(Valid {
            shown_as: None,
            max_tokens_given: self.max_completion_tokens.or(self.max_tokens).is_some(),
            model: self.model.clone(),
            params,
            n: n as usize,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl ChatRequest {
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "`messages` must not be empty",
                Some("messages"),
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                            return Err(ApiError::bad_request(
                                format!(
                                    "messages[{i}] has a {:?} part; only text is supported",
                                    p.kind
                                ),
                                Some("messages"),
                            ));
                        }
                        parts
                            .iter()
                            .filter_map(|p| p.text.clone())
                            .collect::<Vec<_>>()
                            .join("")
                    }
                };
                if !matches!(
                    m.role.as_str(),
                    "system" | "user" | "assistant" | "developer" | "tool"
                ) {
                    return Err(ApiError::bad_request(
                        format!("messages[{i}].role {:?} is not a chat role", m.role),
                        Some("messages"),
                    ));
                }
                let role = if m.role == "developer" {
                    "system"
                } else {
                    m.role.as_str()
                };
                Ok(ChatMessage::new(role, &content))
            })
            .collect()
    }
}

pub fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", vibecheck_engine::sampling::fresh_seed())
}

pub fn finish(g: &Generation) -> &'static str {
    g.finish_reason.as_str()
}
