//! Remote models: an OpenAI-compatible endpoint (a vLLM, TGI or llama.cpp server, a hosted API) served under an
//! id of ours beside local checkpoints. Requests are validated here exactly as for local models, then forwarded
//! with the upstream model name; streamed replies are relayed event by event, and a client that goes away closes
//! the upstream connection, which stops the upstream generation.
//!
//! Calls go through the one OpenAI-compatible client (`vibecheck-client`), so redirects are never followed: a 3xx
//! from upstream is an upstream error naming where it pointed.

use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::Value;
use vibecheck_client::{error_detail, Client, ClientError, Reply, Timeouts};

use crate::ApiError;

/// One remote endpoint, as given on the command line: `id=NAME,url=BASE_URL[,model=UPSTREAM][,key-env=VAR]`.
#[derive(Clone)]
pub struct RemoteEndpoint {
    /// The id clients use here.
    pub id: String,
    /// The OpenAI base URL, e.g. `http://gpu-box:8000/v1` (no trailing slash).
    pub base_url: String,
    /// The model name the upstream server expects (defaults to `id`).
    pub model: String,
    /// The environment variable the API key was read from, if any (the key itself is never printed).
    pub key_env: Option<String>,
    api_key: Option<String>,
}

impl std::fmt::Debug for RemoteEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEndpoint")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("key_env", &self.key_env)
            .finish()
    }
}

impl RemoteEndpoint {
    /// Parses `id=NAME,url=BASE_URL[,model=UPSTREAM][,key-env=VAR]`; the key is read from `VAR` now, so a missing
    /// variable is an error at start rather than a 401 later.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut id = None;
        let mut url = None;
        let mut model = None;
        let mut key_env = None;
        for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("{part:?} in --remote {spec:?} is not key=value; expected id=NAME,url=BASE_URL[,model=UPSTREAM][,key-env=VAR]")
            })?;
            let v = v.trim().to_string();
            match k.trim() {
                "id" => id = Some(v),
                "url" => url = Some(v),
                "model" => model = Some(v),
                "key-env" => key_env = Some(v),
                other => {
                    return Err(format!(
                        "unknown key {other:?} in --remote {spec:?}; the keys are id, url, model and key-env"
                    ))
                }
            }
        }
        let id = id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("--remote {spec:?} needs id=NAME"))?;
        let url = url.ok_or_else(|| {
            format!("--remote {spec:?} needs url=BASE_URL (such as http://host:8000/v1)")
        })?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "url {url:?} in --remote {spec:?} must start with http:// or https://"
            ));
        }
        let api_key = match &key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("--remote {spec:?} reads its API key from ${var}, which is not set")
            })?),
            None => None,
        };
        Ok(Self {
            model: model
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| id.clone()),
            id,
            base_url: url.trim_end_matches('/').to_string(),
            key_env,
            api_key,
        })
    }

    /// An endpoint made by vibecheck itself (a launched engine), with its key.
    pub fn new(id: &str, base_url: &str, model: &str, api_key: Option<String>) -> Self {
        Self {
            id: id.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            key_env: None,
            api_key,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.base_url, self.api_key.clone())
    }

    /// A failed call as our error: a redirect names where it pointed, anything else says the endpoint did not
    /// answer.
    fn client_error(&self, e: ClientError) -> ApiError {
        let (message, code) = match &e {
            ClientError::Redirected { status, location, .. } => (
                format!(
                    "{} answered {status}: {} (vibecheck does not follow redirects: give --remote the final url=)",
                    self.base_url,
                    match location {
                        Some(to) => format!("redirected to {to}"),
                        None => "a redirect without a Location header".into(),
                    }
                ),
                "upstream_error",
            ),
            _ => (
                format!(
                    "the endpoint behind model {:?} ({}) did not answer: {}",
                    self.id,
                    self.base_url,
                    e.detail()
                ),
                "upstream_unreachable",
            ),
        };
        ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            message,
            param: None,
            code: Some(code),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Reply, ApiError> {
        self.client()
            .post_json(path, &self.upstream_body(body), RELAY_TIMEOUTS)
            .map_err(|e| self.client_error(e))
    }

    /// An upstream error status becomes ours, with its message when it sent an OpenAI-style body.
    fn upstream_error(&self, status: u16, body: &str) -> ApiError {
        let detail = error_detail(body, 200);
        ApiError {
            status: axum::http::StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
            message: format!("{} answered {status}: {detail}", self.base_url),
            param: None,
            code: Some("upstream_error"),
        }
    }

    /// The request as the upstream server should see it: its model name in place of ours.
    fn upstream_body(&self, body: &Value) -> Value {
        let mut body = body.clone();
        body["model"] = Value::String(self.model.clone());
        body
    }

    /// A non-streaming call: the upstream JSON with our model id in it.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let reply = self.post(path, body)?;
        let status = reply.status;
        let text = reply.text(64 << 20).map_err(|e| self.client_error(e))?;
        if status != 200 {
            return Err(self.upstream_error(status, &text));
        }
        let mut v: Value = serde_json::from_str(&text).map_err(|e| ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            message: format!("{} sent a reply that is not JSON: {e}", self.base_url),
            param: None,
            code: Some("upstream_error"),
        })?;
        v["model"] = Value::String(self.id.clone());
        Ok(v)
    }

    /// A streaming call: each upstream `data:` event (with our model id) goes to `on_event`, which returns false
    /// when the client is gone; `[DONE]` ends it. Blocking: run it on a blocking thread.
    pub fn stream(
        &self,
        path: &str,
        body: &Value,
        on_event: &mut dyn FnMut(String) -> bool,
    ) -> Result<(), ApiError> {
        let reply = self.post(path, body)?;
        if reply.status != 200 {
            let status = reply.status;
            let text = reply.text(1 << 20).unwrap_or_default();
            return Err(self.upstream_error(status, &text));
        }
        let mut failed = None;
        let mut left = false;
        let end = reply
            .events(&mut |data| {
                let event = match serde_json::from_str::<Value>(data) {
                    Ok(mut v) if v.is_object() => {
                        if v.get("model").is_some() {
                            v["model"] = Value::String(self.id.clone());
                        }
                        v.to_string()
                    }
                    _ => {
                        failed = Some(self.bad_stream(&format!(
                            "sent a stream event that is not a JSON object: {}",
                            prefix(data)
                        )));
                        return ControlFlow::Break(());
                    }
                };
                if on_event(event) {
                    ControlFlow::Continue(())
                } else {
                    left = true;
                    ControlFlow::Break(())
                }
            })
            .map_err(|e| self.client_error(e))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if left {
            return Ok(());
        }
        match (end.done, end.events) {
            (true, 0) => Err(self.bad_stream(&format!(
                "ended its stream without any event{}",
                shown(&end.other)
            ))),
            (true, _) => Ok(()),
            (false, 0) => Err(self.bad_stream(&format!(
                "answered a streaming request without a stream{}",
                shown(&end.other)
            ))),
            (false, _) => Err(self
                .bad_stream("closed the stream before its end ([DONE]); the answer is incomplete")),
        }
    }

    /// A stream that is not what an OpenAI-compatible server sends.
    fn bad_stream(&self, what: &str) -> ApiError {
        ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            message: format!("{} (behind model {:?}) {what}", self.base_url, self.id),
            param: None,
            code: Some("upstream_error"),
        }
    }

    /// Whether the endpoint answers `GET /models` (used by `/health` when only remote models are served).
    pub fn check(&self) -> Result<(), ApiError> {
        let timeouts = Timeouts::Phases {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(10),
        };
        let reply = self
            .client()
            .get("/models", timeouts)
            .map_err(|e| self.client_error(e))?;
        match reply.status {
            200 => Ok(()),
            s => Err(self.upstream_error(s, "")),
        }
    }
}

/// A relayed call may take long (a big model's long answer): 10 s to connect, then up to 600 s for the reply's
/// head and 600 s for its body.
const RELAY_TIMEOUTS: Timeouts = Timeouts::Phases {
    connect: Duration::from_secs(10),
    read: Duration::from_secs(600),
};

/// The first 200 characters of an upstream's text, for an error message.
fn prefix(text: &str) -> String {
    vibecheck_client::clip_chars(text, 200)
}

/// `; its reply began: …` when there is something to show.
fn shown(other: &str) -> String {
    if other.trim().is_empty() {
        String::new()
    } else {
        format!("; its reply began: {}", prefix(other.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_the_problem() {
        let r = RemoteEndpoint::parse("id=big,url=http://gpu:8000/v1/,model=meta/llama").unwrap();
        assert_eq!(
            (r.id.as_str(), r.base_url.as_str(), r.model.as_str()),
            ("big", "http://gpu:8000/v1", "meta/llama")
        );
        assert_eq!(
            RemoteEndpoint::parse("id=a,url=https://x/v1")
                .unwrap()
                .model,
            "a"
        );
        for (spec, needle) in [
            ("url=http://x/v1", "needs id"),
            ("id=a", "needs url"),
            ("id=a,url=ftp://x", "must start with http"),
            ("id=a,url=http://x,colour=red", "unknown key \"colour\""),
            (
                "id=a,url=http://x,key-env=VIBECHECK_TEST_SURELY_UNSET_VAR",
                "is not set",
            ),
            ("id=a,http://x/v1", "not key=value"),
        ] {
            let e = RemoteEndpoint::parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn regression_remote_does_not_follow_redirects() {
        use vibecheck_test_support::http::{chat_reply, response, RawServer};
        for code in [
            "301 Moved Permanently",
            "302 Found",
            "303 See Other",
            "307 Temporary Redirect",
        ] {
            // Where the redirect points: a server that would answer both the relayed call and the health check.
            let target = RawServer::start(vec![chat_reply("hello from the wrong host")]);
            let to = format!("{}/v1/chat/completions", target.url);
            let upstream = RawServer::start(vec![response(code, &[("location", &to)], "")]);
            let r = RemoteEndpoint::parse(&format!("id=a,url={}/v1", upstream.url)).unwrap();
            let body =
                serde_json::json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]});
            let e = r.call("/chat/completions", &body).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_GATEWAY, "{code}");
            assert!(
                e.message.contains(&format!("redirected to {to}")),
                "{code}: {}",
                e.message
            );
            let e = r
                .stream("/chat/completions", &body, &mut |_| true)
                .unwrap_err();
            assert!(e.message.contains(&to), "{code}: {}", e.message);
            let e = r.check().unwrap_err();
            assert!(e.message.contains(&to), "{code}: {}", e.message);
            assert_eq!(upstream.hits().len(), 3, "{code}");
            assert!(
                target.hits().is_empty(),
                "{code}: the redirect target was called: {:?}",
                target.hits()
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        std::env::set_var("VIBECHECK_TEST_REMOTE_KEY", "sk-secret-123");
        let r = RemoteEndpoint::parse("id=a,url=http://x/v1,key-env=VIBECHECK_TEST_REMOTE_KEY")
            .unwrap();
        assert!(!format!("{r:?}").contains("sk-secret"));
        assert_eq!(r.api_key.as_deref(), Some("sk-secret-123"));
    }
}
