//! The one OpenAI-compatible HTTP client every peer of ours goes through: the judge and endpoint baselines
//! (`vibecheck-judge`, which adds retries), remote models relayed by the server (`vibecheck-server`'s
//! `remote.rs`, which adds the relay), and whatever launches or polls an engine next. It owns what they share:
//! the base URL and bearer key (never shown by `Debug`), timeouts, bounded reply bodies, OpenAI's error bodies,
//! `Retry-After`, server-sent events, and the loopback rule ([`is_loopback_host`]).
//!
//! Redirects are never followed: a 3xx is [`ClientError::Redirected`], naming where it pointed. (Following one
//! turns the POST into a body-less GET to whatever host the `Location` names, and whatever that host answers
//! would be taken for the peer's reply.)

use std::io::BufRead;
use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::Value;

/// Whether `host` names this machine: `localhost` (any case), `::1`, or a dotted `127.a.b.c` address, with or
/// without a port (`127.0.0.1:8080`, `[::1]:8080`). Takes a bind address, a `Host` header or a URL's authority.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() > 1 {
        // An IPv6 literal without brackets (a bind address): no port to strip.
        host
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let dotted_127 = || {
        let parts: Vec<&str> = name.split('.').collect();
        parts.len() == 4
            && parts[0] == "127"
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
    };
    name.eq_ignore_ascii_case("localhost") || name == "::1" || dotted_127()
}

/// The authority (`host[:port]`) of a URL such as `http://127.0.0.1:8080/v1`.
pub fn url_authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// How long a call may take.
#[derive(Debug, Clone, Copy)]
pub enum Timeouts {
    /// The whole call, from connecting to the last byte (a judge's call).
    Total(Duration),
    /// A limit per phase: connecting; then `read` for the reply's head, and `read` again for its whole body (a
    /// relayed stream is cut when its body takes longer than `read` in all, however active it is).
    Phases { connect: Duration, read: Duration },
}

impl Timeouts {
    /// The limit that fired, in seconds, for ureq's phase `phase`.
    fn seconds(self, phase: ureq::Timeout) -> u64 {
        match (self, phase) {
            (Timeouts::Total(d), _) => d.as_secs(),
            (Timeouts::Phases { connect, .. }, ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                connect.as_secs()
            }
            (Timeouts::Phases { read, .. }, _) => read.as_secs(),
        }
    }
}

/// A failed call, naming the URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// A limit ran out; `phase` is which (connect, receive response, receive body, ...).
    #[error("{url} did not answer within {secs} s ({phase})")]
    Timeout {
        url: String,
        secs: u64,
        phase: String,
    },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    /// A 3xx, not followed; `location` is where it pointed.
    #[error("{url} answered HTTP {status}: {}", redirect_detail(location))]
    Redirected {
        url: String,
        status: u16,
        location: Option<String>,
    },
}

impl ClientError {
    /// The message without the URL (for a caller that names the endpoint its own way).
    pub fn detail(&self) -> String {
        match self {
            ClientError::Timeout { secs, phase, .. } => {
                format!("no answer within {secs} s ({phase})")
            }
            ClientError::Transport { detail, .. } => detail.clone(),
            ClientError::Redirected {
                status, location, ..
            } => format!("HTTP {status}: {}", redirect_detail(location)),
        }
    }
}

fn redirect_detail(location: &Option<String>) -> String {
    match location {
        Some(to) => format!("redirected to {to}"),
        None => "a redirect without a Location header".into(),
    }
}

/// An OpenAI-compatible base URL (such as `http://127.0.0.1:8080/v1`) and its key.
#[derive(Clone)]
pub struct Client {
    base_url: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// An answer whose status line and headers are in; the body is still to be read.
pub struct Reply {
    pub url: String,
    pub status: u16,
    response: ureq::http::Response<ureq::Body>,
    timeouts: Timeouts,
}

/// What a stream held besides its events, once it ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamEnd {
    /// It ended with `data: [DONE]` (rather than the connection closing, or the reader stopping it).
    pub done: bool,
    /// Events handed on.
    pub events: usize,
    /// The start of any text that was not SSE (an HTML error page, a JSON body), to show in an error.
    pub other: String,
}

impl Client {
    /// A client for `base_url` (a trailing `/` is dropped).
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Whether the endpoint is this machine (then nothing leaves it).
    pub fn is_local(&self) -> bool {
        is_loopback_host(url_authority(&self.base_url))
    }

    fn agent(timeouts: Timeouts) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A 3xx comes back as a response, never followed (see the module doc).
            .max_redirects(0)
            .max_redirects_will_error(false);
        let config = match timeouts {
            Timeouts::Total(t) => config.timeout_global(Some(t)),
            Timeouts::Phases { connect, read } => config
                .timeout_connect(Some(connect))
                .timeout_recv_response(Some(read))
                .timeout_recv_body(Some(read)),
        };
        config.build().into()
    }

    fn failed(url: &str, timeouts: Timeouts, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Timeout(phase) => ClientError::Timeout {
                url: url.to_string(),
                secs: timeouts.seconds(phase),
                phase: phase.to_string(),
            },
            other => ClientError::Transport {
                url: url.to_string(),
                detail: other.to_string(),
            },
        }
    }

    fn finish(
        url: String,
        timeouts: Timeouts,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ClientError> {
        let response = sent.map_err(|e| Self::failed(&url, timeouts, e))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get("location")
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
            return Err(ClientError::Redirected {
                url,
                status,
                location,
            });
        }
        Ok(Reply {
            url,
            status,
            response,
            timeouts,
        })
    }

    /// `POST {base_url}{path}` with a JSON body.
    pub fn post_json(
        &self,
        path: &str,
        body: &Value,
        timeouts: Timeouts,
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut req = Self::agent(timeouts)
            .post(&url)
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let sent = req.send(body.to_string());
        Self::finish(url, timeouts, sent)
    }

    /// `GET {base_url}{path}`.
    pub fn get(&self, path: &str, timeouts: Timeouts) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut req = Self::agent(timeouts).get(&url);
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let sent = req.call();
        Self::finish(url, timeouts, sent)
    }
}

/// The first `max_chars` characters of a peer's text, marked with … when cut (for an error message that quotes
/// what a peer sent).
pub fn clip_chars(text: &str, max_chars: usize) -> String {
    let mut p: String = text.chars().take(max_chars).collect();
    if p.len() < text.len() {
        p.push('…');
    }
    p
}

/// The message of an OpenAI-style error body (`{"error": {"message": ...}}`, or a top-level `message`), else
/// the body's first `max_chars` characters.
pub fn error_detail(body: &str, max_chars: usize) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(max_chars).collect())
}

impl Reply {
    /// How long a 429 or 503 asks to be left alone (`Retry-After` in seconds; the HTTP-date form is not used by
    /// API servers and is ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        if !matches!(self.status, 429 | 503) {
            return None;
        }
        let value = self.response.headers().get("retry-after")?.to_str().ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    /// The whole body as text, refusing more than `limit` bytes.
    pub fn text(self, limit: u64) -> Result<String, ClientError> {
        let (url, timeouts) = (self.url, self.timeouts);
        self.response
            .into_body()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| Client::failed(&url, timeouts, e))
    }

    /// Reads the body as server-sent events: each `data:` payload but `[DONE]` goes to `on_data`, which may stop
    /// the stream early (`ControlFlow::Break`: the connection is closed, which stops the peer's generation). SSE's
    /// own fields and comments are skipped; other text is kept in [`StreamEnd::other`].
    pub fn events(
        self,
        on_data: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<StreamEnd, ClientError> {
        let (url, timeouts) = (self.url, self.timeouts);
        let reader = std::io::BufReader::new(self.response.into_body().into_reader());
        let mut end = StreamEnd::default();
        for line in reader.lines() {
            let line = line.map_err(|e| Client::failed(&url, timeouts, ureq::Error::Io(e)))?;
            let Some(data) = line.strip_prefix("data:") else {
                let field = line.split(':').next().unwrap_or("");
                if !line.trim().is_empty()
                    && !matches!(field, "" | "event" | "id" | "retry")
                    && end.other.len() < 200
                {
                    end.other.push_str(line.trim());
                    end.other.push(' ');
                }
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                end.done = true;
                return Ok(end);
            }
            end.events += 1;
            if on_data(data).is_break() {
                return Ok(end);
            }
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vibecheck_test_support::http::{chat_reply, response, RawServer};

    #[test]
    fn loopback_names() {
        for h in [
            "localhost",
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "127.evil.example",
            "127.0.0",
            "",
            "10.0.0.1:80",
            "0.0.0.0",
            "::",
            "[::2]:80",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        for (url, local) in [
            ("http://127.0.0.1:8080/v1", true),
            ("http://localhost:9000/v1", true),
            ("http://[::1]:8080/v1", true),
            ("https://api.openai.com/v1", false),
            ("http://gpu-box:8000/v1", false),
            ("http://127.0.0.1.nip.io/v1", false),
        ] {
            assert_eq!(Client::new(url, None).is_local(), local, "{url}");
        }
    }

    #[test]
    fn the_key_is_sent_but_never_shown() {
        let server = RawServer::start(vec![chat_reply("hi")]);
        let c = Client::new(&format!("{}/v1/", server.url), Some("sk-123".into()));
        assert!(!format!("{c:?}").contains("sk-123"));
        let reply = c
            .post_json(
                "/chat/completions",
                &serde_json::json!({"model": "m"}),
                Timeouts::Total(Duration::from_secs(10)),
            )
            .unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.text(1 << 20).unwrap().contains("\"hi\""));
        let hit = &server.hits()[0];
        assert_eq!(hit.line, "POST /v1/chat/completions HTTP/1.1");
        assert!(
            hit.headers
                .to_ascii_lowercase()
                .contains("authorization: bearer sk-123"),
            "{}",
            hit.headers
        );
    }

    #[test]
    fn redirects_are_errors_naming_the_target() {
        let target = RawServer::start(vec![chat_reply("wrong host")]);
        let to = format!("{}/v1/chat/completions", target.url);
        let server = RawServer::start(vec![response("302 Found", &[("location", &to)], "")]);
        let e = Client::new(&format!("{}/v1", server.url), None)
            .post_json(
                "/chat/completions",
                &serde_json::json!({}),
                Timeouts::Total(Duration::from_secs(10)),
            )
            .err()
            .unwrap();
        assert!(
            matches!(&e, ClientError::Redirected { status: 302, location: Some(l), .. } if *l == to),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("redirected to {to}")));
        assert!(target.hits().is_empty());
    }

    #[test]
    fn error_bodies_bodies_too_large_and_retry_after() {
        assert_eq!(
            error_detail(r#"{"error": {"message": "no such model"}}"#, 10),
            "no such model"
        );
        assert_eq!(error_detail(r#"{"message": "busy"}"#, 10), "busy");
        assert_eq!(error_detail("<html>oops</html>", 6), "<html>");
        let server = RawServer::start(vec![
            response("429 Too Many Requests", &[("retry-after", "7")], "{}"),
            response("200 OK", &[], &"x".repeat(5000)),
        ]);
        let c = Client::new(&server.url, None);
        let t = Timeouts::Total(Duration::from_secs(10));
        let r = c.get("/a", t).unwrap();
        assert_eq!(
            (r.status, r.retry_after()),
            (429, Some(Duration::from_secs(7)))
        );
        let e = c.get("/b", t).unwrap().text(1000).unwrap_err();
        assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    }

    #[test]
    fn events_are_read_until_done_and_other_text_is_kept() {
        let body =
            ": comment\nevent: x\ndata: {\"a\":1}\n\nnot sse\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        let server = RawServer::start(vec![
            response("200 OK", &[("content-type", "text/event-stream")], body),
            response("200 OK", &[("content-type", "text/event-stream")], body),
        ]);
        let c = Client::new(&server.url, None);
        let t = Timeouts::Total(Duration::from_secs(10));
        let mut seen = Vec::new();
        let end = c
            .get("/s", t)
            .unwrap()
            .events(&mut |d| {
                seen.push(d.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, ["{\"a\":1}", "{\"a\":2}"]);
        assert_eq!(
            (end.done, end.events, end.other.trim()),
            (true, 2, "not sse")
        );
        let end = c
            .get("/s", t)
            .unwrap()
            .events(&mut |_| ControlFlow::Break(()))
            .unwrap();
        assert_eq!((end.done, end.events), (false, 1));
    }

    #[test]
    fn a_timeout_names_the_limit_that_ran_out() {
        // A peer that takes the connection and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let t = Timeouts::Phases {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(1),
        };
        let e = Client::new(&url, None).get("/models", t).err().unwrap();
        assert!(
            matches!(&e, ClientError::Timeout { secs: 1, phase, .. } if phase == "receive response"),
            "{e}"
        );
        assert_eq!(e.detail(), "no answer within 1 s (receive response)");
        drop(held.join());
    }
}
