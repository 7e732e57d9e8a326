//! Judges (and endpoint baselines) as chat endpoints, over the one OpenAI-compatible client
//! (`vibecheck-client`: no redirects, bounded bodies, OpenAI error bodies): a timeout per call, bounded retries
//! with exponential backoff on timeouts, 429 and 5xx (waiting what a 429 or 503 asks for in `Retry-After`, up to
//! [`MAX_RETRY_AFTER`]), and errors that say which endpoint failed. A redirect is an error naming where it
//! pointed, so nothing another host answers is ever stored as the judge's verdict.

use std::time::Duration;

use serde_json::{json, Value};
use vibecheck_client::{error_detail, Client, ClientError, Timeouts};

/// The longest `Retry-After` a retry waits; a server asking for more gets its error returned at once.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// An OpenAI-compatible chat endpoint and model.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL such as `http://127.0.0.1:8080/v1` or `https://api.openai.com/v1` (no trailing slash).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Per call.
    pub timeout: Duration,
    /// Extra attempts after a retryable failure.
    pub retries: u32,
    /// First backoff; doubles on each retry.
    pub backoff: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("{url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url} answered HTTP {status}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("{url} sent a reply without a message: {detail}")]
    Malformed { url: String, detail: String },
}

impl CallError {
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Malformed { .. } => false,
        }
    }

    /// The error with `note` added to an HTTP status error's detail (other errors are returned as they are).
    fn noting(mut self, note: &str) -> Self {
        if let Self::Status { detail, .. } = &mut self {
            detail.push_str(" (");
            detail.push_str(note);
            detail.push(')');
        }
        self
    }
}

/// A failed attempt, and how long the server asked to be left alone (`Retry-After` on a 429 or 503).
struct Failed {
    error: CallError,
    retry_after: Option<Duration>,
}

impl From<CallError> for Failed {
    fn from(error: CallError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl Endpoint {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            timeout: Duration::from_secs(120),
            retries: 2,
            backoff: Duration::from_millis(500),
        }
    }

    /// `model@base_url`: how verdicts record which judge gave them.
    pub fn id(&self) -> String {
        format!("{}@{}", self.model, self.base_url)
    }

    /// Whether the endpoint is this machine (then nothing leaves it).
    pub fn is_local(&self) -> bool {
        self.client().is_local()
    }

    fn client(&self) -> Client {
        Client::new(&self.base_url, self.api_key.clone())
    }

    /// One chat completion (temperature 0), retried as configured: after the backoff, or after what the server
    /// asked for in `Retry-After` (at most [`MAX_RETRY_AFTER`]). Returns the assistant's text.
    pub fn chat(
        &self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> Result<String, CallError> {
        self.chat_with(messages, max_tokens, &serde_json::Map::new())
    }

    /// [`Endpoint::chat`] with more OpenAI request fields (`stop`, the penalties) added to the body.
    pub fn chat_with(
        &self,
        messages: &[(String, String)],
        max_tokens: usize,
        extra: &serde_json::Map<String, Value>,
    ) -> Result<String, CallError> {
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            let Failed { error, retry_after } = match self.chat_once(messages, max_tokens, extra) {
                Ok(text) => return Ok(text),
                Err(f) => f,
            };
            if !error.retryable() {
                return Err(error);
            }
            let pause = match retry_after {
                Some(asked) if asked > MAX_RETRY_AFTER => {
                    return Err(error.noting(&format!(
                        "it asked to be retried after {} s, longer than the {} s vibecheck waits; not retried",
                        asked.as_secs(),
                        MAX_RETRY_AFTER.as_secs()
                    )))
                }
                Some(asked) => asked,
                None => wait,
            };
            if attempt >= self.retries {
                return Err(match retry_after {
                    Some(asked) => error.noting(&format!(
                        "still refused after {attempt} retries; it asked to wait {} s more",
                        asked.as_secs()
                    )),
                    None => error,
                });
            }
            tracing::info!(endpoint = %self.base_url, "retrying in {} ms after: {error}", pause.as_millis());
            std::thread::sleep(pause);
            wait *= 2;
            attempt += 1;
        }
    }

    fn chat_once(
        &self,
        messages: &[(String, String)],
        max_tokens: usize,
        extra: &serde_json::Map<String, Value>,
    ) -> Result<String, Failed> {
        let mut body = json!({
            "model": self.model,
            "messages": messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
            "temperature": 0,
            "max_tokens": max_tokens,
        });
        for (k, v) in extra {
            body[k] = v.clone();
        }
        let reply = self
            .client()
            .post_json("/chat/completions", &body, Timeouts::Total(self.timeout))
            .map_err(CallError::from)?;
        let (url, status, asked) = (reply.url.clone(), reply.status, reply.retry_after());
        let text = reply.text(16 << 20).map_err(CallError::from)?;
        if status != 200 {
            return Err(Failed {
                error: CallError::Status {
                    url,
                    status,
                    detail: error_detail(&text, 300),
                },
                retry_after: asked,
            });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| CallError::Malformed {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                CallError::Malformed {
                    url,
                    detail: text.chars().take(300).collect(),
                }
                .into()
            })
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Timeout { url, secs, .. } => CallError::Timeout { url, secs },
            ClientError::Transport { url, detail } => CallError::Transport { url, detail },
            ClientError::Redirected {
                url,
                status,
                location,
            } => CallError::Status {
                url,
                status,
                detail: match location {
                    Some(to) => format!(
                        "redirected to {to} (vibecheck does not follow redirects: point --judge or --baseline-url \
                         at the final URL)"
                    ),
                    None => "a redirect without a Location header (vibecheck does not follow redirects)"
                        .into(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vibecheck_test_support::http::{chat_reply, response, RawServer};

    fn endpoint(server: &RawServer, retries: u32) -> Endpoint {
        let mut e = Endpoint::new(&format!("{}/v1", server.url), "m", None);
        e.timeout = Duration::from_secs(10);
        e.retries = retries;
        e.backoff = Duration::from_millis(10);
        e
    }

    fn ask(e: &Endpoint) -> Result<String, CallError> {
        e.chat(&[("user".into(), "Rate this.".into())], 16)
    }

    #[test]
    fn regression_judge_honours_retry_after() {
        for status in ["429 Too Many Requests", "503 Service Unavailable"] {
            let server = RawServer::start(vec![
                response(
                    status,
                    &[("retry-after", "1")],
                    r#"{"error":{"message":"slow down"}}"#,
                ),
                chat_reply("[[7]]"),
            ]);
            // The backoff alone would retry after 10 ms.
            assert_eq!(
                ask(&endpoint(&server, 2)).as_deref(),
                Ok("[[7]]"),
                "{status}"
            );
            let hits = server.hits();
            assert_eq!(hits.len(), 2, "{status}: one refusal, one answer");
            let waited = hits[1].at - hits[0].at;
            assert!(
                waited >= Duration::from_millis(900),
                "{status}: retried after {waited:?}, not after the 1 s asked for"
            );
        }
    }

    #[test]
    fn regression_judge_does_not_wait_past_the_retry_after_bound() {
        let server = RawServer::start(vec![response(
            "429 Too Many Requests",
            &[("retry-after", "3600")],
            r#"{"error":{"message":"quota exhausted"}}"#,
        )]);
        let started = std::time::Instant::now();
        let e = ask(&endpoint(&server, 2)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "it waited");
        assert_eq!(server.hits().len(), 1, "not retried");
        let text = e.to_string();
        assert!(
            text.contains("429")
                && text.contains("quota exhausted")
                && text.contains("retried after 3600 s, longer than the 60 s vibecheck waits"),
            "{text}"
        );
        // Retries used up while the server still asks to wait: the error says so.
        let server = RawServer::start(vec![response(
            "503 Service Unavailable",
            &[("retry-after", "0")],
            "busy",
        )]);
        let text = ask(&endpoint(&server, 1)).unwrap_err().to_string();
        assert_eq!(server.hits().len(), 2);
        assert!(
            text.contains("503") && text.contains("still refused after 1 retries"),
            "{text}"
        );
    }

    #[test]
    fn extra_fields_reach_the_endpoint() {
        let server = RawServer::start(vec![chat_reply("ok")]);
        let mut extra = serde_json::Map::new();
        extra.insert("stop".into(), json!(["END"]));
        extra.insert("presence_penalty".into(), json!(0.5));
        let e = endpoint(&server, 0);
        assert_eq!(
            e.chat_with(&[("user".into(), "hi".into())], 8, &extra)
                .as_deref(),
            Ok("ok")
        );
        let body: Value = serde_json::from_str(&server.hits()[0].body).unwrap();
        assert_eq!(
            (
                &body["stop"],
                &body["presence_penalty"],
                &body["max_tokens"]
            ),
            (&json!(["END"]), &json!(0.5), &json!(8))
        );
    }

    #[test]
    fn local_endpoints_are_recognised() {
        for (url, local) in [
            ("http://127.0.0.1:8080/v1", true),
            ("http://localhost:9000/v1", true),
            ("http://[::1]:8080/v1", true),
            ("https://api.openai.com/v1", false),
            ("http://gpu-box:8000/v1", false),
        ] {
            assert_eq!(Endpoint::new(url, "m", None).is_local(), local, "{url}");
        }
        assert!(
            !format!("{:?}", Endpoint::new("http://x", "m", Some("sk-1".into()))).contains("sk-1")
        );
    }
}
