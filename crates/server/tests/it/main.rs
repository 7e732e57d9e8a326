//! The API through `router(state)` (no port bound): a run folder of tiny llama checkpoints, one of them still
//! being written.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use vibecheck_engine::LoadOptions;
use vibecheck_server::{router, AppState, Registry, ServeSettings};
use vibecheck_test_support::{copy_dir, reference_dir, smollm_gguf};

/// `runs/tiny-run` with checkpoint-10 and checkpoint-20 complete and checkpoint-30 half written.
fn run_folder() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let tiny = reference_dir().join("tiny/llama");
    for step in [20, 10, 30] {
        copy_dir(&tiny, &run.join(format!("checkpoint-{step}")));
    }
    let partial = run.join("checkpoint-30/model.safetensors");
    let len = std::fs::metadata(&partial).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    (tmp, run)
}

fn app(run: &Path) -> axum::Router {
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    router(AppState::new(registry, ServeSettings::default()))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost:8080")
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

#[tokio::test]
async fn models_lists_complete_checkpoints_by_step() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let (status, body, _) = call(&app, "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<(&str, &str)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("tiny-run/checkpoint-10", "available"),
            ("tiny-run/checkpoint-20", "available"),
            ("tiny-run/checkpoint-30", "incomplete"),
        ],
        "the half-written checkpoint-30 is listed as such, not left out and not offered"
    );
    assert_eq!(body["data"][1]["step"], 20);
    assert_eq!(body["data"][1]["run"], "tiny-run");
    let reason = body["data"][2]["reason"].as_str().unwrap();
    assert!(reason.contains("model.safetensors"), "{reason}");
    let (status, body, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "tiny-run/checkpoint-30", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("incomplete"));
}

/// The ids of the models that can answer.
fn available(registry: &Registry) -> Vec<String> {
    registry
        .entries()
        .iter()
        .filter(|e| e.problem().is_none())
        .map(|e| e.id.clone())
        .collect()
}

/// A run mixing every layout a trainer leaves: safetensors, a LoRA adapter, a pytorch_model.bin, a ZeRO folder
/// and a checkpoint of an unsupported architecture. The loadable ones answer; the others are listed with their
/// reasons (the ZeRO one with its consolidation command) and answer 503 with it; /health stays green.
#[tokio::test]
async fn a_run_of_mixed_formats_serves_what_loads_and_lists_the_rest_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("mixed-run");
    let tiny = reference_dir().join("tiny/llama");
    copy_dir(&tiny, &run.join("checkpoint-10"));
    let lora = run.join("checkpoint-20");
    copy_dir(&reference_dir().join("tiny/lora-llama"), &lora);
    let cfg = std::fs::read_to_string(lora.join("adapter_config.json"))
        .unwrap()
        .replace("\"../llama\"", &format!("{:?}", tiny.display().to_string()));
    std::fs::write(lora.join("adapter_config.json"), cfg).unwrap();
    copy_dir(
        &vibecheck_test_support::workspace_root().join("tests/fixtures/torch/llama-bin"),
        &run.join("checkpoint-30"),
    );
    let zero = run.join("checkpoint-40");
    std::fs::create_dir_all(zero.join("global_step40")).unwrap();
    std::fs::copy(tiny.join("config.json"), zero.join("config.json")).unwrap();
    std::fs::write(zero.join("global_step40/mp_rank_00_model_states.pt"), b"x").unwrap();
    std::fs::write(zero.join("zero_to_fp32.py"), "#").unwrap();
    let bloom = run.join("checkpoint-50");
    copy_dir(&tiny, &bloom);
    let cfg = std::fs::read_to_string(bloom.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "BloomForCausalLM");
    std::fs::write(bloom.join("config.json"), cfg).unwrap();

    let app = app(&run);
    let (_, body, _) = call(&app, "GET", "/v1/models", None).await;
    let listed: Vec<(String, String, String)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
                m["format"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("checkpoint-10", "available", "safetensors"),
        ("checkpoint-20", "available", "lora"),
        ("checkpoint-30", "available", "safetensors"),
        ("checkpoint-40", "unsupported", "none"),
        ("checkpoint-50", "failed", "none"),
    ]
    .iter()
    .map(|(n, s, f)| (format!("mixed-run/{n}"), s.to_string(), f.to_string()))
    .collect();
    assert_eq!(listed, want);
    assert!(body["data"][3]["reason"]
        .as_str()
        .unwrap()
        .contains("zero_to_fp32.py"));
    assert!(body["data"][4]["reason"]
        .as_str()
        .unwrap()
        .contains("BloomForCausalLM"));
    for id in ["mixed-run/checkpoint-20", "mixed-run/checkpoint-30"] {
        let (status, body, _) = call(
            &app,
            "POST",
            "/v1/chat/completions",
            Some(json!({"model": id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
    }
    let (status, body, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "mixed-run/checkpoint-40", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("DeepSpeed ZeRO"));
    let (status, body, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let down: Vec<&str> = body["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        down,
        vec!["mixed-run/checkpoint-40", "mixed-run/checkpoint-50"]
    );
}

/// A source named on the command line that cannot load fails when the server starts, with the reason.
#[test]
fn an_explicit_source_that_cannot_load_fails_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    copy_dir(&reference_dir().join("tiny/llama"), &dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        vibecheck_test_support::workspace_root().join("tests/fixtures/torch/legacy.bin"),
        dir.join("pytorch_model.bin"),
    )
    .unwrap();
    let err = Registry::from_sources(&[dir.display().to_string()], LoadOptions::default())
        .err()
        .expect("a source that cannot load was accepted")
        .to_string();
    assert!(
        err.contains("pytorch_model.bin") && err.contains("legacy"),
        "{err}"
    );
}

#[tokio::test]
async fn chat_completion_matches_the_engine_and_reports_usage() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let req = json!({"model": "tiny-run/checkpoint-20", "messages": [{"role": "user", "content": "hello"}],
                     "max_tokens": 6, "temperature": 0});
    let (status, body, text) = call(&app, "POST", "/v1/chat/completions", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let model = vibecheck_engine::Model::load(
        run.join("checkpoint-20").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let g = model
        .generate(
            &vibecheck_engine::Prompt::Chat(vec![vibecheck_engine::ChatMessage::new(
                "user", "hello",
            )]),
            &vibecheck_engine::SamplingParams::greedy(6),
        )
        .unwrap();
    assert_eq!(content, g.text, "the API answers what the engine answers");
    assert_eq!(
        body["usage"]["completion_tokens"],
        g.usage.completion_tokens
    );
    assert_eq!(body["usage"]["prompt_tokens"], g.usage.prompt_tokens);
    assert_eq!(
        body["choices"][0]["finish_reason"],
        g.finish_reason.as_str()
    );
}

#[tokio::test]
async fn streaming_chat_sends_role_deltas_finish_usage_and_done() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let req = json!({"model": "tiny-run/checkpoint-10", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let (status, _, text) = call(&app, "POST", "/v1/chat/completions", Some(req.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)?
                .get("delta")?
                .get("content")?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let finish = chunks.iter().find_map(|c| {
        c["choices"]
            .get(0)?
            .get("finish_reason")?
            .as_str()
            .map(str::to_string)
    });
    assert!(finish.is_some());
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
    // The same request without streaming gives the same text.
    let mut plain = req;
    plain["stream"] = json!(false);
    let (_, body, _) = call(&app, "POST", "/v1/chat/completions", Some(plain)).await;
    assert_eq!(
        body["choices"][0]["message"]["content"].as_str().unwrap(),
        streamed
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let m = "tiny-run/checkpoint-10";
    let cases = [
        (
            json!({"model": m, "messages": []}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::NOT_FOUND,
            "model",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000000}),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "temperature": 7}),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "top_p": -1}),
            StatusCode::BAD_REQUEST,
            "top_p",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
            StatusCode::BAD_REQUEST,
            "stop",
        ),
        (
            json!({"model": m, "messages": [{"role": "user", "content": "x"}], "max_tokens": 250}),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
    ];
    for (req, status, param) in cases {
        let (got, body, text) = call(&app, "POST", "/v1/chat/completions", Some(req.clone())).await;
        assert_eq!(got, status, "{req} -> {text}");
        assert_eq!(body["error"]["param"], param, "{text}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // The context error carries the token counts.
    let (_, body, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": m,
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 250})),
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("256"),
        "{body}"
    );
    // Malformed JSON: an OpenAI-style 400 that does not echo the body back.
    let secret = "SECRET-PROMPT-TEXT";
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            "{{\"model\": \"{m}\", \"messages\": [{{\"content\": \"{secret}\""
        )))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(
        text.contains("invalid_request_error") && !text.contains(secret),
        "{text}"
    );
}

#[tokio::test]
async fn text_completions_and_health() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let (status, body, text) = call(&app, "POST", "/v1/completions",
        Some(json!({"model": "tiny-run/checkpoint-10", "prompt": "hello", "max_tokens": 4, "temperature": 0}))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["text"].is_string());
    let (status, body, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn api_key_and_loopback_host_are_enforced() {
    let (_t, run) = run_folder();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    let settings = ServeSettings {
        api_key: Some("s3cret".into()),
        ..ServeSettings::default()
    };
    let app = router(AppState::new(registry, settings));
    let send = |host: &str, auth: Option<&str>, uri: &str| {
        let mut b = Request::builder().uri(uri).header("host", host);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        app.clone().oneshot(b.body(Body::empty()).unwrap())
    };
    assert_eq!(
        send("localhost", None, "/v1/models")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send("localhost", Some("Bearer wrong"), "/v1/models")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send("localhost", Some("Bearer s3cret"), "/v1/models")
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send("localhost", None, "/health").await.unwrap().status(),
        StatusCode::OK,
        "health needs no key"
    );
    // A page on another origin that rebinds its name to 127.0.0.1 still sends its own Host.
    let resp = send("attacker.example", Some("Bearer s3cret"), "/v1/models")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_models() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let req = json!({"model": "tiny-run/checkpoint-10", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    call(&app, "POST", "/v1/chat/completions", Some(req)).await;
    call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await;
    let (status, _, text) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("vibecheck_requests_total{endpoint=\"chat\"} 2"),
        "{text}"
    );
    assert!(text.contains("vibecheck_request_errors_total 1"), "{text}");
    assert!(text.contains("vibecheck_generations_total 1"), "{text}");
    assert!(
        text.contains("vibecheck_loaded_models 1") && text.contains("vibecheck_served_models 2"),
        "{text}"
    );
    let tokens: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("vibecheck_completion_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens >= 1.0);
}

/// A checkpoint the trainer writes while the server runs appears once complete and no longer growing; a
/// half-written one never does.
#[tokio::test]
async fn new_checkpoints_appear_once_complete_and_stable() {
    let (_t, run) = run_folder();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    assert_eq!(available(&registry).len(), 2);
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("checkpoint-40"),
    );
    assert!(
        registry.refresh().is_empty(),
        "first look: sizes recorded, not yet trusted"
    );
    assert_eq!(
        registry.refresh(),
        vec!["tiny-run/checkpoint-40".to_string()],
        "second look, unchanged: served"
    );
    assert!(registry.refresh().is_empty());
    // checkpoint-30 stays half written: never served, however often we look.
    for _ in 0..3 {
        registry.refresh();
    }
    assert_eq!(
        available(&registry),
        vec![
            "tiny-run/checkpoint-10",
            "tiny-run/checkpoint-20",
            "tiny-run/checkpoint-40"
        ]
    );
    // Finishing checkpoint-30's shard makes it complete; two stable looks later it is served, sorted by step.
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("checkpoint-30"),
    );
    registry.refresh();
    registry.refresh();
    let steps: Vec<Option<u64>> = registry.entries().iter().map(|e| e.step).collect();
    assert_eq!(steps, vec![Some(10), Some(20), Some(30), Some(40)]);
    assert_eq!(available(&registry).len(), 4, "checkpoint-30 is promoted");
}

/// Under a memory budget that holds one checkpoint, asking for a second unloads the least recently used.
#[tokio::test]
async fn memory_budget_evicts_the_least_recently_used() {
    let (_t, run) = run_folder();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    let one = registry.entries()[0].size_bytes();
    let registry = registry.with_memory_budget(Some(one + one / 2));
    let (a, b) = (
        registry.get("tiny-run/checkpoint-10").unwrap(),
        registry.get("tiny-run/checkpoint-20").unwrap(),
    );
    let first = registry.model(&a).await.unwrap();
    assert!(a.is_loaded() && !b.is_loaded());
    registry.model(&b).await.unwrap();
    assert!(
        !a.is_loaded() && b.is_loaded(),
        "checkpoint-10 was evicted for checkpoint-20"
    );
    // A request still holding the evicted model can finish with it.
    first
        .generate(
            &vibecheck_engine::Prompt::Text("hi".into()),
            &vibecheck_engine::SamplingParams::greedy(2),
        )
        .unwrap();
    // Concurrent first requests for one model share a single load.
    let (x, y) = tokio::join!(registry.model(&a), registry.model(&a));
    assert!(std::sync::Arc::ptr_eq(&x.unwrap(), &y.unwrap()));
    assert!(a.is_loaded() && !b.is_loaded());
}

/// Past `max_concurrent` plus the queue, requests get 429 with `Retry-After` instead of piling up.
#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let (_t, run) = run_folder();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    let app = router(AppState::new(
        registry,
        ServeSettings {
            max_concurrent: 1,
            queue: 0,
            ..ServeSettings::default()
        },
    ));
    let req = || {
        let body = json!({"model": "tiny-run/checkpoint-10", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 200, "temperature": 1.0, "seed": 1});
        Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (a, b) = tokio::join!(app.clone().oneshot(req()), app.clone().oneshot(req()));
    let statuses = [a.unwrap(), b.unwrap()];
    let busy: Vec<_> = statuses
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        busy.len(),
        1,
        "{:?}",
        statuses.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    assert_eq!(busy[0].headers()["retry-after"], "1");
    assert!(statuses.iter().any(|r| r.status() == StatusCode::OK));
}

#[tokio::test]
async fn oversize_bodies_get_an_openai_413() {
    let (_t, run) = run_folder();
    let app = app(&run);
    let big = "x".repeat(3 << 20);
    let body =
        json!({"model": "tiny-run/checkpoint-10", "messages": [{"role": "user", "content": big}]});
    let (status, body, text) = call(&app, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body["error"]["type"],
        "invalid_request_error",
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(text.len() < 1000, "the error does not echo the body");
}

/// Text of an SSE chat stream's content deltas, and whether it ended with `[DONE]`.
fn streamed_content(text: &str) -> (String, bool) {
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let content = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    (content, events.last() == Some(&"[DONE]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_endpoint_is_served_beside_local_checkpoints() {
    // The upstream: a real vibecheck server on 127.0.0.1 (standing in for vLLM or TGI: the same API).
    let (_t, run) = run_folder();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = app(&run);
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let base = format!("http://127.0.0.1:{port}/v1");

    // Here: one local checkpoint and two remote ids, one of them naming a model the upstream lacks.
    let registry = Registry::from_sources(
        &[run.join("checkpoint-20").display().to_string()],
        LoadOptions::default(),
    )
    .unwrap();
    for spec in [
        format!("id=gpu-box,url={base}/,model=tiny-run/checkpoint-10"),
        format!("id=missing,url={base},model=no-such-model"),
        "id=down,url=http://127.0.0.1:9/v1".to_string(),
    ] {
        registry
            .add_remote(vibecheck_server::RemoteEndpoint::parse(&spec).unwrap())
            .unwrap();
    }
    assert!(
        registry
            .add_remote(
                vibecheck_server::RemoteEndpoint::parse("id=checkpoint-20,url=http://x/v1")
                    .unwrap()
            )
            .is_err(),
        "a remote id may not shadow a local model"
    );
    let here = router(AppState::new(registry, ServeSettings::default()));

    let (_, models, _) = call(&here, "GET", "/v1/models", None).await;
    let formats: Vec<(&str, &str)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["format"].as_str().unwrap()))
        .collect();
    assert_eq!(
        formats,
        vec![
            ("checkpoint-20", "safetensors"),
            ("gpu-box", "remote"),
            ("missing", "remote"),
            ("down", "remote")
        ]
    );

    let req = |model: &str, stream: bool| {
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
               "temperature": 0, "stream": stream})
    };
    let (status, direct, _) = call(
        &app(&run),
        "POST",
        "/v1/chat/completions",
        Some(req("tiny-run/checkpoint-10", false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, via, text) = call(
        &here,
        "POST",
        "/v1/chat/completions",
        Some(req("gpu-box", false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        via["model"], "gpu-box",
        "the reply names the model as the client asked for it"
    );
    assert_eq!(
        via["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(via["usage"], direct["usage"]);

    let (status, _, text) = call(
        &here,
        "POST",
        "/v1/chat/completions",
        Some(req("gpu-box", true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (content, done) = streamed_content(&text);
    assert!(done, "{text}");
    assert_eq!(
        content,
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(text.contains("\"model\":\"gpu-box\""));

    let (status, _, text) = call(
        &here,
        "POST",
        "/v1/completions",
        Some(json!({"model": "gpu-box", "prompt": "Once", "max_tokens": 3, "temperature": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // Edge validation happens here, before anything is sent.
    let mut bad = req("gpu-box", false);
    bad["temperature"] = json!(-1);
    let (status, body, _) = call(&here, "POST", "/v1/chat/completions", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "temperature");

    // The upstream's own error keeps its status and message, streaming or not.
    for stream in [false, true] {
        let (status, body, text) = call(
            &here,
            "POST",
            "/v1/chat/completions",
            Some(req("missing", stream)),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-such-model"),
            "{text}"
        );
    }
    // Nobody listening: 502 naming the endpoint.
    let (status, body, _) = call(
        &here,
        "POST",
        "/v1/chat/completions",
        Some(req("down", true)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1:9"));

    // /health runs a real generation on the local model even though remote ones are listed.
    let (status, body, _) = call(&here, "GET", "/health", None).await;
    assert_eq!(
        (status, body["model"].as_str()),
        (StatusCode::OK, Some("checkpoint-20"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_pages_show_changes_escape_model_output_and_take_notes() {
    let (tmp, run) = run_folder();
    let db = tmp.path().join("watch.db");
    let suite = vibecheck_suite::Suite::from_toml(
        "[defaults]\nmax_tokens = 5\n[[prompts]]\nid = \"hello\"\nprompt = \"hello\"\n[[prompts]]\nid = \"bye\"\nprompt = \"bye\"\n",
        "tiny",
        "test",
    )
    .unwrap();
    let (run2, db2, suite2) = (run.clone(), db.clone(), suite.clone());
    tokio::task::spawn_blocking(move || {
        let mut store = vibecheck_store::Store::open(&db2).unwrap();
        let opts = vibecheck_suite::WatchOptions {
            run_dir: run2,
            run_name: None,
            suite: suite2.clone(),
            runner: Default::default(),
            load: LoadOptions::default(),
            once: true,
            poll: std::time::Duration::from_millis(100),
            synthetic: false,
            engine: None,
        };
        let done =
            vibecheck_suite::watch(&mut store, &opts, &Default::default(), &mut |_| {}).unwrap();
        assert_eq!(
            done.len(),
            2,
            "checkpoint-10 and -20; the half-written -30 waits"
        );
        // A later checkpoint whose answer is hostile markup.
        let r = store.run("tiny-run").unwrap().unwrap();
        let ck = store
            .upsert_checkpoint(r.id, "checkpoint-40", "/elsewhere", Some(40), "h")
            .unwrap();
        let evil = vibecheck_store::NewAnswer {
            text: "<img src=x onerror=alert(1)><script>alert(2)</script> hello".into(),
            params: "{}".into(),
            finish_reason: "stop".into(),
            template_hash: "t".into(),
            ..Default::default()
        };
        store
            .insert_conversation(ck.id, &suite2.hash(), "hello", 0, &[evil])
            .unwrap();
        // A verdict on it, flagged as the judge run flags an answer holding a rating token.
        let evil_id = store
            .answers(r.id, None, Some("hello"))
            .unwrap()
            .iter()
            .find(|a| a.checkpoint == "checkpoint-40")
            .unwrap()
            .id;
        store
            .put_judgment(&vibecheck_store::NewJudgment {
                kind: "single".into(),
                judge: "judge@http://127.0.0.1:1/v1".into(),
                prompt_version: "v".into(),
                answer_a: evil_id,
                status: "ok".into(),
                score: Some(2.0),
                raw: "[[2]]".into(),
                flag: Some("answer contains a rating token".into()),
                ..Default::default()
            })
            .unwrap();
        // A checkpoint that could not be loaded: a greyed column with its reason, between steps 20 and 40.
        let failed = store
            .upsert_checkpoint(r.id, "checkpoint-35", "/elsewhere/35", Some(35), "h35")
            .unwrap();
        store
            .set_load_error(failed.id, Some("a DeepSpeed ZeRO checkpoint <b>"))
            .unwrap();
    })
    .await
    .unwrap();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    let app = router(AppState::new(registry, ServeSettings::default()).with_store(db.clone()));

    let (status, _, runs) = call(&app, "GET", "/runs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(runs.contains("href=\"/runs/tiny-run\""), "{runs}");

    let (status, _, page) = call(&app, "GET", "/runs/tiny-run", None).await;
    assert_eq!(status, StatusCode::OK);
    // Same weights at steps 10 and 20: unchanged (h0); the hostile answer at 40 rewrote it (dark).
    assert!(page.contains("<td class=\"h0\">"), "{page}");
    assert!(page.contains("<th title=\"checkpoint-40\">40</th>"));
    let greyed = "<th class=\"failed\" title=\"checkpoint-35: could not be loaded: a DeepSpeed ZeRO checkpoint \
                  &lt;b&gt;\">35</th>";
    assert!(page.contains(greyed), "{page}");
    assert!(
        page.find(greyed) < page.find("<th title=\"checkpoint-40\">"),
        "the greyed column stands at its step"
    );
    assert!(page.contains("<td class=\"failed\""));
    assert!(
        page.contains("1 verdict flagged: answer contains a rating token"),
        "the judge summary counts flagged verdicts: {page}"
    );
    assert!(
        page.contains("class=\"h1") || page.contains("class=\"h9") || page.contains("class=\"h10"),
        "{page}"
    );

    let (status, _, prompt) = call(&app, "GET", "/runs/tiny-run/prompts/hello", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        prompt.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("<img") && !prompt.contains("<script>alert"),
        "model output is never markup"
    );
    assert!(
        prompt.contains("<ins>") && prompt.contains("<del>"),
        "a word diff against step 20"
    );
    assert!(prompt.contains("href=\"/?model=tiny-run%2Fcheckpoint-20\""));
    assert!(prompt.contains("/?compare=tiny-run%2Fcheckpoint-10,tiny-run%2Fcheckpoint-20"));

    // Notes.
    let (_, timeline, _) = call(&app, "GET", "/api/runs/tiny-run/timeline", None).await;
    let answer_id = timeline["prompts"][0]["cells"][1]["answers"][0]["id"]
        .as_i64()
        .unwrap();
    let uri = format!("/api/answers/{answer_id}/notes");
    let (status, note, _) = call(
        &app,
        "POST",
        &uri,
        Some(json!({"text": "first time it <b>refuses</b>", "tag": "refusal"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{note}");
    assert_eq!(note["tag"], "refusal");
    let (_, _, page) = call(&app, "GET", "/runs/tiny-run/prompts/bye", None).await;
    let (_, _, page_hello) = call(&app, "GET", "/runs/tiny-run/prompts/hello", None).await;
    let noted = if timeline["prompts"][0]["id"] == "hello" {
        page_hello
    } else {
        page
    };
    assert!(
        noted.contains("first time it &lt;b&gt;refuses&lt;/b&gt;"),
        "{noted}"
    );
    assert_eq!(
        vibecheck_store::Store::open(&db)
            .unwrap()
            .notes(1)
            .unwrap()
            .len(),
        1,
        "kept in the store"
    );
    for (body, status) in [
        (json!({"text": "   "}), StatusCode::BAD_REQUEST),
        (json!({"txt": "typo"}), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(call(&app, "POST", &uri, Some(body)).await.0, status);
    }
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/answers/999999/notes",
            Some(json!({"text": "x"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/runs/no-such-run", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/runs/tiny-run/prompts/nope", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // A plain `serve` has no store: the pages say how to get one.
    let (status, body, _) = call(&self::app(&run), "GET", "/runs", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("vibecheck watch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blind_arena_hides_names_until_the_vote_and_ranks_models() {
    let (tmp, run) = run_folder();
    let db = tmp.path().join("arena.db");
    let (run2, db2) = (run.clone(), db.clone());
    tokio::task::spawn_blocking(move || {
        let mut store = vibecheck_store::Store::open(&db2).unwrap();
        let suite = vibecheck_suite::Suite::from_toml(
            "[defaults]\nmax_tokens = 3\n[[prompts]]\nid = \"hi\"\nprompt = \"Say hi\"\n",
            "s",
            "t",
        )
        .unwrap();
        let opts = vibecheck_suite::WatchOptions {
            run_dir: run2,
            run_name: None,
            suite,
            runner: Default::default(),
            load: LoadOptions::default(),
            once: true,
            poll: std::time::Duration::from_millis(100),
            synthetic: false,
            engine: None,
        };
        vibecheck_suite::watch(&mut store, &opts, &Default::default(), &mut |_| {}).unwrap();
    })
    .await
    .unwrap();
    let registry =
        Registry::from_sources(&[run.display().to_string()], LoadOptions::default()).unwrap();
    let app = router(AppState::new(registry, ServeSettings::default()).with_store(db));

    let (status, page, _) = call(&app, "GET", "/arena", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, drawn, _) = call(&app, "GET", "/api/arena/prompt?run=tiny-run", None).await;
    assert_eq!(
        (status, drawn["prompt"].as_str()),
        (StatusCode::OK, Some("Say hi"))
    );

    let mut votes = Vec::new();
    for winner in ["a", "b", "a", "tie"] {
        let (status, battle, text) = call(
            &app,
            "POST",
            "/api/arena/battles",
            Some(json!({"run": "tiny-run"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        assert_eq!(
            battle.as_object().unwrap().len(),
            1,
            "only the id: names stay hidden: {battle}"
        );
        let id = battle["id"].as_i64().unwrap();
        for (side, label) in [("a", "Model A"), ("b", "Model B")] {
            let (status, _, stream) = call(&app, "POST", &format!("/api/arena/battles/{id}/{side}"),
                Some(json!({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0}))).await;
            assert_eq!(status, StatusCode::OK, "{stream}");
            assert!(
                stream.contains(&format!("\"model\":\"{label}\"")),
                "{stream}"
            );
            assert!(
                !stream.contains("checkpoint-"),
                "the stream never names the checkpoint: {stream}"
            );
        }
        let (status, revealed, _) = call(
            &app,
            "POST",
            &format!("/api/arena/battles/{id}/vote"),
            Some(json!({"winner": winner, "prompt": "Say hi"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (a, b) = (
            revealed["model_a"].as_str().unwrap().to_string(),
            revealed["model_b"].as_str().unwrap().to_string(),
        );
        assert!(
            a != b && a.starts_with("tiny-run/") && b.starts_with("tiny-run/"),
            "{revealed}"
        );
        votes.push((a, b, winner));
        let (status, again, _) = call(
            &app,
            "POST",
            &format!("/api/arena/battles/{id}/vote"),
            Some(json!({"winner": "b"})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "one vote per battle: {again}");
    }
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/arena/battles/1/vote",
            Some(json!({"winner": "maybe"}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/arena/battles/999/a",
            Some(json!({"messages": []}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/arena/battles",
            Some(json!({"model_a": "tiny-run/checkpoint-10", "model_b": "tiny-run/checkpoint-10"}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );

    let (status, _, board) = call(&app, "GET", "/arena/leaderboard", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        board.contains("tiny-run/checkpoint-10") && board.contains("tiny-run/checkpoint-20"),
        "{board}"
    );
    // The run page shows the arena chart and says the suite went to no judge.
    let (_, _, runpage) = call(&app, "GET", "/runs/tiny-run", None).await;
    assert!(
        runpage.contains("Arena rating by step")
            && runpage.contains("have not been sent to any judge"),
        "{runpage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_relayed_stream_stops_the_upstream_generation() {
    // Upstream: the real model, asked for a long answer.
    let registry = Registry::from_sources(
        &[smollm_gguf().display().to_string()],
        LoadOptions::default(),
    )
    .unwrap();
    let upstream = router(AppState::new(registry, ServeSettings::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "http://127.0.0.1:{}/v1",
        listener.local_addr().unwrap().port()
    );
    let upstream_for_metrics = upstream.clone();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let (_t, run) = run_folder();
    let registry = Registry::from_sources(
        &[run.join("checkpoint-10").display().to_string()],
        LoadOptions::default(),
    )
    .unwrap();
    registry
        .add_remote(
            vibecheck_server::RemoteEndpoint::parse(&format!(
                "id=far,url={base},model=SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
            .unwrap(),
        )
        .unwrap();
    let here = router(AppState::new(registry, ServeSettings::default()));
    let body = json!({"model": "far", "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
                      "max_tokens": 1500, "temperature": 0, "stream": true});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = here.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body();
    let first = stream.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("\"model\":\"far\""));
    drop(stream); // the client goes away after the first token
    let mut cancelled = String::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (_, _, metrics) = call(&upstream_for_metrics, "GET", "/metrics", None).await;
        if let Some(line) = metrics
            .lines()
            .find(|l| l.starts_with("vibecheck_cancelled_generations_total"))
        {
            cancelled = line.to_string();
            if line.ends_with(" 1") {
                break;
            }
        }
    }
    assert!(
        cancelled.ends_with(" 1"),
        "the upstream generation was cancelled: {cancelled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_cost_reports_show_on_the_cost_page_and_on_their_runs_page() {
    use vibecheck_engines::cost::{HourlyPrice, Report};
    use vibecheck_engines::load::{LatencyTarget, Level, LoadSettings};
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("watch.db");
    let suite = vibecheck_suite::Suite::from_toml(
        "[[prompts]]\nid = \"hello\"\nprompt = \"hello\"\n",
        "tiny",
        "test",
    )
    .unwrap();
    {
        let mut store = vibecheck_store::Store::open(&db).unwrap();
        let r = store
            .upsert_run("tiny-run", "/runs/tiny-run", false)
            .unwrap();
        store
            .put_suite(&suite.hash(), &suite.name, &suite.canonical_json())
            .unwrap();
        let ck = store
            .upsert_checkpoint(
                r.id,
                "checkpoint-10",
                "/runs/tiny-run/checkpoint-10",
                Some(10),
                "h",
            )
            .unwrap();
        let answer = vibecheck_store::NewAnswer {
            text: "hi".into(),
            params: "{}".into(),
            finish_reason: "stop".into(),
            template_hash: "t".into(),
            ..Default::default()
        };
        store
            .insert_conversation(ck.id, &suite.hash(), "hello", 0, &[answer])
            .unwrap();
        let level = Level {
            concurrency: 2,
            requests: 8,
            seconds: 4.0,
            prompt_tokens: 800,
            output_tokens: 512,
            output_tok_s: 128.0,
            total_tok_s: 328.0,
            requests_per_s: 2.0,
            meets_target: true,
            ..Level::default()
        };
        let price = HourlyPrice {
            hardware: "1 × L4".into(),
            usd_per_hour: 0.8,
            source: "invoice".into(),
            checked_on: "2026-05-07".into(),
        };
        // A model name with markup in it: shown escaped.
        let report = Report::new(
            "tiny-run/checkpoint-10 <b>x</b>",
            "http://127.0.0.1:1/v1",
            &price,
            &LatencyTarget::default(),
            &LoadSettings::default(),
            vec![level],
            &vibecheck_engines::prices::PriceTable::bundled(),
        );
        store
            .put_cost_report(&report.model, &serde_json::to_string(&report).unwrap())
            .unwrap();
    }
    let registry = Registry::from_sources(&[], LoadOptions::default()).unwrap();
    let app = router(AppState::new(registry, ServeSettings::default()).with_store(db));
    // $0.80/hour at 128 output tok/s: 460 800 tokens an hour, $1.736 per 1M.
    let (status, _, page) = call(&app, "GET", "/cost", None).await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "At concurrency <b>2</b>",
        "$1.736 per 1M output tokens",
        "tiny-run/checkpoint-10 &lt;b&gt;x&lt;/b&gt;",
        "checked 2026-05-07",
        "$ per 1M output tokens by concurrency",
        "gpt-4o-mini",
    ] {
        assert!(page.contains(want), "{want}");
    }
    assert!(!page.contains("<b>x</b>"));
    let (status, _, run_page) = call(&app, "GET", "/runs/tiny-run", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        run_page.contains("<h2>Serving cost</h2>")
            && run_page.contains("$1.736 per 1M output tokens")
    );
}
