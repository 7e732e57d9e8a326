//! Checks every request passes before a handler sees it: the Host header on a loopback-bound server (so a web
//! page on another origin cannot reach it through DNS rebinding), the API key (compared in constant time), a JSON
//! content type on every POST (a web page on any origin can send a `text/plain` POST without a CORS preflight, so
//! without this check any page a user visits could start generations here), and a request body that arrives
//! whole within [`BODY_TIMEOUT`] (a client that stops sending mid-body is dropped, not waited for).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use vibecheck_client::is_loopback_host as loopback_host;

use crate::{ApiError, AppState};

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a client has to send a request's whole body once its headers are in.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest request body read (the same as axum's default limit for the routes' extractors).
const MAX_BODY: usize = 2 << 20;

fn is_json(req: &Request) -> bool {
    req.headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json")
                || (t.len() > 5 && t[t.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

/// Reads the whole body within [`BODY_TIMEOUT`] and hands the request on with it buffered.
async fn buffered(req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(e)) => {
            let too_large = e.into_inner().is::<http_body_util::LengthLimitError>();
            Err(ApiError {
                status: if too_large {
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    axum::http::StatusCode::BAD_REQUEST
                },
                message: if too_large {
                    format!("the request body is larger than {} MiB", MAX_BODY >> 20)
                } else {
                    "the request body could not be read (the connection broke off?)".into()
                },
                param: None,
                code: None,
            })
        }
        Err(_) => Err(ApiError {
            status: axum::http::StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
            param: None,
            code: Some("request_timeout"),
        }),
    }
}

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.settings.loopback() {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return ApiError::forbidden_host().into_response();
        }
    }
    if let Some(key) = &state.settings.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    if req.method() == axum::http::Method::POST {
        if !is_json(&req) {
            return ApiError {
                status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "send the request body as JSON with `Content-Type: application/json`"
                    .into(),
                param: None,
                code: Some("unsupported_media_type"),
            }
            .into_response();
        }
        return match buffered(req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
