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
    write_gguf_with(path, dtype, rope_freqs, None)
}

fn write_gguf_with(
    path: &Path,
    dtype: GgmlDType,
    rope_freqs: Option<Vec<f32>>,
    vocab: Option<Vec<(&str, Value)>>,
) {
    let dir = reference_dir().join("tiny/llama");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &tensors {
        let gguf = vibecheck_engine::gguf::gguf_name(name).unwrap();
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
    let mut md: Vec<(&str, Value)> = vec![
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
    if let Some(v) = vocab {
        md.retain(|(k, _)| !k.starts_with("tokenizer.ggml."));
        md.extend(v);
    }
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

/// A SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`, as in Llama 2 GGUFs): special tokens,
/// 256 byte tokens, single characters, and merged pieces scored by merge order.
fn sentencepiece_vocab() -> Vec<(&'static str, Value)> {
    let mut toks: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    for b in 0..256 {
        toks.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    let pieces = [
        "\u{2581}t",
        "he",
        "\u{2581}the",
        "in",
        "\u{2581}a",
        "an",
        "nd",
        "\u{2581}and",
        "er",
        "at",
        "\u{2581}c",
        "\u{2581}cat",
        "\u{2581}s",
        "\u{2581}sat",
        "on",
        "\u{2581}on",
        "\u{2581}m",
        "\u{2581}mat",
        "is",
        "\u{2581}is",
        "\u{2581}i",
        "it",
        "\u{2581}it",
        "ing",
        "\u{2581}th",
        "\u{2581}this",
        "es",
        "\u{2581}w",
        "\u{2581}wh",
        "\u{2581}what",
        "\u{2581}\u{2581}",
        "\u{2581}\u{2581}\u{2581}",
        "ca",
        "pi",
        "tal",
        "\u{2581}ca",
        "\u{2581}capi",
        "\u{2581}capital",
        "\u{2581}of",
        "\u{2581}F",
        "ra",
        "nce",
        "\u{2581}Fra",
        "\u{2581}France",
        "12",
        "3",
    ];
    for (i, p) in pieces.iter().enumerate() {
        toks.push((p.to_string(), -(i as f32), 1));
    }
    let chars = "\u{2581}abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'";
    for (i, c) in chars.chars().enumerate() {
        toks.push((c.to_string(), -1000.0 - i as f32, 1));
    }
    while toks.len() < 512 {
        let n = toks.len();
        toks.push((format!("<unused{n}>"), -1e4, 5));
    }
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(toks.iter().map(|t| Value::String(t.0.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(toks.iter().map(|t| Value::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(toks.iter().map(|t| Value::I32(t.2)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ]
}

/// Texts and the ids transformers 5.24 gives them from the same GGUF
/// (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, see `bench/spm_gguf_reference.py`).
const SPM_CASES: &[(&str, &[u32], &str)] = &[
    (
        "the cat sat on the mat",
        &[1, 261, 270, 272, 274, 261, 276],
        "the cat sat on the mat",
    ),
    (
        "What is the capital of France?",
        &[
            1, 305, 354, 313, 268, 278, 261, 294, 321, 280, 306, 317, 305, 320, 311, 298, 323, 264,
            308, 310, 370,
        ],
        "What is the capital of France?",
    ),
    ("this is it", &[1, 284, 278, 281], "this is it"),
    (
        "  two leading spaces and  two inside",
        &[
            1, 305, 259, 328, 320, 305, 317, 310, 306, 309, 282, 271, 321, 306, 308, 285, 266, 305,
            259, 328, 320, 305, 262, 324, 314, 309, 310,
        ],
        " two leading spaces and  two inside",
    ),
    (
        "Ünïcödé ✓ costs 123 €",
        &[
            1, 305, 198, 159, 319, 198, 178, 308, 198, 185, 309, 198, 172, 305, 229, 159, 150, 269,
            320, 324, 325, 324, 305, 303, 361, 305, 229, 133, 175,
        ],
        "Ünïcödé ✓ costs 123 €",
    ),
    (
        "hello\nworld\ttab",
        &[
            1, 305, 260, 317, 317, 320, 13, 328, 320, 323, 317, 309, 12, 325, 306, 307,
        ],
        "hello\nworld\ttab",
    ),
    (
        "<s>special</s> tokens",
        &[
            1, 1, 324, 321, 310, 308, 314, 306, 317, 2, 259, 320, 316, 310, 319, 324,
        ],
        "special tokens",
    ),
    ("", &[1], ""),
];

#[test]
fn sentencepiece_gguf_vocabulary_tokenizes_as_transformers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let path = match std::env::var("VIBECHECK_DUMP_SPM_GGUF")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().join("spm.gguf"),
    };
    write_gguf_with(&path, GgmlDType::F32, None, Some(sentencepiece_vocab()));
    let vocab = crate::fixtures::assert_direct_tokenizer_is_the_document(&path);
    assert!(vocab > 3 + 256, "{vocab} tokens");
    let model = Model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(!SPM_CASES.is_empty());
    for (text, ids, decoded) in SPM_CASES {
        let got = model.prompt_ids(&Prompt::Text(text.to_string())).unwrap();
        assert_eq!(&got, ids, "{text:?}");
        assert_eq!(
            model.tokenizer.decode(&got, true).unwrap(),
            *decoded,
            "decoding {text:?}"
        );
        // Streaming pieces (after the prompt's BOS) add up to the whole decode, byte-fallback characters too.
        let mut stream = vibecheck_engine::tokenizer::DecodeStream::new(true);
        let mut pieces = String::new();
        for &id in &got[1..] {
            pieces.push_str(
                &stream
                    .step(&model.tokenizer, id)
                    .unwrap()
                    .unwrap_or_default(),
            );
        }
        pieces.push_str(&stream.flush(&model.tokenizer).unwrap().unwrap_or_default());
        assert_eq!(
            pieces,
            model.tokenizer.decode(&got[1..], true).unwrap(),
            "streaming {text:?}"
        );
    }
}
