//! Everything the engine knows about GGUF: the checked header as candle's `Content` ([`read_gguf`], `header.rs`),
//! the hyper-parameters and chat template in its metadata (here), tensor names and the Q/K row permutation
//! (`names.rs`), and the embedded vocabulary (`vocab.rs`). The header itself is parsed and checked by
//! `vibecheck_checkpoint::gguf`.
//!
//! Only the llama family (`general.architecture = "llama"`: Llama 1/2/3, SmolLM, TinyLlama, Mistral exports)
//! is supported; its Q/K rows are un-permuted on load.

mod header;
pub mod names;
pub mod vocab;

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};

pub use names::{gguf_name, hf_name, unpermute_qk_rows, unpermute_rows};
pub use vocab::{GgufSpecialTokens, GgufVocab};

use crate::EngineError;

use crate::config::{bounded, Activation, Arch, Limit, ModelConfig, RopeConfig, RopeScaling};

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

/// The model's hyper-parameters from `llama.*` metadata.
pub fn config_from_gguf(c: &Content) -> Result<ModelConfig, String> {
    let arch = get(c, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or("missing `general.architecture`")?;
    if arch != "llama" {
        return Err(format!(
            "GGUF architecture {arch:?} is not supported (supported: \"llama\"); use the Hugging Face checkpoint folder instead"
        ));
    }
    let need = |k: &str, limit: Limit| -> Result<usize, String> {
        let key = format!("llama.{k}");
        let v = get_u(c, &key)?.ok_or_else(|| format!("missing `{key}`"))?;
        bounded(&key, v, limit)
    };
    let hidden = need("embedding_length", Limit::Width)?;
    let heads = need("attention.head_count", Limit::Heads)?;
    let kv_heads = bounded(
        "llama.attention.head_count_kv",
        get_u(c, "llama.attention.head_count_kv")?.unwrap_or(heads),
        Limit::Heads,
    )?;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!("head counts {heads}/{kv_heads} are inconsistent"));
    }
    let head_dim = bounded(
        "llama.attention.key_length",
        get_u(c, "llama.attention.key_length")?.unwrap_or(hidden / heads),
        Limit::Width,
    )?;
    let vocab = match c.tensor_infos.get("token_embd.weight") {
        Some(t) => bounded(
            "token_embd.weight's rows",
            t.shape.dims().first().copied().unwrap_or(0),
            Limit::Vocab,
        )?,
        None => return Err("missing tensor `token_embd.weight`".into()),
    };
    let scaling = match get(c, "llama.rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        Some("linear") => RopeScaling::Linear {
            factor: get_f(c, "llama.rope.scaling.factor").unwrap_or(1.0),
        },
        Some("none") | None => RopeScaling::None,
        Some(other) => return Err(format!("rope scaling {other:?} in GGUF is not supported")),
    };
    let eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| get(c, k).and_then(|v| v.to_u32().ok()))
        .collect();
    let num_layers = need("block_count", Limit::Layers)?;
    Ok(ModelConfig {
        arch: Arch::Llama,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length", Limit::Width)?,
        num_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size: vocab,
        norm_eps: get_f(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        max_position_embeddings: bounded(
            "llama.context_length",
            get_u(c, "llama.context_length")?.unwrap_or(2048),
            Limit::Positions,
        )?,
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        rope: RopeConfig {
            theta: get_f(c, "llama.rope.freq_base").unwrap_or(10000.0),
            scaling,
            partial_rotary_factor: 1.0,
        },
        attention_bias: false,
        mlp_bias: false,
        activation: Activation::Silu,
        layer_windows: vec![None; num_layers],
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        query_pre_attn_scalar: None,
        bos_token_id: get(c, "tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok()),
        eos_token_ids: eos,
        quirks: Default::default(),
    })
}

/// Llama 3.1-style frequency divisors stored as the `rope_freqs.weight` tensor, when the file has them.
pub fn rope_divisors(c: &Content, path: &std::path::Path) -> Result<Option<Vec<f64>>, String> {
    if !c.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let t = c
        .tensor(&mut file, "rope_freqs.weight", &candle_core::Device::Cpu)
        .and_then(|q| q.dequantize(&candle_core::Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| format!("tensor \"rope_freqs.weight\": {e}"))?;
    if t.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(
            "tensor \"rope_freqs.weight\" holds a non-positive or non-finite factor".into(),
        );
    }
    Ok(Some(t.into_iter().map(f64::from).collect()))
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
