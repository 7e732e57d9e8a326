//! The route table, the built-in pages, and the small endpoints: `/v1/models`, `/metrics` and `/health`. The
//! generation endpoints are in `chat.rs`, the timeline in `timeline.rs`, the arena in `arena.rs`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use vibecheck_engine::{Prompt, SamplingParams};

use crate::page::asset;
use crate::{ApiError, AppState};

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ui_page))
        .route("/ui/app.js", get(ui_js))
        .route("/ui/app.css", get(ui_css))
        .route(
            "/ui/timeline.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("ui/timeline.css")) }),
        )
        .route(
            "/ui/timeline.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("ui/timeline.js"),
                )
            }),
        )
        .route("/runs", get(crate::timeline::runs_page))
        .route("/runs/{run}", get(crate::timeline::run_page))
        .route(
            "/runs/{run}/prompts/{prompt}",
            get(crate::timeline::prompt_page),
        )
        .route(
            "/api/runs/{run}/timeline",
            get(crate::timeline::timeline_json),
        )
        .route(
            "/api/answers/{answer}/notes",
            post(crate::timeline::add_note),
        )
        .route(
            "/ui/arena.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("ui/arena.js"),
                )
            }),
        )
        .route("/arena", get(crate::arena::arena_page))
        .route("/arena/leaderboard", get(crate::arena::leaderboard_page))
        .route("/api/arena/battles", post(crate::arena::new_battle))
        .route("/api/arena/battles/{id}/vote", post(crate::arena::vote))
        .route(
            "/api/arena/battles/{id}/{side}",
            post(crate::arena::battle_side),
        )
        .route("/api/arena/prompt", get(crate::arena::draw_prompt))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(crate::chat::chat))
        .route("/v1/completions", post(crate::chat::completions))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::guard::guard,
        ))
        .with_state(state)
}

async fn ui_page() -> Response {
    asset("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn ui_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

async fn ui_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("ui/app.css"))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .entries()
        .iter()
        .map(|e| {
            json!({"id": e.id, "object": "model", "created": 0, "owned_by": "vibecheck",
                   "run": e.run, "step": e.step, "loaded": e.is_loaded(),
                   "format": e.format()})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let running = state.settings.max_concurrent.max(1) - state.slots.available_permits();
    let entries = state.registry.entries();
    let loaded = entries.iter().filter(|e| e.is_loaded()).count();
    let mut batches = vibecheck_engine::BatchCounts::default();
    for c in entries.iter().filter_map(|e| e.batch_counts()) {
        batches.decode_steps += c.decode_steps;
        batches.decoded_rows += c.decoded_rows;
        batches.prefill_chunks += c.prefill_chunks;
        batches.largest = batches.largest.max(c.largest);
    }
    let text = state.metrics.render(
        state.waiting.load(Ordering::SeqCst),
        running,
        loaded,
        entries.len(),
        batches,
    );
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// A health check's outcome, kept for [`crate::HEALTH_TTL`].
pub(crate) struct HealthAnswer {
    at: std::time::Instant,
    status: axum::http::StatusCode,
    body: Value,
}

/// `/health` generates a token, so it is admitted on its own terms (it needs no key, and must not be a way
/// around the generation queue): one check runs at a time, and callers that arrive meanwhile or shortly after
/// get its answer.
async fn health(State(state): State<AppState>) -> Response {
    let mut last = state.health.lock().await;
    let fresh = last.as_ref().filter(|h| h.at.elapsed() < crate::HEALTH_TTL);
    if fresh.is_none() {
        let resp = health_check(&state).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        *last = Some(HealthAnswer {
            at: std::time::Instant::now(),
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        });
    }
    let h = last.as_ref().expect("set above");
    (h.status, Json(h.body.clone())).into_response()
}

async fn health_check(state: &AppState) -> Response {
    let entries = state.registry.entries();
    let started = std::time::Instant::now();
    let Some(entry) = entries.iter().find(|e| e.remote().is_none()).cloned() else {
        // Only remote models: healthy when the first endpoint answers.
        let Some(remote) = entries.first().and_then(|e| e.remote()).cloned() else {
            return ApiError::internal("no model is served").into_response();
        };
        let id = remote.id.clone();
        return match tokio::task::spawn_blocking(move || remote.check()).await {
            Ok(Ok(())) => Json(json!({"status": "ok", "model": id, "generation_ms": started.elapsed().as_millis() as u64})).into_response(),
            Ok(Err(mut e)) => {
                e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                e.into_response()
            }
            Err(e) => ApiError::internal(e.to_string()).into_response(),
        };
    };
    let result = async {
        let model = state.registry.model(&entry).await?;
        tokio::task::spawn_blocking(move || {
            model.generate(&Prompt::Text("Hi".into()), &SamplingParams::greedy(1))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))
    }
    .await;
    match result {
        Ok(g) if g.usage.completion_tokens + usize::from(g.finish_reason == vibecheck_engine::FinishReason::Stop) >= 1 => {
            Json(json!({"status": "ok", "model": entry.id, "generation_ms": started.elapsed().as_millis() as u64})).into_response()
        }
        Ok(_) => ApiError::internal("the test generation produced nothing").into_response(),
        Err(mut e) => {
            e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            e.into_response()
        }
    }
}
