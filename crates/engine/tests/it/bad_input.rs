//! Hostile and half-written checkpoints: each gives an error that names the file and the fault, never a panic.

use std::path::Path;

use vibecheck_engine::{ChatMessage, LoadOptions, Model, Prompt, SamplingParams};

use crate::fixtures::{assert_mentions, load_err, reference_dir, tiny_copy};

fn write_safetensors(path: &Path, header: &serde_json::Value, data_len: usize) {
    let h = header.to_string().into_bytes();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(vec![0u8; data_len]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn truncated_safetensors_is_reported_as_such() {
    let (_t, dir) = tiny_copy();
    let st = dir.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len / 2).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "still being written"],
    );
}

#[test]
fn header_length_beyond_the_file() {
    let (_t, dir) = tiny_copy();
    let st = dir.join("model.safetensors");
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&st, bytes).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "header claims 1000000 bytes"],
    );
    // An absurd length is refused before any allocation.
    std::fs::write(&st, u64::MAX.to_le_bytes()).unwrap();
    assert_mentions(&load_err(&dir), &["model.safetensors", "limit"]);
}

#[test]
fn overlapping_offsets() {
    let (_t, dir) = tiny_copy();
    let header = serde_json::json!({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    });
    write_safetensors(&dir.join("model.safetensors"), &header, 24);
    assert_mentions(&load_err(&dir), &["model.safetensors", "overlaps"]);
}

#[test]
fn unknown_dtype() {
    let (_t, dir) = tiny_copy();
    let header = serde_json::json!({"a": {"dtype": "F7", "shape": [4], "data_offsets": [0, 16]}});
    write_safetensors(&dir.join("model.safetensors"), &header, 16);
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "unknown dtype \"F7\""],
    );
}

#[test]
fn shard_index_pointing_outside_the_folder() {
    let (_t, dir) = tiny_copy();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}}"#,
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "model.safetensors.index.json",
            "not a plain file name inside",
        ],
    );
}

#[test]
fn shard_index_naming_a_missing_shard() {
    let (_t, dir) = tiny_copy();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model-00002-of-00002.safetensors", "does not exist"],
    );
}

#[test]
fn gguf_with_absurd_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("evil.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend((u64::MAX / 3).to_le_bytes()); // tensors
    bytes.extend((1u64 << 40).to_le_bytes()); // metadata entries
    bytes.extend([0u8; 64]);
    std::fs::write(&path, bytes).unwrap();
    let err = match Model::load(path.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert_mentions(&err, &["evil.gguf", "not a readable GGUF"]);
}

#[test]
fn gguf_with_a_huge_string_length() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("long.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend((u64::MAX - 5).to_le_bytes()); // key length
    bytes.extend([b'k'; 32]);
    std::fs::write(&path, bytes).unwrap();
    let err = Model::load(path.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert_mentions(&err, &["long.gguf"]);
}

#[test]
fn missing_tokenizer() {
    let (_t, dir) = tiny_copy();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_mentions(&load_err(&dir), &["ckpt", "no tokenizer.json"]);
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let (_t, dir) = tiny_copy();
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "BloomForCausalLM");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "config.json",
            "BloomForCausalLM",
            "GPTNeoXForCausalLM",
            "Gemma2ForCausalLM",
            "Phi3ForCausalLM",
        ],
    );
}

#[test]
fn tensor_with_the_wrong_shape() {
    let (_t, dir) = tiny_copy();
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "gate_proj", "shape"],
    );
}

#[test]
fn endless_chat_template_fails_the_request_not_the_process() {
    let (_t, dir) = tiny_copy();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let err = model
        .generate(
            &Prompt::Chat(vec![ChatMessage::new("user", "hi")]),
            &SamplingParams::greedy(2),
        )
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["chat template"]);
    // The model still works for raw prompts afterwards.
    model
        .generate(&Prompt::Text("hello".into()), &SamplingParams::greedy(2))
        .unwrap();
}

#[test]
fn chat_template_as_a_list_of_named_templates() {
    let (_t, dir) = tiny_copy();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    cfg["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"}
    ]);
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        model.render_chat(&[ChatMessage::new("user", "x")]).unwrap(),
        "[user] x"
    );
}

#[test]
fn prompt_beyond_the_context_is_an_error() {
    let (_t, dir) = tiny_copy();
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let long = vec![5u32; 300];
    let err = model
        .generate(&Prompt::Tokens(long), &SamplingParams::greedy(2))
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["positions"]);
}

#[test]
fn gguf_cut_off_inside_its_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.gguf");
    let full = std::fs::read(crate::fixtures::smollm_gguf()).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let err = Model::load(path.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert_mentions(&err, &["cut.gguf", "truncated"]);
}

/// A GGUF file written byte by byte: `entries` as (key, value type, encoded value), one float32 tensor
/// `token_embd.weight` of 32 elements at offset 0, padded to 32 bytes, then its data.
fn write_gguf(path: &Path, entries: &[(&str, u32, Vec<u8>)]) {
    let string = |s: &[u8]| {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s);
        b
    };
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend((entries.len() as u64).to_le_bytes());
    for (key, ty, value) in entries {
        bytes.extend(string(key.as_bytes()));
        bytes.extend(ty.to_le_bytes());
        bytes.extend(value);
    }
    bytes.extend(string(b"token_embd.weight"));
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(32u64.to_le_bytes());
    bytes.extend(0u32.to_le_bytes()); // F32
    bytes.extend(0u64.to_le_bytes());
    bytes.resize(bytes.len().next_multiple_of(32) + 128, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn regression_gguf_alignment_zero_fails_loading_and_converting_naming_the_file_and_key() {
    // candle's reader divided by the alignment: `generate` and `convert` exited 101, `serve` answered 500.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("zero-align.gguf");
    let mut arch = 5u64.to_le_bytes().to_vec();
    arch.extend(b"llama");
    write_gguf(
        &path,
        &[
            ("general.architecture", 8, arch),
            ("general.alignment", 4, 0u32.to_le_bytes().to_vec()),
        ],
    );
    let err = match Model::load(path.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert_mentions(&err, &["zero-align.gguf", "`general.alignment` is 0"]);
    let err = vibecheck_engine::convert::gguf_to_hf(
        &path,
        &tmp.path().join("out"),
        vibecheck_engine::DType::F32,
    )
    .expect_err("must fail")
    .to_string();
    assert_mentions(&err, &["zero-align.gguf", "`general.alignment` is 0"]);
}

#[test]
fn regression_gguf_with_a_huge_array_length_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("array.gguf");
    let mut array = 8u32.to_le_bytes().to_vec(); // strings
    array.extend((1u64 << 60).to_le_bytes());
    write_gguf(&path, &[("tokenizer.ggml.tokens", 9, array)]);
    let err = Model::load(path.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert_mentions(
        &err,
        &[
            "array.gguf",
            "array length of metadata key \"tokenizer.ggml.tokens\"",
        ],
    );
}

#[test]
fn regression_safetensors_duplicate_tensor_name_in_one_header_names_it_and_the_file() {
    let (_t, dir) = tiny_copy();
    let header = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 32]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model.safetensors", "tensor \"a\" appears twice"],
    );
}

#[test]
fn regression_safetensors_tensor_in_two_shards_names_both_files() {
    // Two shards that both hold every tensor: the second's copies used to replace the first's silently.
    let (_t, dir) = tiny_copy();
    let (first, second) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    std::fs::copy(dir.join("model.safetensors"), dir.join(first)).unwrap();
    std::fs::rename(dir.join("model.safetensors"), dir.join(second)).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": {
            "model.embed_tokens.weight": first,
            "model.norm.weight": second,
        }})
        .to_string(),
    )
    .unwrap();
    let err = load_err(&dir);
    assert_mentions(&err, &[first, second, "one shard only"]);
}

/// The tensors of `dir/model.safetensors` rewritten by `edit`.
fn rewrite_tensors(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

/// An untied model saved without its head is refused, naming the tensor (vibecheck used to tie it silently).
#[test]
fn untied_model_without_its_head_is_refused() {
    let (_t, dir) = tiny_copy();
    rewrite_tensors(&dir, |t| {
        t.remove("lm_head.weight");
    });
    assert_mentions(
        &load_err(&dir),
        &["lm_head.weight", "missing", "tie_word_embeddings"],
    );
}

/// A config that says tied beside a stored head that differs: transformers 5 uses the stored head, and so does
/// vibecheck (with a warning in the log), so the logits stay transformers' own.
#[test]
fn a_stored_head_wins_over_tie_word_embeddings() {
    let (_t, dir) = tiny_copy();
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace(
            "\"tie_word_embeddings\": false",
            "\"tie_word_embeddings\": true",
        );
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let logits = |dir: &std::path::Path| {
        let model = vibecheck_engine::Model::load(
            dir.to_str().unwrap(),
            &vibecheck_engine::LoadOptions::default(),
        )
        .unwrap();
        assert!(model.config().tie_word_embeddings);
        let mut cache = vibecheck_engine::model::Cache::new(model.config(), 1);
        model
            .decoder
            .forward(&[vec![1, 2, 3, 4]], &mut cache, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let original = {
        let model = vibecheck_engine::Model::load(
            reference_dir().join("tiny/llama").to_str().unwrap(),
            &vibecheck_engine::LoadOptions::default(),
        )
        .unwrap();
        let mut cache = vibecheck_engine::model::Cache::new(model.config(), 1);
        model
            .decoder
            .forward(&[vec![1, 2, 3, 4]], &mut cache, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    assert_eq!(logits(&dir), original);
    // Without the stored head the same config ties, and the logits change.
    rewrite_tensors(&dir, |t| {
        t.remove("lm_head.weight");
    });
    assert_ne!(logits(&dir), original);
}

fn torch_fixture(name: &str) -> std::path::PathBuf {
    vibecheck_test_support::workspace_root()
        .join("tests/fixtures/torch")
        .join(name)
}

fn last_logits(dir: &std::path::Path) -> Vec<f32> {
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut cache = vibecheck_engine::model::Cache::new(model.config(), 1);
    model
        .decoder
        .forward(&[(1..24).collect()], &mut cache, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// `pytorch_model.bin` as torch.save writes it loads like the safetensors it was made from, exactly (same
/// float32 bytes), and `convert` writes it out as safetensors that load the same.
#[test]
fn pytorch_model_bin_loads_as_its_safetensors_original() {
    let want = last_logits(&reference_dir().join("tiny/llama"));
    assert_eq!(last_logits(&torch_fixture("llama-bin")), want);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let report =
        vibecheck_engine::convert::bin_to_safetensors(&torch_fixture("llama-bin"), &out).unwrap();
    assert!(report.tensors > 10);
    assert!(out.join("model.safetensors").is_file() && out.join("tokenizer.json").is_file());
    assert_eq!(last_logits(&out), want);
}

/// Sharded bfloat16 `.bin` files (with `pytorch_model.bin.index.json`) load like the same bfloat16 weights
/// saved as safetensors.
#[test]
fn sharded_bf16_bins_load_like_the_same_weights_in_safetensors() {
    let (_t, dir) = tiny_copy();
    rewrite_tensors(&dir, |t| {
        for v in t.values_mut() {
            *v = v.to_dtype(candle_core::DType::BF16).unwrap();
        }
    });
    let bins = last_logits(&torch_fixture("llama-bin-sharded"));
    assert_eq!(bins, last_logits(&dir));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    vibecheck_engine::convert::bin_to_safetensors(&torch_fixture("llama-bin-sharded"), &out)
        .unwrap();
    assert!(out.join("model.safetensors.index.json").is_file());
    assert_eq!(last_logits(&out), bins);
}

/// A pickle that would run code is refused, naming the global and the way to convert, and nothing runs; the
/// legacy (pre-zip) torch format is named as such.
#[test]
fn pickles_that_run_code_and_legacy_torch_files_are_refused_with_the_fix() {
    let (_t, dir) = tiny_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(torch_fixture("evil.bin"), dir.join("pytorch_model.bin")).unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "pytorch_model.bin",
            "posix.system",
            "does not execute pickles",
            "if you trust the file",
            "safe_serialization=True",
        ],
    );
    std::fs::copy(torch_fixture("legacy.bin"), dir.join("pytorch_model.bin")).unwrap();
    assert_mentions(&load_err(&dir), &["legacy", "save_pretrained"]);
}

/// A DeepSpeed ZeRO checkpoint (config.json beside global_stepN partitions, as the HF Trainer leaves it) is
/// named, with the command that consolidates it.
#[test]
fn zero_checkpoints_name_the_consolidation_command() {
    let (_t, dir) = tiny_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::create_dir_all(dir.join("global_step40")).unwrap();
    std::fs::write(
        dir.join("global_step40/zero_pp_rank_0_mp_rank_00_model_states.pt"),
        b"x",
    )
    .unwrap();
    std::fs::write(dir.join("latest"), "global_step40").unwrap();
    std::fs::write(dir.join("zero_to_fp32.py"), "# DeepSpeed's script").unwrap();
    assert_mentions(
        &load_err(&dir),
        &["DeepSpeed ZeRO", "zero_to_fp32.py", "--safe_serialization"],
    );
}
