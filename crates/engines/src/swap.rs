//! A new checkpoint into a running engine, without a restart where the engine can take one:
//!
//! - SGLang: `POST /update_weights_from_disk` with `model_path` and `weight_version`; the engine answers
//!   `{"success": …, "message": …}` (400 on failure), and reports the version it now serves at `GET /model_info`
//!   (newer), `GET /get_model_info` or `GET /get_weight_version` (older), tried in that order.
//! - vLLM (started with `VLLM_SERVER_DEV_MODE=1` and `--enable-sleep-mode`): `POST /sleep?level=2` (weights and
//!   KV cache released), `POST /wake_up?tags=weights`, `POST /collective_rpc` with method `reload_weights` and
//!   `weights_path` (vLLM 2026; older workers take no arguments, so there `update_config` points the model at the
//!   new folder first), then `POST /wake_up?tags=kv_cache`. vLLM keeps no weight version, so the version is ours.
//!   vLLM's dev routes take no API key: the engine listens on loopback only.
//!
//! Either way the swap is verified by what the engine reports and by a fixed probe prompt's greedy answer, which is
//! recorded with the checkpoint's answers.

use std::time::Duration;

use serde_json::{json, Value};
use vibecheck_client::{Client, Timeouts};

use crate::launch::SwapPath;
use crate::process::Engine;
use crate::EngineError;

/// The probe whose greedy answer is recorded after each swap.
pub const PROBE_PROMPT: &str = "Say hello and name one colour.";

/// What a swap did.
#[derive(Debug, Clone, PartialEq)]
pub struct Swapped {
    pub path: SwapPath,
    /// The weight version the engine serves now (reported by SGLang; ours for vLLM).
    pub weight_version: String,
    /// The engine's own confirmation (SGLang's message, vLLM's RPC results).
    pub detail: String,
    pub seconds: f64,
}

/// Weights can take minutes to load.
const SWAP_TIMEOUTS: Timeouts = Timeouts::Phases {
    connect: Duration::from_secs(10),
    read: Duration::from_secs(1800),
};

fn call(client: &Client, path: &str, body: &Value, what: &str) -> Result<Value, EngineError> {
    let reply = client
        .post_json(path, body, SWAP_TIMEOUTS)
        .map_err(|e| EngineError::Call(format!("{what}: {e}")))?;
    let status = reply.status;
    let text = reply
        .text(8 << 20)
        .map_err(|e| EngineError::Call(format!("{what}: {e}")))?;
    if status != 200 {
        return Err(EngineError::Call(format!(
            "{what}: HTTP {status}: {}",
            vibecheck_client::error_detail(&text, 300)
        )));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Swaps the checkpoint at `model_path` into `engine` under `version`, and checks the engine took it.
pub fn swap(engine: &Engine, model_path: &str, version: &str) -> Result<Swapped, EngineError> {
    let started = std::time::Instant::now();
    let root = engine.root_client();
    let path = engine.kind.swap_path();
    let (weight_version, detail) = match path {
        SwapPath::SglangUpdateFromDisk => {
            let v = call(
                &root,
                "/update_weights_from_disk",
                &json!({"model_path": model_path, "weight_version": version}),
                "SGLang's /update_weights_from_disk",
            )?;
            if v["success"] != Value::Bool(true) {
                return Err(EngineError::Call(format!(
                    "SGLang refused the new weights: {}",
                    v["message"]
                        .as_str()
                        .map_or_else(|| v.to_string(), str::to_string)
                )));
            }
            let message = v["message"].as_str().unwrap_or("").to_string();
            let reported = sglang_weight_version(&root)?;
            if reported != version {
                return Err(EngineError::Call(format!(
                    "SGLang reports weight version {reported:?} after the swap, not {version:?}: the new \
                     weights are not the ones it serves"
                )));
            }
            (reported, message)
        }
        SwapPath::VllmReloadWeights => {
            let vllm = |p: &str, body: Value, what: &str| call(&root, p, &body, what);
            vllm("/sleep?level=2", json!({}), "vLLM's /sleep?level=2")?;
            vllm(
                "/wake_up?tags=weights",
                json!({}),
                "vLLM's /wake_up?tags=weights",
            )?;
            let rpc = vllm(
                "/collective_rpc",
                json!({"method": "reload_weights", "kwargs": {"weights_path": model_path}}),
                "vLLM's /collective_rpc reload_weights",
            )
            .or_else(|first| {
                // A vLLM whose reload_weights takes no path: point the model config at the folder, then reload.
                tracing::info!(
                    "reload_weights with weights_path failed ({first}); trying update_config first"
                );
                vllm(
                    "/collective_rpc",
                    json!({"method": "update_config",
                           "kwargs": {"overrides": {"model_config": {"model": model_path}}}}),
                    "vLLM's /collective_rpc update_config",
                )
                .and_then(|_| {
                    vllm(
                        "/collective_rpc",
                        json!({"method": "reload_weights"}),
                        "vLLM's /collective_rpc reload_weights",
                    )
                })
                .map_err(|second| EngineError::Call(format!("{first}; then {second}")))
            });
            // Whatever the reload did, the KV cache comes back, so the engine is not left asleep.
            let woke = vllm(
                "/wake_up?tags=kv_cache",
                json!({}),
                "vLLM's /wake_up?tags=kv_cache",
            );
            let rpc = rpc?;
            woke?;
            (version.to_string(), rpc.to_string())
        }
        SwapPath::Restart | SwapPath::Launch => {
            return Err(EngineError::Config(format!(
                "{} cannot swap weights while running; it is restarted on the new checkpoint",
                engine.kind.name()
            )))
        }
    };
    Ok(Swapped {
        path,
        weight_version,
        detail,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The weight version SGLang serves: `/model_info`, else `/get_model_info`, else `/get_weight_version`.
fn sglang_weight_version(root: &Client) -> Result<String, EngineError> {
    let mut tried = Vec::new();
    for route in ["/model_info", "/get_model_info", "/get_weight_version"] {
        let reply = match root.get(route, SWAP_TIMEOUTS) {
            Ok(r) => r,
            Err(e) => {
                tried.push(format!("{route}: {}", e.detail()));
                continue;
            }
        };
        let status = reply.status;
        let text = reply.text(1 << 20).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match v["weight_version"].as_str() {
            Some(version) if status == 200 => return Ok(version.to_string()),
            _ => tried.push(format!("{route}: HTTP {status} without weight_version")),
        }
    }
    Err(EngineError::Call(format!(
        "SGLang does not report its weight version ({})",
        tried.join("; ")
    )))
}

/// The probe's greedy answer (16 tokens), to record what the engine serves after a swap.
pub fn probe(engine: &Engine) -> Result<String, EngineError> {
    let body = json!({"model": engine.served_name, "max_tokens": 16, "temperature": 0,
                      "messages": [{"role": "user", "content": PROBE_PROMPT}]});
    let v = call(
        &engine.client(),
        "/chat/completions",
        &body,
        "the probe prompt",
    )?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| EngineError::Call(format!("the probe's answer has no text: {v}")))
}
