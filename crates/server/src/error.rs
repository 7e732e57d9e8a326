//! One error type for the API: every failure becomes an OpenAI-style body with the matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was started with".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn forbidden_host() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message:
                "this server listens on loopback and answers only requests addressed to localhost"
                    .into(),
            param: None,
            code: Some("forbidden_host"),
        }
    }

    pub fn busy() -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is at its limit of running and waiting generations; retry shortly"
                .into(),
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// 503: the server is shutting down (or cannot serve this right now).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
            code: Some("unavailable"),
        }
    }

    pub fn shutting_down() -> Self {
        Self::unavailable(
            "the server is shutting down; retry against another instance or after it restarts",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }
}

/// The longest error message sent: messages may quote what the client sent (a model id, a field), and a client
/// must not be able to make an error echo a megabyte back.
pub const MAX_MESSAGE: usize = 600;

/// `text` cut to at most `max` bytes (at a character boundary), marked with … when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let param = self.param.as_deref().map(|p| clip(p, 64));
        let body = serde_json::json!({
            "error": {"message": clip(&self.message, MAX_MESSAGE), "type": self.kind(), "param": param, "code": self.code}
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}
