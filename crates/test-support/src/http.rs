//! A scripted HTTP/1.1 server on 127.0.0.1 that answers raw responses, one connection at a time, and records
//! when each request arrived and what it was. For tests of what a client does with redirects and `Retry-After`,
//! where a framework server would be in the way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When its head had been read.
    pub at: Instant,
    /// The request line, such as `POST /v1/chat/completions HTTP/1.1`.
    pub line: String,
    /// The header lines as sent (`name: value`, one per line).
    pub headers: String,
    pub body: String,
}

/// A running scripted server (it lives until the test process ends).
pub struct RawServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

/// A complete response: the status line (`302 Found`), extra headers and a body; the connection is closed after it.
pub fn response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}

/// A 200 with an OpenAI chat completion whose message is `content`.
pub fn chat_reply(content: &str) -> String {
    let body = format!(
        r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":{}}}}}]}}"#,
        json_string(content)
    );
    response("200 OK", &[("content-type", "application/json")], &body)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn read_request(stream: &TcpStream) -> std::io::Result<(String, String, String)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut length = 0usize;
    let mut headers = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        headers.push_str(header.trim_end());
        headers.push('\n');
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((
        line.trim_end().to_string(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

impl RawServer {
    /// Answers the n-th request with `script[n]`, and every request after the script's end with its last entry.
    pub fn start(script: Vec<String>) -> Self {
        assert!(!script.is_empty(), "a script needs at least one response");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("a local address").port()
        );
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok((line, headers, body)) = read_request(&stream) else {
                    continue;
                };
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Hit {
                        at: Instant::now(),
                        line,
                        headers,
                        body,
                    });
                    seen.len() - 1
                };
                let reply = &script[n.min(script.len() - 1)];
                let _ = stream.write_all(reply.as_bytes());
                let _ = stream.flush();
            }
        });
        Self { url, hits }
    }

    /// The requests received so far, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}
