//! The OpenAI-compatible chat client judges (and endpoint baselines) are called through: a timeout per call,
//! bounded retries with exponential backoff on timeouts, 429 and 5xx, and errors that say which endpoint failed.
//!
//! Redirects are never followed: a 3xx is an error naming where it pointed. (Following one turns the POST into a
//! body-less GET to whatever host the `Location` names, and whatever that host answers would be stored as the
//! judge's verdict.)

use std::time::Duration;

use serde_json::{json, Value};

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
        let rest = self
            .base_url
            .split_once("://")
            .map_or(self.base_url.as_str(), |(_, r)| r);
        let host = rest.split(['/', ':']).next().unwrap_or("");
        matches!(host, "127.0.0.1" | "localhost")
            || host.starts_with("127.")
            || rest.starts_with("[::1]")
    }

    /// One chat completion (temperature 0), retried as configured. Returns the assistant's text.
    pub fn chat(
        &self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> Result<String, CallError> {
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            match self.chat_once(messages, max_tokens) {
                Err(e) if e.retryable() && attempt < self.retries => {
                    tracing::info!(endpoint = %self.base_url, "retrying after: {e}");
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn chat_once(
        &self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> Result<String, CallError> {
        let url = format!("{}/chat/completions", self.base_url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            // A 3xx comes back as a response, never followed (see the module doc).
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build()
            .into();
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
            "temperature": 0,
            "max_tokens": max_tokens,
        });
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let failed = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => CallError::Timeout {
                url: url.clone(),
                secs: self.timeout.as_secs(),
            },
            other => CallError::Transport {
                url: url.clone(),
                detail: other.to_string(),
            },
        };
        let resp = req.send(body.to_string()).map_err(failed)?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            let target = resp
                .headers()
                .get("location")
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
            let detail = match target {
                Some(to) => format!(
                    "redirected to {to} (vibecheck does not follow redirects: point --judge or --baseline-url at \
                     the final URL)"
                ),
                None => "a redirect without a Location header (vibecheck does not follow redirects)".into(),
            };
            return Err(CallError::Status {
                url,
                status,
                detail,
            });
        }
        let text = resp
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(failed)?;
        if status != 200 {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(CallError::Status {
                url,
                status,
                detail,
            });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| CallError::Malformed {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CallError::Malformed {
                url,
                detail: text.chars().take(300).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
