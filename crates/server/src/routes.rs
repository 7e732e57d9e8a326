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
        .route("/cost", get(crate::cost::cost_page))
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
            let mut m = json!({"id": e.id, "object": "model", "created": 0, "owned_by": "vibecheck",
                   "run": e.run, "step": e.step, "loaded": e.is_loaded(),
                   "format": e.format(), "status": e.status()});
            if let Some(p) = e.problem() {
                m["reason"] = json!(p.reason);
            }
            m
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
    // Served: the models that can answer; the ones listed with a problem are not offered.
    let served = entries.iter().filter(|e| e.problem().is_none()).count();
    let text = state.metrics.render(
        state.waiting.load(Ordering::SeqCst),
        running,
        loaded,
        served,
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
    // Health is per model: the server is healthy while any model can answer, and the ones that cannot are listed
    // with their reasons.
    let unavailable = |entries: &[std::sync::Arc<crate::registry::Entry>]| -> Vec<Value> {
        entries
            .iter()
            .filter_map(|e| {
                e.problem()
                    .map(|p| json!({"id": e.id, "status": p.status, "reason": p.reason}))
            })
            .collect()
    };
    let mut locals: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e.backend, crate::registry::Backend::Local(_)))
        .cloned()
        .collect();
    if locals.is_empty() {
        // Only remote models (or none that can load): healthy when the first endpoint answers.
        let Some(remote) = entries
            .iter()
            .filter(|e| e.problem().is_none())
            .find_map(|e| e.remote())
            .cloned()
        else {
            let mut e = ApiError::unavailable(format!(
                "no served model can answer: {}",
                describe(&unavailable(&entries))
            ));
            if entries.is_empty() {
                e = ApiError::internal("no model is served");
            }
            return e.into_response();
        };
        let id = remote.id.clone();
        return match tokio::task::spawn_blocking(move || remote.check()).await {
            Ok(Ok(())) => Json(json!({"status": "ok", "model": id, "generation_ms": started.elapsed().as_millis() as u64,
                                      "unavailable": unavailable(&entries)})).into_response(),
            Ok(Err(mut e)) => {
                e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                e.into_response()
            }
            Err(e) => ApiError::internal(e.to_string()).into_response(),
        };
    }
    // A loaded model first (no load needed), then those with no known problem, failed ones last; a few tries.
    locals.sort_by_key(|e| (!e.is_loaded(), e.problem().is_some()));
    let mut last_error = None;
    for entry in locals.into_iter().take(3) {
        let result = async {
            let model = state.registry.model(&entry).await?;
            tokio::task::spawn_blocking(move || {
                model.generate(&Prompt::Text("Hi".into()), &SamplingParams::greedy(1))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.for_client().to_string()))
        }
        .await;
        match result {
            Ok(g)
                if g.usage.completion_tokens
                    + usize::from(g.finish_reason == vibecheck_engine::FinishReason::Stop)
                    >= 1 =>
            {
                let entries = state.registry.entries();
                return Json(json!({"status": "ok", "model": entry.id,
                                   "generation_ms": started.elapsed().as_millis() as u64,
                                   "unavailable": unavailable(&entries)}))
                .into_response();
            }
            Ok(_) => {
                last_error = Some(ApiError::internal(format!(
                    "{}: the test generation produced nothing",
                    entry.id
                )))
            }
            Err(e) => last_error = Some(e),
        }
    }
    let entries = state.registry.entries();
    let mut e = last_error.unwrap_or_else(|| ApiError::internal("no model could be tried"));
    e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    e.message = format!(
        "no served model can answer: {}; last error: {}",
        describe(&unavailable(&entries)),
        e.message
    );
    e.into_response()
}

/// `id (status: reason)` for each model that cannot answer.
fn describe(unavailable: &[Value]) -> String {
    if unavailable.is_empty() {
        return "none is listed as unavailable".into();
    }
    unavailable
        .iter()
        .map(|u| {
            format!(
                "{} ({}: {})",
                u["id"].as_str().unwrap_or("?"),
                u["status"].as_str().unwrap_or("?"),
                u["reason"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
