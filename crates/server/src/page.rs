//! What every page and asset shares: the built-in files with their security headers, HTML escaping, the page
//! shell of the timeline and arena, and access to the watch store (a few connections kept open, used on blocking
//! threads).

use axum::response::{IntoResponse, Response};
use vibecheck_store::Store;

use crate::{ApiError, AppState};

/// Pages come from the binary itself and may only load from this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A built-in file, with the pages' security headers.
pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            ("content-type", content_type),
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// A page rendered here, with the same headers as the built-in assets.
pub(crate) fn html(body: String) -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `&`, `<`, `>`, `"` and `'` escaped: safe in element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment percent-encoded (run names and prompt ids may hold any character).
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A page of the timeline's look, with one script of ours.
pub fn page_with_script(title: &str, body: &str, script: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · vibecheck</title>\
         <link rel=\"stylesheet\" href=\"/ui/timeline.css\"><script src=\"{script}\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/runs\">vibecheck</a> <a href=\"/runs\">runs</a> \
         <a href=\"/\">chat</a> <a href=\"/arena\">arena</a> <a href=\"/arena/leaderboard\">leaderboard</a> <a href=\"/cost\">cost</a></header>\
         <main>{body}</main></body></html>",
        esc(title)
    );
    self::html(html)
}

/// Connections to the watch store, opened (and migrated) once each and reused by later requests. WAL lets a
/// watcher write meanwhile; a connection whose request failed is closed rather than reused.
pub struct StorePool {
    path: std::path::PathBuf,
    idle: parking_lot::Mutex<Vec<Store>>,
}

/// Idle connections kept at most.
const IDLE_CONNECTIONS: usize = 4;

impl StorePool {
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            idle: parking_lot::Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn take(&self) -> Result<Store, ApiError> {
        if let Some(store) = self.idle.lock().pop() {
            return Ok(store);
        }
        Store::open(&self.path).map_err(|e| ApiError::internal(e.to_string()))
    }

    fn give_back(&self, store: Store) {
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(store);
        }
    }
}

/// Runs `f` with a connection to the watch store on a blocking thread (SQLite calls block), or a 404 that says
/// how to get a store when this server has none.
pub(crate) async fn with_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(pool) = state.store.clone() else {
        return Err(ApiError::not_found(
            "this server has no watch store (timeline, judges and arena votes live there); start it with \
             `vibecheck watch RUN --serve` or `vibecheck demo`",
        ));
    };
    tokio::task::spawn_blocking(move || {
        let mut store = pool.take()?;
        let result = f(&mut store);
        if result.is_ok() {
            pool.give_back(store);
        }
        result
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}
