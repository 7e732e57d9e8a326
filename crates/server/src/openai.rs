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
    /// OpenAI fields vibecheck does not implement: a request that uses one is refused naming it, rather than
    /// answered as if it had not asked ([`Unsupported`]).
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

/// The OpenAI request fields that change what an answer must be and that vibecheck does not implement. Each may be
/// sent in its "off" form (null, false, an empty list, `best_of: 1`, `response_format: {"type": "text"}`), which
/// asks for nothing.
#[derive(Debug, Default, Deserialize)]
pub struct Unsupported {
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    logit_bias: Option<Value>,
    best_of: Option<Value>,
    echo: Option<Value>,
    suffix: Option<Value>,
}

impl Unsupported {
    /// The first field set to something that asks for behaviour vibecheck does not have.
    fn first_used(&self) -> Option<&'static str> {
        let off = |v: &Option<Value>| match v {
            None | Some(Value::Null) | Some(Value::Bool(false)) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::String(s)) => s.is_empty() || s == "none" || s == "auto",
            _ => false,
        };
        let fields: [(&'static str, &Option<Value>, bool); 11] = [
            ("logprobs", &self.logprobs, off(&self.logprobs)),
            (
                "top_logprobs",
                &self.top_logprobs,
                off(&self.top_logprobs) || self.top_logprobs == Some(Value::from(0)),
            ),
            ("tools", &self.tools, off(&self.tools)),
            ("tool_choice", &self.tool_choice, off(&self.tool_choice)),
            ("functions", &self.functions, off(&self.functions)),
            (
                "function_call",
                &self.function_call,
                off(&self.function_call),
            ),
            (
                "response_format",
                &self.response_format,
                off(&self.response_format)
                    || self
                        .response_format
                        .as_ref()
                        .is_some_and(|f| f["type"] == "text"),
            ),
            ("logit_bias", &self.logit_bias, off(&self.logit_bias)),
            (
                "best_of",
                &self.best_of,
                off(&self.best_of) || self.best_of == Some(Value::from(1)),
            ),
            ("echo", &self.echo, off(&self.echo)),
            ("suffix", &self.suffix, off(&self.suffix)),
        ];
        fields
            .into_iter()
            .find(|(_, v, is_off)| v.is_some() && !is_off)
            .map(|(name, _, _)| name)
    }
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
        if let Some(field) = self.unsupported.first_used() {
            return Err(ApiError::bad_request(
                format!(
                    "`{field}` is not supported by vibecheck yet; leave it out (the answer would not be what it asks for)"
                ),
                Some(field),
            ));
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
