//! GGUF files written by the test from the tiny llama reference checkpoint (Q/K rows permuted the way
//! llama.cpp's converter does, tokenizer in `tokenizer.ggml.*` metadata): loaded directly they must give
//! transformers' logits, in float32 exactly and in quantized formats closely; Llama 3.1-style `rope_freqs` must
//! take effect; and `convert` must turn them back into an equivalent folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use vibecheck_engine::model::Cache;
use vibecheck_engine::{LoadOptions, Model, Prompt, SamplingParams};

use crate::fixtures::{read_json, reference_dir};

/// llama.cpp's permutation of Q/K rows (the inverse of what the loader undoes).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn write_gguf(path: &Path, dtype: GgmlDType, rope_freqs: Option<Vec<f32>>) {
    let dir = reference_dir().join("tiny/llama");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &tensors {
        let gguf = vibecheck_engine::weights::gguf_name(name).unwrap();
        let t = match () {
            _ if gguf.ends_with("attn_q.weight") => permute(t, 4),
            _ if gguf.ends_with("attn_k.weight") => permute(t, 2),
            _ => t.clone(),
        };
        let fmt = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        q.push((gguf, QTensor::quantize(&t, fmt).unwrap()));
    }
    if let Some(f) = rope_freqs {
        let n = f.len();
        q.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(
                &Tensor::from_vec(f, n, &Device::Cpu).unwrap(),
                GgmlDType::F32,
            )
            .unwrap(),
        ));
    }
    // The byte-level BPE vocabulary, as llama.cpp's converter stores it.
    let tok = read_json(&dir.join("tokenizer.json"));
    let mut by_id: HashMap<u64, String> = HashMap::new();
    for (s, id) in tok["model"]["vocab"].as_object().unwrap() {
        by_id.insert(id.as_u64().unwrap(), s.clone());
    }
    let mut special = Vec::new();
    for a in tok["added_tokens"].as_array().unwrap() {
        by_id.insert(
            a["id"].as_u64().unwrap(),
            a["content"].as_str().unwrap().to_string(),
        );
        special.push(a["id"].as_u64().unwrap());
    }
    let n = (*by_id.keys().max().unwrap() + 1).max(512);
    let tokens: Vec<Value> = (0..n)
        .map(|i| {
            Value::String(
                by_id
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| format!("<unused{i}>")),
            )
        })
        .collect();
    let types: Vec<Value> = (0..n)
        .map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 }))
        .collect();
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Value::String(format!(
                "{} {}",
                m[0].as_str().unwrap(),
                m[1].as_str().unwrap()
            ))
        })
        .collect();
    let template = read_json(&dir.join("tokenizer_config.json"))["chat_template"]
        .as_str()
        .unwrap()
        .to_string();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.feed_forward_length", Value::U32(128)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.key_length", Value::U32(16)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.chat_template", Value::String(template)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn reference() -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let r = read_json(&reference_dir().join("tiny/llama/reference.json"));
    let ids = |k: &str| {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect::<Vec<u32>>()
    };
    let logits = r["last_position_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (ids("input_ids"), logits, ids("greedy_8"))
}

fn last_logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let model = Model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut cache = Cache::new(model.config(), 1);
    model
        .decoder
        .forward(&[ids.to_vec()], &mut cache, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn float32_gguf_matches_transformers_and_converts_back() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-f32.gguf");
    write_gguf(&path, GgmlDType::F32, None);
    let (ids, expected, greedy) = reference();
    let got = last_logits(&path, &ids);
    assert!(
        max_diff(&got, &expected) < 1e-4,
        "GGUF logits differ by {}",
        max_diff(&got, &expected)
    );
    let model = Model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let g = model
        .generate(
            &Prompt::Tokens(ids.clone()),
            &SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(8)
            },
        )
        .unwrap();
    assert_eq!(g.token_ids, greedy);
    // Tokenizer and chat template from the metadata alone, as the folder's own files give them.
    let folder = Model::load(
        reference_dir().join("tiny/llama").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let chat = vec![vibecheck_engine::ChatMessage::new(
        "user",
        "hello there, 123 tokens!",
    )];
    assert_eq!(
        model.render_chat(&chat).unwrap(),
        folder.render_chat(&chat).unwrap()
    );
    assert_eq!(
        model.prompt_ids(&Prompt::Chat(chat.clone())).unwrap(),
        folder.prompt_ids(&Prompt::Chat(chat)).unwrap()
    );

    let out = tmp.path().join("back");
    vibecheck_engine::convert::gguf_to_hf(&path, &out, vibecheck_engine::DType::F32).unwrap();
    let back = last_logits(&out, &ids);
    assert!(
        max_diff(&back, &expected) < 1e-4,
        "converted folder differs by {}",
        max_diff(&back, &expected)
    );
}

/// A quantized GGUF computes what its own dequantized weights compute (our kernels round activations to 16
/// bits, not 8), and lands near transformers' float32 result, nearer with more bits.
#[test]
fn quantized_ggufs_compute_their_dequantized_weights() {
    let (ids, expected, _) = reference();
    let tmp = tempfile::tempdir().unwrap();
    let mut off = Vec::new();
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q5_1,
        GgmlDType::Q5_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
    ] {
        let path = tmp.path().join(format!("tiny-{dtype:?}.gguf"));
        write_gguf(&path, dtype, None);
        let direct = last_logits(&path, &ids);
        let folder = tmp.path().join(format!("tiny-{dtype:?}-f32"));
        vibecheck_engine::convert::gguf_to_hf(&path, &folder, vibecheck_engine::DType::F32)
            .unwrap();
        let dequantized = last_logits(&folder, &ids);
        let d = max_diff(&direct, &dequantized);
        assert!(
            d < 1e-3,
            "{dtype:?}: quantized compute differs from its dequantized weights by {d}"
        );
        let from_reference = max_diff(&direct, &expected);
        assert!(
            from_reference > 0.0 && from_reference < 0.5,
            "{dtype:?}: {from_reference} from transformers"
        );
        off.push((dtype, from_reference));
    }
    assert!(
        off[0].1 < off[4].1,
        "8-bit weights should land nearer than 4-bit: {off:?}"
    );
}

#[test]
fn rope_freqs_factors_take_effect() {
    let (ids, expected, _) = reference();
    let tmp = tempfile::tempdir().unwrap();
    let ones = tmp.path().join("ones.gguf");
    write_gguf(&ones, GgmlDType::F32, Some(vec![1.0; 8]));
    assert!(
        max_diff(&last_logits(&ones, &ids), &expected) < 1e-4,
        "factors of 1 change nothing"
    );
    let scaled = tmp.path().join("scaled.gguf");
    write_gguf(
        &scaled,
        GgmlDType::F32,
        Some(vec![1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]),
    );
    assert!(
        max_diff(&last_logits(&scaled, &ids), &expected) > 1e-3,
        "factors must move the logits"
    );
    let err = vibecheck_engine::convert::gguf_to_hf(
        &scaled,
        &tmp.path().join("x"),
        vibecheck_engine::DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rope_freqs"), "{err}");
}
