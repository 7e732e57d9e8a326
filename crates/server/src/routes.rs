//! Handlers: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (JSON and SSE streams), `/health`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use vibecheck_engine::{BatchEvent, Generation, Model, Prompt, SamplingParams};

use crate::openai::{self, ChatRequest, CompletionRequest, Valid};
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
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::guard::guard,
        ))
        .with_state(state)
}

/// Pages come from the binary itself and may only load from this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
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

async fn ui_page() -> Response {
    asset("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn ui_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

async fn ui_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("ui/app.css"))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and position; it never repeats the body.
        ApiError::bad_request(
            format!("the request body is not a valid request: {e}"),
            None,
        )
    })
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

/// A generation slot, or 429 when too many requests already wait.
async fn slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    if state.shutdown.draining() {
        return Err(ApiError::shutting_down());
    }
    if let Ok(p) = state.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    if state.waiting.fetch_add(1, Ordering::SeqCst) >= state.settings.queue {
        state.waiting.fetch_sub(1, Ordering::SeqCst);
        crate::metrics::Metrics::add(&state.metrics.rejected_busy, 1);
        return Err(ApiError::busy());
    }
    let permit = state.slots.clone().acquire_owned().await;
    state.waiting.fetch_sub(1, Ordering::SeqCst);
    // The slots close when a shutdown begins: whoever still waits is refused rather than started.
    permit.map_err(|_| ApiError::shutting_down())
}

/// Tokenizes the prompt and checks it plus `max_tokens` fits the model's context. A `max_tokens` the client did
/// not set first shrinks to the room the prompt leaves, so the default never pushes a prompt out of the context.
fn prepare(
    model: &Model,
    prompt: &Prompt,
    max_tokens: &mut usize,
    client_set: bool,
) -> Result<Vec<u32>, ApiError> {
    let ids = model
        .prompt_ids(prompt)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let limit = model.decoder.max_positions();
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "the prompt is empty",
            Some("messages"),
        ));
    }
    let room = limit.saturating_sub(ids.len());
    if !client_set && room > 0 {
        *max_tokens = (*max_tokens).min(room);
    }
    if ids.len() + *max_tokens > limit {
        return Err(ApiError::bad_request(
            format!(
                "the prompt has {} tokens and max_tokens is {}: {} in all, but this model's context holds {limit}",
                ids.len(),
                *max_tokens,
                ids.len() + *max_tokens
            ),
            Some("max_tokens"),
        ));
    }
    Ok(ids)
}

/// The body, or an OpenAI-style error (413 past the 2 MiB limit) instead of axum's plain-text rejection.
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError {
        status: r.status(),
        message: format!("the request body could not be read: {}", r.body_text()),
        param: None,
        code: None,
    })
}

/// Counts an endpoint's request, and its error if it fails.
async fn counted(
    state: AppState,
    counter: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
    work: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    crate::metrics::Metrics::add(counter(&state.metrics), 1);
    work.await
        .inspect_err(|_| crate::metrics::Metrics::add(&state.metrics.errors, 1))
}

async fn chat(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    counted(
        state.clone(),
        |m| &m.chat_requests,
        chat_inner(state, body, None),
    )
    .await
}

/// A chat completion; with `shown_as`, replies name that instead of the model (the arena's blind answers).
pub(crate) async fn chat_inner(
    state: AppState,
    body: Result<Bytes, BytesRejection>,
    shown_as: Option<String>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let (mut valid, messages) = chat_request(&body, state.settings.max_tokens_cap)?;
    valid.shown_as = shown_as;
    if let Some(remote) = state.registry.get(&valid.model)?.remote() {
        return forward(
            remote.clone(),
            "/chat/completions",
            parse(&body)?,
            valid.stream,
        )
        .await;
    }
    run(state, valid, Prompt::Chat(messages), Kind::Chat).await
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    counted(
        state.clone(),
        |m| &m.completion_requests,
        completions_inner(state, body),
    )
    .await
}

async fn completions_inner(
    state: AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let (valid, prompt) = completion_request(&body, state.settings.max_tokens_cap)?;
    if let Some(remote) = state.registry.get(&valid.model)?.remote() {
        return forward(remote.clone(), "/completions", parse(&body)?, valid.stream).await;
    }
    run(state, valid, Prompt::Text(prompt), Kind::Text).await
}

/// A chat request's body parsed and validated (everything that needs no model).
fn chat_request(
    body: &[u8],
    cap: usize,
) -> Result<(Valid, Vec<vibecheck_engine::ChatMessage>), ApiError> {
    let req: ChatRequest = parse(body)?;
    let valid = req.common.validate(cap)?;
    let messages = req.messages()?;
    Ok((valid, messages))
}

/// A text completion request's body parsed and validated (everything that needs no model).
fn completion_request(body: &[u8], cap: usize) -> Result<(Valid, String), ApiError> {
    let req: CompletionRequest = parse(body)?;
    let valid = req.common.validate(cap)?;
    let prompt = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(ApiError::bad_request(
                "`prompt` must be a string (or a list of one string)",
                Some("prompt"),
            ))
        }
    };
    Ok((valid, prompt))
}

/// Runs a request body through the parsing and validation `/v1/chat/completions` (`chat`) or `/v1/completions`
/// applies before a model is involved: the request parser's fuzz target calls it without a server.
pub fn validate_body(chat: bool, body: &[u8]) -> Result<(), ApiError> {
    let cap = crate::ServeSettings::default().max_tokens_cap;
    if chat {
        chat_request(body, cap).map(drop)
    } else {
        completion_request(body, cap).map(drop)
    }
}

/// A request for a remote model, already validated, sent on to its endpoint; a stream is relayed event by event.
async fn forward(
    remote: crate::RemoteEndpoint,
    path: &'static str,
    body: Value,
    stream: bool,
) -> Result<Response, ApiError> {
    if !stream {
        let reply = tokio::task::spawn_blocking(move || remote.call(path, &body))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        return Ok(Json(reply).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, ApiError>>(256);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    tokio::task::spawn_blocking(move || {
        let mut first = Some(first_tx);
        let result = remote.stream(path, &body, &mut |event| {
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            tx.blocking_send(Ok(event)).is_ok()
        });
        match (result, first.take()) {
            // Failed before the first event: the client gets a proper status instead of a stream.
            (Err(e), Some(f)) => {
                let _ = f.send(Err(e));
            }
            (Err(e), None) => {
                let _ = tx.blocking_send(Err(e));
            }
            (Ok(()), Some(f)) => {
                let _ = f.send(Ok(()));
            }
            (Ok(()), None) => {}
        }
    });
    first_rx
        .await
        .map_err(|_| ApiError::internal("the upstream relay stopped"))??;
    let events = stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(Ok(data)) => Some((
                Ok::<Event, Infallible>(Event::default().data(data)),
                (rx, false),
            )),
            Some(Err(e)) => Some((
                Ok(Event::default().data(
                    json!({"error": {"message": e.message, "type": "server_error"}}).to_string(),
                )),
                (rx, false),
            )),
            None => Some((Ok(Event::default().data("[DONE]")), (rx, true))),
        }
    });
    Ok(sse(events).into_response())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

enum Msg {
    Piece(usize, String),
    Done(usize, Generation),
    Failed(String),
}

async fn run(
    state: AppState,
    valid: Valid,
    prompt: Prompt,
    kind: Kind,
) -> Result<Response, ApiError> {
    let entry = state.registry.get(&valid.model)?;
    let (model, batcher) = state.registry.loaded(&entry).await?;
    let mut valid = valid;
    let ids = prepare(
        &model,
        &prompt,
        &mut valid.params.max_tokens,
        valid.max_tokens_given,
    )?;
    let permit = slot(&state).await?;
    let id = openai::completion_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let model_id = valid.shown_as.clone().unwrap_or_else(|| entry.id.clone());
    // Each choice joins the model's running batch; events come back on the batch thread, which must never
    // wait on a slow client: the channel is unbounded (it holds at most this request's text).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let permit = std::sync::Arc::new(permit);
    for i in 0..valid.n {
        let params = SamplingParams {
            seed: valid.params.seed.map(|s| s.wrapping_add(i as u64)),
            ..valid.params.clone()
        };
        let tx = tx.clone();
        let metrics = state.metrics.clone();
        let permit = permit.clone();
        batcher.submit(
            ids.clone(),
            params,
            Box::new(move |event| {
                let _held = &permit;
                // A closed channel means the client went away: the sequence leaves the batch.
                tx.send(match event {
                    BatchEvent::Prefilling { .. } => return !tx.is_closed(),
                    BatchEvent::Text(piece) => Msg::Piece(i, piece),
                    BatchEvent::Done(g) => {
                        metrics.record(&g);
                        Msg::Done(i, g)
                    }
                    BatchEvent::Failed(e) => Msg::Failed(e.to_string()),
                })
                .is_ok()
            }),
        );
    }
    drop(tx);
    let n = valid.n;

    let shutdown = state.shutdown.clone();
    if !valid.stream {
        let mut results: Vec<Option<Generation>> = (0..n).map(|_| None).collect();
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                () = shutdown.cut() => return Err(ApiError::unavailable(
                    "the server shut down before this generation finished (its grace period ran out)",
                )),
            };
            let Some(msg) = msg else { break };
            match msg {
                Msg::Piece(..) => {}
                Msg::Done(i, g) => results[i] = Some(g),
                Msg::Failed(e) => return Err(ApiError::internal(e)),
            }
        }
        let gens: Vec<Generation> = results.into_iter().flatten().collect();
        let prompt_tokens = gens.first().map_or(0, |g| g.usage.prompt_tokens);
        let completion: usize = gens.iter().map(|g| g.usage.completion_tokens).sum();
        let choices: Vec<Value> = gens
            .iter()
            .enumerate()
            .map(|(i, g)| match kind {
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": g.text},
                                     "finish_reason": openai::finish(g), "logprobs": null}),
                Kind::Text => json!({"index": i, "text": g.text, "finish_reason": openai::finish(g), "logprobs": null}),
            })
            .collect();
        let object = if kind == Kind::Chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        return Ok(Json(json!({
            "id": id, "object": object, "created": openai::now(), "model": model_id,
            "choices": choices, "usage": openai::usage_json(prompt_tokens, completion),
            "system_fingerprint": format!("vibecheck-{}", env!("CARGO_PKG_VERSION")),
        }))
        .into_response());
    }

    let include_usage = valid.include_usage;
    let created = openai::now();
    let chunk = move |choices: Value, usage: Value| -> Event {
        let object = if kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({"id": id, "object": object, "created": created, "model": model_id, "choices": choices});
        if !usage.is_null() {
            v["usage"] = usage;
        }
        Event::default().data(v.to_string())
    };
    let delta = move |i: usize, text: Option<&str>, role: bool, finish: Option<&str>| -> Value {
        match kind {
            Kind::Chat => {
                let mut d = json!({});
                if role {
                    d["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    d["content"] = json!(t);
                }
                json!([{"index": i, "delta": d, "finish_reason": finish, "logprobs": null}])
            }
            Kind::Text => {
                json!([{"index": i, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null}])
            }
        }
    };
    // Pending events for one message, so one channel message can become several SSE events.
    let events = stream::unfold(
        (
            rx,
            Vec::<Event>::new(),
            vec![false; n],
            0usize,
            0usize,
            false,
        ),
        move |mut st| {
            let chunk = chunk.clone();
            let shutdown = shutdown.clone();
            async move {
                loop {
                    if let Some(ev) = st.1.pop() {
                        return Some((Ok::<Event, Infallible>(ev), st));
                    }
                    if st.5 {
                        return None;
                    }
                    let (rx, pending, started, prompt_tokens, completion_tokens, done) = &mut st;
                    let mut out = Vec::new();
                    let msg = tokio::select! {
                        msg = rx.recv() => msg,
                        () = shutdown.cut() => Some(Msg::Failed(
                            "the server shut down before this generation finished (its grace period ran out)".into(),
                        )),
                    };
                    match msg {
                        Some(Msg::Piece(i, text)) => {
                            let first = !started[i];
                            started[i] = true;
                            out.push(chunk(
                                delta(i, Some(&text), first && kind == Kind::Chat, None),
                                Value::Null,
                            ));
                        }
                        Some(Msg::Done(i, g)) => {
                            if !started[i] && kind == Kind::Chat {
                                out.push(chunk(delta(i, Some(""), true, None), Value::Null));
                            }
                            started[i] = true;
                            *prompt_tokens = g.usage.prompt_tokens;
                            *completion_tokens += g.usage.completion_tokens;
                            out.push(chunk(
                                delta(i, None, false, Some(openai::finish(&g))),
                                Value::Null,
                            ));
                        }
                        Some(Msg::Failed(e)) => {
                            out.push(
                                Event::default().data(
                                    json!({"error": {"message": e, "type": "server_error"}})
                                        .to_string(),
                                ),
                            );
                            out.push(Event::default().data("[DONE]"));
                            *done = true;
                        }
                        None => {
                            if include_usage {
                                out.push(chunk(
                                    json!([]),
                                    openai::usage_json(*prompt_tokens, *completion_tokens),
                                ));
                            }
                            out.push(Event::default().data("[DONE]"));
                            *done = true;
                        }
                    }
                    out.reverse();
                    *pending = out;
                }
            }
        },
    );
    Ok(sse(events).into_response())
}

/// How often a quiet stream (a long prompt still being prefilled) sends an SSE comment. Besides keeping proxies
/// from timing out, the write is how a client that left is noticed: a failed write drops the stream, which tells
/// the batch to stop this request between prompt chunks.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(500);

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(
    s: S,
) -> Sse<axum::response::sse::KeepAliveStream<S>> {
    Sse::new(s).keep_alive(axum::response::sse::KeepAlive::new().interval(SSE_KEEP_ALIVE))
}
