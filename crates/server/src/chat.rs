//! The generation endpoints, `/v1/chat/completions` and `/v1/completions`: a body validated once
//! ([`openai::parse`], then [`openai::Parsed::fit`] for the model), a place in the queue, each choice submitted
//! to the model's running batch, and the reply as one JSON object or an SSE stream ([`StreamState`]). A remote
//! model's request is forwarded to its endpoint and its stream relayed.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use vibecheck_engine::{BatchEvent, Generation, SamplingParams};

use crate::openai::{self, Kind, ValidRequest};
use crate::{ApiError, AppState};

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

pub(crate) async fn chat(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    counted(
        state.clone(),
        |m| &m.chat_requests,
        generate(state, Kind::Chat, body, None),
    )
    .await
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    counted(
        state.clone(),
        |m| &m.completion_requests,
        generate(state, Kind::Text, body, None),
    )
    .await
}

/// A chat or text completion; with `shown_as`, replies name that instead of the model (the arena's blind
/// answers).
pub(crate) async fn generate(
    state: AppState,
    kind: Kind,
    body: Result<Bytes, BytesRejection>,
    shown_as: Option<String>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let parsed = openai::parse(kind, &body, state.settings.max_tokens_cap)?;
    let entry = state.registry.get(&parsed.model)?;
    if let Some(remote) = entry.remote() {
        if let Some(p) = entry.problem() {
            return Err(ApiError::unavailable(format!(
                "model {} cannot answer ({}): {}",
                entry.id, p.status, p.reason
            )));
        }
        let path = match kind {
            Kind::Chat => "/chat/completions",
            Kind::Text => "/completions",
        };
        return forward(
            remote.clone(),
            path,
            openai::read_body(&body)?,
            parsed.stream,
        )
        .await;
    }
    let (model, batcher) = state.registry.loaded(&entry).await?;
    let valid = parsed
        .fit(model, shown_as.unwrap_or_else(|| entry.id.clone()))
        .await?;
    run(state, valid, &batcher).await
}

/// Runs a request body through the parsing and validation `/v1/chat/completions` (`chat`) or `/v1/completions`
/// applies before a model is involved: the request parser's fuzz target calls it without a server.
pub fn validate_body(chat: bool, body: &[u8]) -> Result<(), ApiError> {
    let cap = crate::ServeSettings::default().max_tokens_cap;
    let kind = if chat { Kind::Chat } else { Kind::Text };
    openai::parse(kind, body, cap).map(drop)
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
            Some(Err(e)) => Some((Ok(error_event(&e.message)), (rx, false))),
            None => Some((Ok(Event::default().data("[DONE]")), (rx, true))),
        }
    });
    Ok(sse(events).into_response())
}

/// What the batch thread tells a request, per choice.
enum Msg {
    Piece(usize, String),
    Done(usize, Generation),
    Failed(String),
}

const CUT_MESSAGE: &str =
    "the server shut down before this generation finished (its grace period ran out)";

/// Submits every choice of `valid` to the model's batch and answers with the result, whole or streamed.
async fn run(
    state: AppState,
    valid: ValidRequest,
    batcher: &vibecheck_engine::Batcher,
) -> Result<Response, ApiError> {
    let permit = slot(&state).await?;
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
            valid.ids.clone(),
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
                    BatchEvent::Failed(e) => {
                        if !e.is_client_fault() {
                            tracing::error!(error = %e, "a generation failed");
                        }
                        Msg::Failed(e.for_client().to_string())
                    }
                })
                .is_ok()
            }),
        );
    }
    drop(tx);
    let reply = Reply {
        id: openai::completion_id(match valid.kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }),
        kind: valid.kind,
        model: valid.shown_as.clone(),
        created: openai::now(),
    };
    let shutdown = state.shutdown.clone();
    if !valid.stream {
        let mut results: Vec<Option<Generation>> = (0..valid.n).map(|_| None).collect();
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                () = shutdown.cut() => return Err(ApiError::unavailable(CUT_MESSAGE)),
            };
            match msg {
                None => break,
                Some(Msg::Piece(..)) => {}
                Some(Msg::Done(i, g)) => results[i] = Some(g),
                Some(Msg::Failed(e)) => return Err(ApiError::internal(e)),
            }
        }
        let gens: Vec<Generation> = results.into_iter().flatten().collect();
        return Ok(Json(reply.whole(&gens)).into_response());
    }
    let st = StreamState {
        rx,
        pending: Vec::new(),
        started: vec![false; valid.n],
        prompt_tokens: 0,
        completion_tokens: 0,
        done: false,
        include_usage: valid.include_usage,
        reply,
        shutdown,
    };
    let events = stream::unfold(st, |mut st| async move {
        let ev = st.next_event().await?;
        Some((Ok::<Event, Infallible>(ev), st))
    });
    Ok(sse(events).into_response())
}

/// What every part of one reply carries.
struct Reply {
    id: String,
    kind: Kind,
    /// The model name the reply shows.
    model: String,
    created: u64,
}

impl Reply {
    /// The non-streamed reply.
    fn whole(&self, gens: &[Generation]) -> Value {
        let prompt_tokens = gens.first().map_or(0, |g| g.usage.prompt_tokens);
        let completion: usize = gens.iter().map(|g| g.usage.completion_tokens).sum();
        let choices: Vec<Value> = gens
            .iter()
            .enumerate()
            .map(|(i, g)| match self.kind {
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": g.text},
                                     "finish_reason": openai::finish(g), "logprobs": null}),
                Kind::Text => json!({"index": i, "text": g.text, "finish_reason": openai::finish(g), "logprobs": null}),
            })
            .collect();
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choices, "usage": openai::usage_json(prompt_tokens, completion),
            "system_fingerprint": format!("vibecheck-{}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// One streamed chunk.
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Event {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "choices": choices});
        if let Some(usage) = usage {
            v["usage"] = usage;
        }
        Event::default().data(v.to_string())
    }

    /// The `choices` of a chunk for choice `i`: new text, the assistant role on a chat's first chunk, or the
    /// finish reason.
    fn delta(&self, i: usize, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
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
    }
}

/// A streamed reply in progress: the batch's messages become SSE events, one message sometimes several.
struct StreamState {
    rx: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    /// Events made from the last message and not yet sent, last first.
    pending: Vec<Event>,
    /// Whether each choice has sent its first chunk (a chat's first chunk carries the role).
    started: Vec<bool>,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// `[DONE]` has been queued: the stream ends once `pending` is empty.
    done: bool,
    include_usage: bool,
    reply: Reply,
    shutdown: std::sync::Arc<crate::Shutdown>,
}

impl StreamState {
    /// The next event to send, or `None` once the stream is over.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.pending.pop() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
                () = self.shutdown.cut() => Some(Msg::Failed(CUT_MESSAGE.into())),
            };
            let mut out = self.events_for(msg);
            out.reverse();
            self.pending = out;
        }
    }

    fn events_for(&mut self, msg: Option<Msg>) -> Vec<Event> {
        let chat = self.reply.kind == Kind::Chat;
        let r = &self.reply;
        match msg {
            Some(Msg::Piece(i, text)) => {
                let first = !self.started[i];
                self.started[i] = true;
                vec![r.chunk(r.delta(i, Some(&text), first && chat, None), None)]
            }
            Some(Msg::Done(i, g)) => {
                let mut out = Vec::new();
                if !self.started[i] && chat {
                    out.push(r.chunk(r.delta(i, Some(""), true, None), None));
                }
                self.started[i] = true;
                self.prompt_tokens = g.usage.prompt_tokens;
                self.completion_tokens += g.usage.completion_tokens;
                out.push(r.chunk(r.delta(i, None, false, Some(openai::finish(&g))), None));
                out
            }
            Some(Msg::Failed(e)) => {
                self.done = true;
                vec![error_event(&e), Event::default().data("[DONE]")]
            }
            None => {
                self.done = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let usage = openai::usage_json(self.prompt_tokens, self.completion_tokens);
                    out.push(r.chunk(json!([]), Some(usage)));
                }
                out.push(Event::default().data("[DONE]"));
                out
            }
        }
    }
}

/// An error inside a stream that has already begun (OpenAI's shape).
fn error_event(message: &str) -> Event {
    Event::default()
        .data(json!({"error": {"message": message, "type": "server_error"}}).to_string())
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
