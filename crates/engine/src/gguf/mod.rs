//! Everything the engine knows about GGUF: the checked header as candle's `Content` ([`read_gguf`], `header.rs`),
//! the hyper-parameters and chat template in its metadata (here), tensor names and the Q/K row permutation
//! (`names.rs`), and the embedded vocabulary (`vocab.rs`). The header itself is parsed and checked by
//! `vibecheck_checkpoint::gguf`.
//!
//! The architectures llama.cpp's converter writes for the models this engine runs (`llama` for Llama, Mistral
//! and Mixtral exports, `qwen2`, `qwen3`, their MoE variants, the Gemmas, `phi2`, `phi3`, `gptneox`, `olmo`,
//! `olmo2`, `stablelm`, `command-r`, `granite`, `smollm3`); Q/K rows of
//! the ones the converter permutes are un-permuted on load, and stacked experts are read one expert at a time.

mod header;
pub mod names;
pub mod vocab;

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};

pub use names::{gguf_name, hf_name, unpermute_qk_rows, unpermute_rows};
pub use vocab::{GgufSpecialTokens, GgufVocab};

use crate::EngineError;

use crate::config::{bounded, Arch, Limit, ModelConfig, RopeScaling};

fn get<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn get_u(c: &Content, key: &str) -> Result<Option<usize>, String> {
    match get(c, key) {
        None => Ok(None),
        Some(v) => v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| Some(x as usize))
            .map_err(|_| format!("`{key}` is not an integer")),
    }
}

fn get_f(c: &Content, key: &str) -> Option<f64> {
    get(c, key).and_then(|v| v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok())
}

/// llama.cpp's architecture names and the Hugging Face class each was converted from (Mistral and Mixtral are
/// written as `llama`; a `llama` file with experts is Mixtral).
const ARCHES: [(&str, Arch); 17] = [
    ("llama", Arch::Llama),
    ("phi2", Arch::Phi),
    ("gptneox", Arch::GptNeoX),
    ("olmo", Arch::Olmo),
    ("stablelm", Arch::StableLm),
    ("command-r", Arch::Cohere),
    ("granite", Arch::Granite),
    ("qwen2", Arch::Qwen2),
    ("qwen3", Arch::Qwen3),
    ("qwen2moe", Arch::Qwen2Moe),
    ("qwen3moe", Arch::Qwen3Moe),
    ("gemma", Arch::Gemma),
    ("gemma2", Arch::Gemma2),
    ("gemma3", Arch::Gemma3),
    ("phi3", Arch::Phi3),
    ("olmo2", Arch::Olmo2),
    ("smollm3", Arch::SmolLM3),
];

/// The model's hyper-parameters from `{arch}.*` metadata, as the config.json llama.cpp's converter read them from
/// (then parsed by [`ModelConfig::from_hf_json`], so every architecture's rules live in one place). What GGUF does
/// not record is taken as llama.cpp takes it: Gemma 2 and 3 scale queries by `head_dim^-0.5`, Gemma 3 slides five
/// layers in six, SmolLM3 drops RoPE on every fourth layer. The Gemma converters store norm weights with the `+1`
/// already added.
pub fn config_from_gguf(c: &Content) -> Result<ModelConfig, String> {
    let name = get(c, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or("missing `general.architecture`")?;
    let Some(&(prefix, mut arch)) = ARCHES.iter().find(|(n, _)| n == name) else {
        let known: Vec<&str> = ARCHES.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "GGUF architecture {name:?} is not supported (supported: {}); use the Hugging Face checkpoint folder instead",
            known.join(", ")
        ));
    };
    let key = |k: &str| format!("{prefix}.{k}");
    let need = |k: &str, limit: Limit| -> Result<usize, String> {
        let key = key(k);
        let v = get_u(c, &key)?.ok_or_else(|| format!("missing `{key}`"))?;
        bounded(&key, v, limit)
    };
    let opt = |k: &str| get_u(c, &key(k));
    let hidden = need("embedding_length", Limit::Width)?;
    let heads = need("attention.head_count", Limit::Heads)?;
    let head_dim = bounded(
        &key("attention.key_length"),
        opt("attention.key_length")?.unwrap_or(hidden / heads.max(1)),
        Limit::Width,
    )?;
    // The K projection's rows say how many KV heads there are (the Phi-2 converter writes head_count_kv =
    // head_count whatever the model has).
    let k_rows = c
        .tensor_infos
        .get("blk.0.attn_k.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .filter(|&r| head_dim > 0 && r % head_dim == 0);
    let kv_heads = bounded(
        &key("attention.head_count_kv"),
        match (arch, k_rows) {
            (Arch::Phi, Some(rows)) => rows / head_dim,
            _ => opt("attention.head_count_kv")?.unwrap_or(heads),
        },
        Limit::Heads,
    )?;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!("head counts {heads}/{kv_heads} are inconsistent"));
    }
    // Phi-2's converter writes feed_forward_length = 4 × hidden; the up projection's rows are the truth.
    let ffn_rows = c
        .tensor_infos
        .get("blk.0.ffn_up.weight")
        .and_then(|t| t.shape.dims().first().copied());
    let vocab = match c.tensor_infos.get("token_embd.weight") {
        Some(t) => bounded(
            "token_embd.weight's rows",
            t.shape.dims().first().copied().unwrap_or(0),
            Limit::Vocab,
        )?,
        None => return Err("missing tensor `token_embd.weight`".into()),
    };
    let num_layers = need("block_count", Limit::Layers)?;
    let experts = opt("expert_count")?.unwrap_or(0);
    if arch == Arch::Llama && experts > 0 {
        arch = Arch::Mixtral;
    }
    let mut json = serde_json::json!({
        "architectures": [arch.hf_name()],
        "hidden_size": hidden,
        "intermediate_size": match (arch, ffn_rows) {
            (Arch::Phi, Some(rows)) => rows,
            _ => need("feed_forward_length", Limit::Width)?,
        },
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": bounded(&key("context_length"), opt("context_length")?.unwrap_or(2048), Limit::Positions)?,
        "tie_word_embeddings": !c.tensor_infos.contains_key("output.weight"),
        "use_sliding_window": false,
    });
    let j = json.as_object_mut().expect("an object");
    let mut put = |k: &str, v: serde_json::Value| {
        j.insert(k.to_string(), v);
    };
    let eps = get_f(c, &key("attention.layer_norm_rms_epsilon"))
        .or_else(|| get_f(c, &key("attention.layer_norm_epsilon")))
        .unwrap_or(1e-5);
    put("rms_norm_eps", eps.into());
    if let Some(theta) = get_f(c, &key("rope.freq_base")) {
        put("rope_theta", theta.into());
    }
    if let Some(local) = get_f(c, &key("rope.freq_base_swa")) {
        put("rope_local_base_freq", local.into());
    }
    if let Some(rot) = opt("rope.dimension_count")?.filter(|&r| r > 0 && r < head_dim) {
        put(
            "partial_rotary_factor",
            (rot as f64 / head_dim as f64).into(),
        );
    }
    match get(c, &key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        Some("linear") => put(
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": get_f(c, &key("rope.scaling.factor")).unwrap_or(1.0)}),
        ),
        Some("none") | None => {}
        Some(other) => return Err(format!("rope scaling {other:?} in GGUF is not supported")),
    }
    if let Some(orig) = opt("rope.scaling.original_context_length")? {
        put("original_max_position_embeddings", orig.into());
    }
    if let Some(w) = opt("attention.sliding_window")?.filter(|&w| w > 0) {
        put("sliding_window", w.into());
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(v) = get_f(c, &key(k)).filter(|v| *v > 0.0) {
            put(k, v.into());
        }
    }
    if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
        put("query_pre_attn_scalar", head_dim.into());
    }
    if c.tensor_infos.contains_key("blk.0.attn_q.bias") {
        put("attention_bias", true.into());
        put("use_qkv_bias", true.into());
    }
    if let Some(parallel) = get(c, &key("use_parallel_residual")).and_then(|v| v.to_bool().ok()) {
        put("use_parallel_residual", parallel.into());
    }
    if let Some(clip) = get_f(c, &key("attention.clamp_kqv")) {
        put("clip_qkv", clip.into());
    }
    match arch {
        Arch::Cohere => {
            if let Some(s) = get_f(c, &key("logit_scale")) {
                put("logit_scale", s.into());
            }
        }
        Arch::Granite => {
            for (gguf, hf) in [
                ("attention.scale", "attention_multiplier"),
                ("embedding_scale", "embedding_multiplier"),
                ("residual_scale", "residual_multiplier"),
                ("logit_scale", "logits_scaling"),
            ] {
                if let Some(v) = get_f(c, &key(gguf)) {
                    put(hf, v.into());
                }
            }
        }
        _ => {}
    }
    if experts > 0 {
        put("num_local_experts", experts.into());
        put(
            "num_experts_per_tok",
            opt("expert_used_count")?.unwrap_or(2).into(),
        );
        if let Some(n) = opt("expert_feed_forward_length")? {
            put("moe_intermediate_size", n.into());
        }
        if let Some(n) = opt("expert_shared_feed_forward_length")? {
            put("shared_expert_intermediate_size", n.into());
        }
        put(
            "norm_topk_prob",
            matches!(arch, Arch::Mixtral | Arch::Qwen3Moe).into(),
        );
    }
    if let Some(bos) = get(c, "tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok()) {
        put("bos_token_id", bos.into());
    }
    let eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| get(c, k).and_then(|v| v.to_u32().ok()))
        .collect();
    put("eos_token_id", eos.into());
    let mut cfg = ModelConfig::from_hf_json(&json)?;
    if arch.is_gemma() {
        // The converter stored `1 + w`.
        cfg.quirks.norm = crate::config::NormKind::Rms;
    }
    Ok(cfg)
}

/// A small tensor of positive RoPE factors, when the file has it.
fn rope_factors(
    c: &Content,
    path: &std::path::Path,
    name: &str,
) -> Result<Option<Vec<f64>>, String> {
    if !c.tensor_infos.contains_key(name) {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let t = c
        .tensor(&mut file, name, &candle_core::Device::Cpu)
        .and_then(|q| q.dequantize(&candle_core::Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| format!("tensor {name:?}: {e}"))?;
    if t.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(format!(
            "tensor {name:?} holds a non-positive or non-finite factor"
        ));
    }
    Ok(Some(t.into_iter().map(f64::from).collect()))
}

/// Llama 3.1-style frequency divisors stored as the `rope_freqs.weight` tensor, when the file has them.
pub fn rope_divisors(c: &Content, path: &std::path::Path) -> Result<Option<Vec<f64>>, String> {
    rope_factors(c, path, "rope_freqs.weight")
}

/// Phi-3's long-rope scaling (128k models) as its converter stores it: `rope_factors_short`/`_long` tensors and
/// the `rope.scaling.*` keys; `None` when the file has no such factors.
pub fn long_rope(c: &Content, path: &std::path::Path) -> Result<Option<RopeScaling>, String> {
    let short = rope_factors(c, path, "rope_factors_short.weight")?;
    let long = rope_factors(c, path, "rope_factors_long.weight")?;
    let (short_factor, long_factor) = match (short, long) {
        (None, None) => return Ok(None),
        (Some(s), Some(l)) if s.len() == l.len() => (s, l),
        _ => {
            return Err(
                "rope_factors_short.weight and rope_factors_long.weight must both be present, of one length"
                    .into(),
            )
        }
    };
    let prefix = get(c, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let orig =
        get_u(c, &format!("{prefix}.rope.scaling.original_context_length"))?.ok_or_else(|| {
            format!("long-rope factors need `{prefix}.rope.scaling.original_context_length`")
        })?;
    Ok(Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: orig as f64,
        attention_factor: get_f(c, &format!("{prefix}.rope.scaling.attn_factor")),
    }))
}

pub fn chat_template(c: &Content) -> Option<String> {
    get(c, "tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// Reads a GGUF file's header, naming the file in any error. Our reader checks every count, length, the
/// alignment and each tensor's range before anything is allocated; candle's `Content` is built from the result.
pub fn read_gguf(path: &Path) -> Result<gguf_file::Content, EngineError> {
    let header = vibecheck_checkpoint::gguf::read(path)?;
    header::to_content(header).map_err(|m| EngineError::file(path, m))
}
