//! GGUF tensor names and layout: the llama tensors' names in both conventions, where a tensor lies in the file,
//! and llama.cpp's Q/K row permutation undone.

use candle_core::quantized::{gguf_file, QStorage, QTensor};

use crate::config::Arch;

/// Whether llama.cpp's converter permuted this architecture's Q/K rows (`LlamaModel` and its subclasses).
pub(crate) fn permuted(arch: Arch) -> bool {
    matches!(
        arch,
        Arch::Llama | Arch::Mistral | Arch::Mixtral | Arch::SmolLM3 | Arch::Granite | Arch::Olmo
    )
}

/// The GGUF tensor that holds the Hugging Face tensor `hf` of `arch`, and the expert when it is one slice of
/// llama.cpp's stacked experts (`ffn_gate_exps` holds every expert's `gate_proj`, expert-major).
pub fn gguf_location(hf: &str, arch: Arch) -> Option<(String, Option<usize>)> {
    if arch == Arch::Llama {
        return gguf_name(hf).map(|n| (n, None));
    }
    let (module, suffix) = hf.rsplit_once('.')?;
    let fixed = match module {
        "model.embed_tokens" | "gpt_neox.embed_in" => Some("token_embd"),
        "model.norm" | "model.final_layernorm" | "gpt_neox.final_layer_norm" => Some("output_norm"),
        "lm_head" | "embed_out" => Some("output"),
        _ => None,
    };
    if let Some(g) = fixed {
        return Some((format!("{g}.{suffix}"), None));
    }
    let layers = hf
        .strip_prefix("model.layers.")
        .or_else(|| hf.strip_prefix("gpt_neox.layers."))?;
    let (idx, tail) = layers.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let experts = module
        .strip_prefix("mlp.experts.")
        .or_else(|| module.strip_prefix("block_sparse_moe.experts."));
    if let Some(rest) = experts {
        let (e, proj) = rest.split_once('.')?;
        let stacked = match proj {
            "gate_proj" | "w1" => "ffn_gate_exps",
            "up_proj" | "w3" => "ffn_up_exps",
            "down_proj" | "w2" => "ffn_down_exps",
            _ => return None,
        };
        return Some((
            format!("blk.{idx}.{stacked}.{suffix}"),
            Some(e.parse().ok()?),
        ));
    }
    let sandwich = matches!(arch, Arch::Gemma2 | Arch::Gemma3 | Arch::Olmo2);
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if sandwich => "post_attention_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" | "self_attn.dense" | "attention.dense" => "attn_output",
        "self_attn.qkv_proj" | "attention.query_key_value" => "attn_qkv",
        "mlp.fc1" | "mlp.dense_h_to_4h" => "ffn_up",
        "mlp.fc2" | "mlp.dense_4h_to_h" => "ffn_down",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // Phi-3's fused gate and up rows, in that order.
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.gate" | "block_sparse_moe.gate" => "ffn_gate_inp",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some((format!("blk.{idx}.{g}.{suffix}"), None))
}

/// What a GGUF tensor needs before use: Q and K rows of llama files are permuted for llama.cpp's RoPE.
pub(crate) fn gguf_permute_heads(gguf: &str, heads: usize, kv_heads: usize) -> Option<usize> {
    if gguf.ends_with("attn_q.weight") {
        Some(heads)
    } else if gguf.ends_with("attn_k.weight") {
        Some(kv_heads)
    } else {
        None
    }
}

/// The byte range of a GGUF tensor inside the file, checked.
pub(crate) fn gguf_range(
    content: &gguf_file::Content,
    info: &gguf_file::TensorInfo,
    file_len: usize,
) -> Result<std::ops::Range<usize>, String> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    if !elems.is_multiple_of(block) {
        return Err(format!(
            "{elems} elements are not a whole number of {:?} blocks",
            info.ggml_dtype
        ));
    }
    let size = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
    let start = content
        .tensor_data_offset
        .checked_add(info.offset)
        .ok_or("offset overflows")?;
    let end = start.checked_add(size).ok_or("size overflows")?;
    if end > file_len as u64 {
        return Err(format!(
            "needs bytes {start}..{end} but the file has {file_len} (truncated?)"
        ));
    }
    Ok(start as usize..end as usize)
}

/// Hugging Face and GGUF names of the llama tensors: whole names, then per-layer module names.
const LLAMA_FIXED: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const LLAMA_LAYER: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Translates a llama tensor name between the two conventions (`to_gguf` picks the direction).
fn translate(name: &str, to_gguf: bool) -> Option<String> {
    let pick = |(hf, gguf): &(&'static str, &'static str)| {
        if to_gguf {
            (*hf, *gguf)
        } else {
            (*gguf, *hf)
        }
    };
    if let Some((_, to)) = LLAMA_FIXED.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if to_gguf {
        ("model.layers.", "blk.")
    } else {
        ("blk.", "model.layers.")
    };
    let (idx, tail) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let (_, to) = LLAMA_LAYER
        .iter()
        .map(pick)
        .find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{idx}.{to}.{suffix}"))
}

/// Maps a Hugging Face llama tensor name to its GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, true)
}

/// The Hugging Face name of a GGUF llama tensor.
pub fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, false)
}

/// Undoes llama.cpp's Q/K row permutation on raw rows: GGUF stores each head's rotary pairs interleaved,
/// Hugging Face stores them as two halves. Rows are quantized independently, so they move as whole blocks.
pub fn unpermute_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    heads: usize,
) -> Result<Vec<u8>, String> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || data.len() != rows * row_bytes
    {
        return Err(format!("cannot un-permute {rows} rows into {heads} heads"));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for part in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + part * half + j;
                let gguf_row = h * head_dim + j * 2 + part;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&data[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// [`unpermute_rows`] for a whole ggml tensor (used by the converter).
pub fn unpermute_qk_rows(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let data = q.data()?;
    let row_bytes = data.len() / dims[0].max(1);
    let out = unpermute_rows(&data, dims[0], row_bytes, heads).map_err(candle_core::Error::msg)?;
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &q.device(), q.dtype())?;
    QTensor::new(storage, dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_names_translate_both_ways() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.7.self_attn.k_proj.weight",
                "blk.7.attn_k.weight",
            ),
            (
                "model.layers.29.post_attention_layernorm.weight",
                "blk.29.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf));
            assert_eq!(hf_name(gguf).as_deref(), Some(hf));
        }
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_name("blk.0.unknown.weight"), None);
    }

    #[test]
    fn unpermute_restores_the_half_split_layout() {
        // Two heads of dim 4, one byte per row: GGUF rows [h0: a0 b0 a1 b1][h1: ...] become [a0 a1 b0 b1].
        let gguf = [0u8, 10, 1, 11, 20, 30, 21, 31];
        assert_eq!(
            unpermute_rows(&gguf, 8, 1, 2).unwrap(),
            vec![0, 1, 10, 11, 20, 21, 30, 31]
        );
        assert!(unpermute_rows(&gguf, 8, 1, 3).is_err());
    }
}
