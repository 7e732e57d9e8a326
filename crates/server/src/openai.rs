//! The OpenAI request and response shapes, and the one place requests are validated: a body becomes a
//! [`Parsed`] request without a model ([`parse`]), then a [`ValidRequest`] for one ([`Parsed::fit`]). Sampling
//! settings go through the engine's one table of limits.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use vibecheck_engine::sampling::ParamError;
use vibecheck_engine::{
    ChatMessage, EngineError, Generation, Model, Prompt, SamplingOverrides, SamplingParams,
    DEFAULT_MAX_TOKENS,
};

use crate::ApiError;

/// Choices per request at most.
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
    /// Keep generating past end-of-sequence tokens until `max_tokens` (vLLM's, SGLang's and llama.cpp's
    /// extension, which load tests use for answers of a fixed length).
    #[serde(default)]
    pub ignore_eos: bool,
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

/// Chat or text completion: decides the reply's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// A request body parsed and checked without a model: what the model must answer, and the settings the reply
/// needs. [`Parsed::fit`] turns it into a [`ValidRequest`] once the model is known.
#[derive(Debug)]
pub struct Parsed {
    pub model: String,
    pub kind: Kind,
    pub prompt: Prompt,
    /// Checked against the limits table ([`SamplingParams::validate_within`]) with the server's cap.
    pub params: SamplingParams,
    /// The client set `max_tokens`; without it the default shrinks to what the context has room for.
    pub max_tokens_given: bool,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

/// A request ready for the batch: the prompt as token ids that fit the model's context with `max_tokens`, and
/// everything the reply needs. Built in one place ([`Parsed::fit`]).
#[derive(Debug)]
pub struct ValidRequest {
    pub ids: Vec<u32>,
    pub params: SamplingParams,
    pub kind: Kind,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// The model name replies carry (the blind arena shows an alias instead of the real id).
    pub shown_as: String,
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError::bad_request(e.to_string(), Some(e.field))
    }
}

impl Common {
    /// The body's sampling settings: OpenAI's names over the one [`SamplingOverrides`] (a `top_p` of 0, which
    /// OpenAI accepts, keeps only the most likely token).
    fn overrides(&self) -> SamplingOverrides {
        let small = |x: f64| x as f32;
        SamplingOverrides {
            // Negative counts become 0, which the limits table refuses with its own message.
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .map(|m| m.clamp(0, i64::from(u32::MAX)) as usize),
            temperature: self.temperature.map(small),
            top_p: self.top_p.map(|p| {
                if p == 0.0 {
                    f32::MIN_POSITIVE
                } else {
                    small(p)
                }
            }),
            frequency_penalty: self.frequency_penalty.map(small),
            presence_penalty: self.presence_penalty.map(small),
            seed: self.seed,
            stop: self.stop.as_ref().map(|s| match s {
                Stop::One(s) => vec![s.clone()],
                Stop::Many(v) => v.clone(),
            }),
            ..SamplingOverrides::default()
        }
    }

    /// Everything about the request that needs no model: the unsupported fields, `n`, and the sampling settings
    /// over OpenAI's defaults (temperature 1), checked against the limits table with `max_tokens` capped at
    /// `cap`.
    fn parse(&self, kind: Kind, prompt: Prompt, cap: usize) -> Result<Parsed, ApiError> {
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
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N as i64).contains(&n) {
            return Err(ApiError::bad_request(
                format!("`n` must be between 1 and {MAX_N}"),
                Some("n"),
            ));
        }
        let openai_defaults = SamplingParams {
            temperature: 1.0,
            max_tokens: DEFAULT_MAX_TOKENS.min(cap),
            ..SamplingParams::default()
        };
        let overrides = self.overrides();
        let mut params = overrides.apply(openai_defaults);
        params.ignore_eos = self.ignore_eos;
        params.validate_within(cap)?;
        Ok(Parsed {
            model: self.model.clone(),
            kind,
            prompt,
            params,
            max_tokens_given: overrides.max_tokens.is_some(),
            n: n as usize,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// Reads a body as a request of type `T`; serde's message names the field and position, never the body.
pub fn read_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("the request body is not a valid request: {e}"),
            None,
        )
    })
}

/// A `/v1/chat/completions` or `/v1/completions` body (`kind`), parsed and checked without a model.
pub fn parse(kind: Kind, body: &[u8], cap: usize) -> Result<Parsed, ApiError> {
    match kind {
        Kind::Chat => {
            let req: ChatRequest = read_body(body)?;
            let prompt = Prompt::Chat(req.messages()?);
            req.common.parse(kind, prompt, cap)
        }
        Kind::Text => {
            let req: CompletionRequest = read_body(body)?;
            let prompt = match &req.prompt {
                Value::String(s) => s.clone(),
                Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                    a[0].as_str().unwrap_or_default().to_string()
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "`prompt` must be a string (or a list of one string)",
                        Some("prompt"),
                    ))
                }
            };
            req.common.parse(kind, Prompt::Text(prompt), cap)
        }
    }
}

impl Parsed {
    /// The request made ready for `model`, on a blocking thread (rendering the template and tokenizing a long
    /// prompt take a while): the template rendered, the prompt tokenized and checked against the context
    /// ([`Model::check_prompt`]), and a `max_tokens` the client did not set shrunk to the room the prompt leaves,
    /// so the default never pushes a prompt out of the context. One the client did set must fit as asked.
    pub async fn fit(self, model: Arc<Model>, shown_as: String) -> Result<ValidRequest, ApiError> {
        tokio::task::spawn_blocking(move || self.fit_blocking(&model, shown_as))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    }

    fn fit_blocking(self, model: &Model, shown_as: String) -> Result<ValidRequest, ApiError> {
        let ids = model
            .prompt_ids(&self.prompt)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
        let room = match model.check_prompt(&ids) {
            Ok(room) => room,
            Err(EngineError::ContextFull { .. }) => 0,
            Err(EngineError::Request(m)) => return Err(ApiError::bad_request(m, Some("messages"))),
            Err(e) => return Err(ApiError::bad_request(e.to_string(), Some("messages"))),
        };
        let mut params = self.params;
        if !self.max_tokens_given && room > 0 {
            params.max_tokens = params.max_tokens.min(room);
        }
        if params.max_tokens > room {
            let limit = model.decoder.max_positions();
            return Err(ApiError::bad_request(
                format!(
                    "the prompt has {} tokens and max_tokens is {}: {} in all, but this model's context holds {limit}",
                    ids.len(),
                    params.max_tokens,
                    ids.len() + params.max_tokens
                ),
                Some("max_tokens"),
            ));
        }
        Ok(ValidRequest {
            ids,
            params,
            kind: self.kind,
            n: self.n,
            stream: self.stream,
            include_usage: self.include_usage,
            shown_as,
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
