//! `vibecheck convert`: a GGUF file written out as a standard Hugging Face checkpoint folder that transformers
//! itself can load (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` with the chat
//! template, `generation_config.json`). Quantized tensors are dequantized; llama.cpp's Q/K row permutation is
//! undone.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::gguf::{hf_name, read_gguf, unpermute_qk_rows};
use crate::{gguf, EngineError};

/// What the conversion wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub tensors: usize,
    pub bytes: u64,
}

/// Converts `gguf_path` into a checkpoint folder at `out_dir` with weights in `dtype`.
pub fn gguf_to_hf(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: DType,
) -> Result<ConvertReport, EngineError> {
    let content = read_gguf(gguf_path)?;
    let cfg = gguf::config_from_gguf(&content).map_err(|m| EngineError::file(gguf_path, m))?;
    if cfg.arch != crate::config::Arch::Llama {
        return Err(EngineError::file(
            gguf_path,
            format!(
                "convert writes llama GGUF files out as folders; this one is {} (load it directly: vibecheck serves it)",
                cfg.arch.hf_name()
            ),
        ));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(EngineError::file(
            gguf_path,
            "this GGUF scales RoPE with `rope_freqs.weight` (Llama 3.1 style), which a config.json cannot express \
             without the original rope_scaling parameters; load the GGUF directly or convert the original folder",
        ));
    }
    let tok_json = crate::gguf::GgufVocab::read(&content)
        .map_err(|m| EngineError::file(gguf_path, m))?
        .to_json();
    std::fs::create_dir_all(out_dir).map_err(|e| EngineError::io(out_dir, e))?;

    let mut file = std::fs::File::open(gguf_path).map_err(|e| EngineError::io(gguf_path, e))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            return Err(EngineError::file(
                gguf_path,
                format!("tensor {name:?} has no Hugging Face llama equivalent"),
            ));
        };
        let mut q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| EngineError::file(gguf_path, format!("tensor {name:?}: {e}")))?;
        if name.ends_with("attn_q.weight") {
            q = unpermute_qk_rows(&q, cfg.num_heads)?;
        } else if name.ends_with("attn_k.weight") {
            q = unpermute_qk_rows(&q, cfg.num_kv_heads)?;
        }
        let t = q.dequantize(&Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(hf, t);
    }
    let count = tensors.len();
    let st_path = out_dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st_path)?;

    let dtype_name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope.theta,
        "rope_scaling": match cfg.rope.scaling {
            crate::config::RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            _ => serde_json::Value::Null,
        },
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids.first(),
        "torch_dtype": dtype_name,
        "use_cache": true,
    });
    write_json(&out_dir.join("config.json"), &config)?;
    write_json(&out_dir.join("tokenizer.json"), &tok_json)?;

    let token = |id: Option<u32>| -> serde_json::Value {
        let tokens = content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok());
        id.and_then(|i| {
            tokens
                .and_then(|t| t.get(i as usize))
                .and_then(|v| v.to_string().ok().cloned())
        })
        .map(serde_json::Value::String)
        .unwrap_or(serde_json::Value::Null)
    };
    let md_u32 = |k: &str| content.metadata.get(k).and_then(|v| v.to_u32().ok());
    let mut tok_cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(md_u32("tokenizer.ggml.bos_token_id")),
        "eos_token": token(md_u32("tokenizer.ggml.eos_token_id")),
        "unk_token": token(md_u32("tokenizer.ggml.unknown_token_id")),
        "pad_token": token(md_u32("tokenizer.ggml.padding_token_id")),
        "add_bos_token": content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
    });
    if let Some(t) = gguf::chat_template(&content) {
        tok_cfg["chat_template"] = json!(t);
    }
    write_json(&out_dir.join("tokenizer_config.json"), &tok_cfg)?;
    let gen = json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": if cfg.eos_token_ids.len() == 1 { json!(cfg.eos_token_ids[0]) } else { json!(cfg.eos_token_ids) },
        "pad_token_id": md_u32("tokenizer.ggml.padding_token_id"),
    });
    write_json(&out_dir.join("generation_config.json"), &gen)?;
    let bytes = std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0);
    Ok(ConvertReport {
        tensors: count,
        bytes,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), EngineError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| EngineError::file(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| EngineError::io(path, e))
}

/// A checkpoint folder whose weights are torch `.bin` files (single or sharded) written out as safetensors: the
/// same tensors in the same dtypes, one `.safetensors` per `.bin` (with an index when there are several), and
/// the folder's description and tokenizer files copied. The pickles are read as data, never run.
pub fn bin_to_safetensors(dir: &Path, out_dir: &Path) -> Result<ConvertReport, EngineError> {
    let files = vibecheck_checkpoint::shard_files(dir)?;
    if !files
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "bin"))
    {
        return Err(EngineError::file(
            dir,
            "already holds safetensors weights; there is nothing to convert",
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| EngineError::io(out_dir, e))?;
    let n = files.len();
    let mut weight_map = serde_json::Map::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    for (i, path) in files.iter().enumerate() {
        let header = vibecheck_checkpoint::weight_header(path)?;
        let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let out_name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for t in header.tensors {
            let len = (t.end - t.begin) as usize;
            let raw = crate::weights::read_range(&file, t.begin, len)
                .map_err(|m| EngineError::file(path, format!("tensor {:?}: {m}", t.name)))?;
            let dtype: safetensors::Dtype = serde_json::from_value(serde_json::Value::String(
                t.dtype.clone(),
            ))
            .map_err(|_| {
                EngineError::file(path, format!("tensor {:?}: dtype {:?}", t.name, t.dtype))
            })?;
            let view = safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &raw)
                .map_err(|e| EngineError::file(path, format!("tensor {:?}: {e:?}", t.name)))?;
            let tensor = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .map_err(|e| EngineError::file(path, format!("tensor {:?}: {e}", t.name)))?;
            weight_map.insert(t.name.clone(), json!(out_name));
            bytes += len as u64;
            count += 1;
            tensors.insert(t.name, tensor);
        }
        candle_core::safetensors::save(&tensors, out_dir.join(&out_name))?;
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": bytes}, "weight_map": weight_map});
        write_json(&out_dir.join("model.safetensors.index.json"), &index)?;
    }
    // The description, tokenizer and templates travel along; optimizer and trainer states do not.
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = (name.ends_with(".json")
            && name != "pytorch_model.bin.index.json"
            && name != "trainer_state.json")
            || name.ends_with(".jinja")
            || name.ends_with(".txt")
            || name == "tokenizer.model";
        if keep && entry.path().is_file() {
            std::fs::copy(entry.path(), out_dir.join(&name))
                .map_err(|e| EngineError::io(entry.path(), e))?;
        }
    }
    Ok(ConvertReport {
        tensors: count,
        bytes,
    })
}
