//! Regression tests for the defects a hostile probe found in loading (issue "Hardening"): each one killed or
//! exhausted the process before; now each is an error naming the file and the field.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use vibecheck_engine::weights::Weights;
use vibecheck_engine::{DType, Device};

use crate::fixtures::{assert_mentions, load_err, reference_dir, tiny_copy};

/// Sets `key` of the tiny checkpoint's config.json to `value`.
fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn regression_a_safetensors_file_that_shrinks_while_loading_is_an_error_not_sigbus() {
    // Hostile probe: `truncate` on model.safetensors 0.1 s after a request started the load killed `serve` with
    // SIGBUS (the tensors were read through memory mappings). The header is checked, then the file shrinks.
    let (_t, dir) = tiny_copy();
    let st = dir.join("model.safetensors");
    let weights = Weights::from_safetensors(vec![st.clone()], DType::F32, &Device::Cpu).unwrap();
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let mut errors = Vec::new();
    for layer in 0..2 {
        for name in ["self_attn.q_proj", "mlp.down_proj"] {
            let name = format!("model.layers.{layer}.{name}.weight");
            if let Err(e) = weights.packed(&name) {
                errors.push(e.to_string());
            }
        }
    }
    assert!(
        !errors.is_empty(),
        "every tensor read although the file shrank"
    );
    for e in &errors {
        assert_mentions(e, &["model.safetensors", "changed while loading"]);
    }
}

#[test]
fn regression_config_counts_are_checked_before_anything_is_sized_by_them() {
    // Hostile probe: `num_hidden_layers: 1000000000` allocated 16–24 GB (an OOM kill or SIGABRT).
    for (key, value) in [
        ("num_hidden_layers", 1_000_000_000u64),
        ("vocab_size", 1 << 40),
        ("hidden_size", 1 << 30),
        ("intermediate_size", 1 << 31),
        ("num_attention_heads", 1 << 20),
        ("max_position_embeddings", 1 << 31),
    ] {
        let (_t, dir) = tiny_copy();
        set_config(&dir, key, value.into());
        let err = load_err(&dir);
        assert_mentions(&err, &["config.json", key]);
    }
    // Within the limits but more than the weights hold: checked against the tensors present.
    let (_t, dir) = tiny_copy();
    set_config(&dir, "num_hidden_layers", 64.into());
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "64 layers", "the weights hold 2"],
    );
}

#[test]
fn regression_a_huge_config_file_is_refused_unread() {
    let (_t, dir) = tiny_copy();
    let path = dir.join("config.json");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(40 << 20).unwrap();
    assert_mentions(&load_err(&dir), &["config.json", "larger than 16 MiB"]);
}

#[test]
fn regression_gguf_counts_are_checked_before_anything_is_sized_by_them() {
    // Hostile probe: `llama.block_count = 10^9` in a GGUF aborted the process the same way.
    let meta = |count: u32| -> Content {
        let mut metadata = HashMap::new();
        metadata.insert(
            "general.architecture".to_string(),
            Value::String("llama".into()),
        );
        for (k, v) in [
            ("llama.embedding_length", 64u32),
            ("llama.attention.head_count", 4),
            ("llama.feed_forward_length", 128),
            ("llama.block_count", count),
        ] {
            metadata.insert(k.to_string(), Value::U32(v));
        }
        let mut tensor_infos = HashMap::new();
        tensor_infos.insert(
            "token_embd.weight".to_string(),
            candle_core::quantized::gguf_file::TensorInfo {
                ggml_dtype: candle_core::quantized::GgmlDType::F32,
                shape: candle_core::Shape::from((512, 64)),
                offset: 0,
            },
        );
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos,
            tensor_data_offset: 0,
        }
    };
    let err = vibecheck_engine::gguf::config_from_gguf(&meta(1_000_000_000)).unwrap_err();
    assert_mentions(&err, &["llama.block_count", "1000000000"]);
    assert!(vibecheck_engine::gguf::config_from_gguf(&meta(2)).is_ok());
}

#[test]
fn regression_nan_in_a_weight_is_reported_at_load() {
    let (_t, dir) = tiny_copy();
    let st = dir.join("model.safetensors");
    let header = vibecheck_checkpoint::safetensors_header::read(&st).unwrap();
    let t = header
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    assert_eq!(t.dtype, "F32");
    let mut bytes = std::fs::read(&st).unwrap();
    let at = (header.data_start + t.begin) as usize + 40;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model.layers.1.mlp.up_proj.weight", "NaN or infinite"],
    );
}

#[test]
fn regression_a_tokenizer_json_with_a_syntax_error_in_its_decoder_is_an_error_not_a_panic() {
    // Found by the tokenizer_json fuzz target: `tokenizers` deserializes the decoder with an `expect`, so a
    // control character inside one of its strings panicked (`generate` exited 101, `watch` died).
    let text = std::fs::read_to_string(reference_dir().join("tiny/llama/tokenizer.json")).unwrap();
    let decoder_at = text
        .find("\"decoder\"")
        .expect("the tokenizer has a decoder");
    let at = decoder_at
        + text[decoder_at..]
            .find("\"ByteLevel\"")
            .expect("the decoder names ByteLevel")
        + 5;
    let broken = format!("{}\u{1}{}", &text[..at], &text[at..]);
    let err = vibecheck_engine::tokenizer::tokenizer_from_json(&broken).unwrap_err();
    assert!(err.contains("control character"), "{err}");
    // Through a checkpoint folder: an error naming the file.
    let (_t, dir) = tiny_copy();
    std::fs::write(dir.join("tokenizer.json"), broken).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["tokenizer.json", "cannot load tokenizer"],
    );
}
