//! Every tiny random-weight checkpoint in `shared/reference/tiny`: last-position logits and 8 greedy tokens
//! against what transformers computed.

use vibecheck_engine::model::Cache;
use vibecheck_engine::{DType, LoadOptions, Model, Prompt, SamplingParams};

use crate::fixtures::{read_json, reference_dir};

/// `VIBECHECK_TEST_DEVICE=cuda:0` runs these checks on a GPU (a `--features cuda` build).
fn test_device() -> vibecheck_engine::Device {
    match std::env::var("VIBECHECK_TEST_DEVICE")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(name) => vibecheck_engine::parse_device(&name).unwrap(),
        None => vibecheck_engine::Device::Cpu,
    }
}

/// The largest absolute difference; NaN counts as infinite (f32::max would skip it).
fn max_diff(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, |acc, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                acc.max(d)
            }
        })
}

/// Last-position logits of `ids` run alone from an empty cache.
fn single_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut c = Cache::new(model.config(), 1);
    model
        .decoder
        .forward(&[ids.to_vec()], &mut c, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn check(name: &str, dtype: Option<DType>, tol: f32) {
    let dir = reference_dir().join("tiny").join(name);
    check_source(name, &dir, dtype, tol);
}

/// `source` (the tiny checkpoint of `name`, or a file made from it) against transformers' `reference.json` for
/// `name`: the architecture, the last position's logits within `tol`, and 8 greedy tokens.
fn check_source(name: &str, source: &std::path::Path, dtype: Option<DType>, tol: f32) {
    let reference = read_json(
        &reference_dir()
            .join("tiny")
            .join(name)
            .join("reference.json"),
    );
    let opts = LoadOptions {
        dtype,
        device: test_device(),
        ..LoadOptions::default()
    };
    let shown = source.display();
    let model =
        Model::load(source.to_str().unwrap(), &opts).unwrap_or_else(|e| panic!("{shown}: {e}"));
    // GGUF writes Mistral as `llama`.
    let gguf = source.extension().is_some_and(|e| e == "gguf");
    let want = match reference["architecture"].as_str().unwrap() {
        "MistralForCausalLM" if gguf => "LlamaForCausalLM",
        other => other,
    };
    assert_eq!(model.config().arch.hf_name(), want, "{shown}");
    let ids: Vec<u32> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let expected: Vec<f32> = reference["last_position_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let got = single_logits(&model, &ids);
    assert_eq!(got.len(), expected.len(), "{shown}: vocabulary size");
    let worst = max_diff(&got, &expected);
    assert!(
        worst <= tol,
        "{shown}: last-position logits differ by up to {worst} (tolerance {tol})"
    );
    let greedy: Vec<u32> = reference["greedy_8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(8)
    };
    let g = model.generate(&Prompt::Tokens(ids), &params).unwrap();
    assert_eq!(g.token_ids, greedy, "{shown}: greedy tokens");
}

#[test]
fn llama_matches_transformers() {
    check("llama", None, 1e-4);
}

#[test]
fn mistral_matches_transformers() {
    check("mistral", None, 1e-4);
}

#[test]
fn qwen2_matches_transformers() {
    check("qwen2", None, 1e-4);
}

#[test]
fn qwen3_matches_transformers() {
    check("qwen3", None, 1e-4);
}

#[test]
fn olmo2_matches_transformers() {
    check("olmo2", None, 1e-4);
}

#[test]
fn gemma2_matches_transformers() {
    check("gemma2", None, 1e-4);
}

#[test]
fn phi3_matches_transformers() {
    check("phi3", None, 1e-4);
}

/// Gemma 1.
#[test]
fn gemma_matches_transformers() {
    check("gemma", None, 1e-4);
}

/// Gemma 3 text: sliding and full layers with their own RoPE bases, q/k norms.
#[test]
fn gemma3_matches_transformers() {
    check("gemma3", None, 1e-4);
}

/// SmolLM3: a layer without RoPE.
#[test]
fn smollm3_matches_transformers() {
    check("smollm3", None, 1e-4);
}

/// Mixtral: top-2 of 4 experts, renormalized.
#[test]
fn mixtral_matches_transformers() {
    check("mixtral", None, 1e-4);
}

/// Qwen2-MoE: top-2 without renormalization, a gated shared expert.
#[test]
fn qwen2_moe_matches_transformers() {
    check("qwen2_moe", None, 1e-4);
}

/// Qwen3-MoE: top-2 renormalized, q/k norms.
#[test]
fn qwen3_moe_matches_transformers() {
    check("qwen3_moe", None, 1e-4);
}

/// Granite: its four multipliers.
#[test]
fn granite_matches_transformers() {
    check("granite", None, 1e-4);
}

/// Phi-2: parallel attention and MLP on one LayerNorm, partial rotary, biases.
#[test]
fn phi_matches_transformers() {
    check("phi", None, 1e-4);
}

/// Phi-3 with a partial rotary factor (Phi-4-mini).
#[test]
fn phi3_partial_matches_transformers() {
    check("phi3_partial", None, 1e-4);
}

/// GPT-NeoX / Pythia: per-head fused q/k/v, parallel residual.
#[test]
fn gpt_neox_matches_transformers() {
    check("gpt_neox", None, 1e-4);
}

/// OLMo 1: parameter-free LayerNorm, clipped q/k/v.
#[test]
fn olmo_matches_transformers() {
    check("olmo", None, 1e-4);
}

/// StableLM 2: LayerNorm with bias, partial rotary, q/k/v bias.
#[test]
fn stablelm_matches_transformers() {
    check("stablelm", None, 1e-4);
}

/// Cohere: interleaved RoPE, logit scale, parallel blocks.
#[test]
fn cohere_matches_transformers() {
    check("cohere", None, 1e-4);
}

/// peft's LoRA adapter over the tiny llama (r 4, alpha 8 on q, v, up and down), applied unmerged as peft runs it.
#[test]
fn lora_adapter_matches_peft() {
    check("lora-llama", None, 1e-4);
}

/// rsLoRA scaling and a replaced `lm_head` (`modules_to_save`).
#[test]
fn rslora_adapter_with_its_own_head_matches_peft() {
    check("lora-llama-rslora", None, 1e-4);
}

/// Two adapters over one base share it: one base in memory, its matrices not copied, and the base's own
/// answers unchanged by the adapters over it.
#[test]
fn adapters_over_one_base_share_it() {
    let load = |name: &str| {
        Model::load(
            reference_dir().join("tiny").join(name).to_str().unwrap(),
            &LoadOptions::default(),
        )
        .unwrap()
    };
    let (a, b) = (load("lora-llama"), load("lora-llama-rslora"));
    let (ba, bb) = (
        &a.adapter.as_ref().unwrap().base,
        &b.adapter.as_ref().unwrap().base,
    );
    assert!(std::sync::Arc::ptr_eq(ba, bb), "the base was loaded twice");
    assert_eq!(a.adapter.as_ref().unwrap().summary.adapted, 8);
    assert_eq!(
        b.adapter.as_ref().unwrap().summary.replaced,
        vec!["lm_head".to_string()]
    );
    // Each adapter holds only its own tensors; the base's packed matrices are shared.
    assert!(
        a.packed_bytes * 10 < ba.packed_bytes,
        "{} vs {}",
        a.packed_bytes,
        ba.packed_bytes
    );
    let ids: Vec<u32> = (1..12).collect();
    let reference = read_json(&reference_dir().join("tiny/llama/reference.json"));
    let base_ids: Vec<u32> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let greedy: Vec<u32> = reference["greedy_8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(8)
    };
    let g = ba.generate(&Prompt::Tokens(base_ids), &params).unwrap();
    assert_eq!(g.token_ids, greedy, "the base's own answers changed");
    assert_ne!(single_logits(&a, &ids), single_logits(ba, &ids));
}

/// An adapter whose base cannot be found says which base it looked for and how to give one; `--base` then
/// loads it.
#[test]
fn adapter_with_a_missing_base_names_it_and_base_fixes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoint-10");
    crate::fixtures::copy_dir(&reference_dir().join("tiny/lora-llama"), &dir);
    let err = Model::load(dir.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("loaded without its base")
        .to_string();
    for part in ["adapter_config.json", "../llama", "--base"] {
        assert!(err.contains(part), "{err:?} should mention {part:?}");
    }
    let opts = LoadOptions {
        base: Some(reference_dir().join("tiny/llama").display().to_string()),
        ..LoadOptions::default()
    };
    let m = Model::load(dir.to_str().unwrap(), &opts).unwrap();
    let want = Model::load(
        reference_dir().join("tiny/lora-llama").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let ids: Vec<u32> = (3..20).collect();
    assert_eq!(single_logits(&m, &ids), single_logits(&want, &ids));
}

/// transformers ran this one in bfloat16; a bf16 result carries ~3 significant digits.
#[test]
fn llama_bf16_sharded_matches_transformers_in_bf16() {
    check("llama-bf16-sharded", Some(DType::BF16), 0.05);
}

#[test]
fn llama_bf16_sharded_loads_in_f32_too() {
    check("llama-bf16-sharded", Some(DType::F32), 0.05);
}

/// A batch of two different-length prompts (left-padded) gives each the logits it gets alone: for a dense model,
/// a sparse one (each token's experts chosen and summed as when it runs alone) and Gemma 3's two RoPE tables.
#[test]
fn batched_ragged_prompts_match_single_runs() {
    for name in ["qwen3", "qwen3_moe", "qwen2_moe", "gemma3", "gpt_neox"] {
        batched_ragged_prompts_match_single_runs_for(name);
    }
}

fn batched_ragged_prompts_match_single_runs_for(name: &str) {
    let dir = reference_dir().join("tiny").join(name);
    let opts = LoadOptions {
        device: test_device(),
        ..LoadOptions::default()
    };
    let model = Model::load(dir.to_str().unwrap(), &opts).unwrap();
    let a: Vec<u32> = vec![5, 17, 99, 3, 42, 7];
    let b: Vec<u32> = vec![8, 64, 23];
    let single = |ids: &Vec<u32>| single_logits(&model, ids);
    let (la, lb) = (single(&a), single(&b));
    let pad = a.len() - b.len();
    let mut padded_b = vec![0u32; pad];
    padded_b.extend(&b);
    let mut cache = Cache::with_padding(model.config(), vec![0, pad]);
    let out = model
        .decoder
        .forward(&[a.clone(), padded_b], &mut cache, false)
        .unwrap();
    let rows = out.to_vec2::<f32>().unwrap();
    let diff = max_diff;
    assert!(
        diff(&rows[0], &la) < 1e-4,
        "{name}: row 0 differs by {}",
        diff(&rows[0], &la)
    );
    assert!(
        diff(&rows[1], &lb) < 1e-4,
        "{name}: row 1 differs by {}",
        diff(&rows[1], &lb)
    );
    // One decode step for both sequences at their own positions.
    let step = model
        .decoder
        .forward(&[vec![11], vec![11]], &mut cache, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut a2 = a.clone();
    a2.push(11);
    let mut b2 = b.clone();
    b2.push(11);
    assert!(diff(&step[0], &single(&a2)) < 1e-4, "{name}: decode row 0");
    assert!(diff(&step[1], &single(&b2)) < 1e-4, "{name}: decode row 1");
}

/// float16 weights (as some trainers save them) load and compute like their float32 originals.
#[test]
fn float16_checkpoint_matches_its_float32_original() {
    let src = reference_dir().join("tiny/llama");
    let tmp = tempfile::tempdir().unwrap();
    crate::fixtures::copy_dir(&src, tmp.path());
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, tmp.path().join("model.safetensors")).unwrap();
    let logits = |dir: &std::path::Path| {
        let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let mut cache = Cache::new(model.config(), 1);
        let ids: Vec<u32> = (1..20).collect();
        model
            .decoder
            .forward(&[ids], &mut cache, false)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(&src), logits(tmp.path()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 0.02, "f16 differs from f32 by {worst}");
    assert!(worst > 0.0, "the f16 copy must really be f16");
}

/// What continuous batching does to a cache: a running sequence and a newly prefilled one merge (the shorter
/// left-padded to the longer), both continue at their own positions, and after one leaves the padding nobody
/// needs is trimmed. Each step's logits equal a single run over the same tokens (on the test device).
#[test]
fn merged_and_trimmed_caches_continue_every_sequence() {
    let dir = reference_dir().join("tiny").join("llama");
    let opts = LoadOptions {
        device: test_device(),
        ..LoadOptions::default()
    };
    let model = Model::load(dir.to_str().unwrap(), &opts).unwrap();
    let single = |ids: &[u32]| single_logits(&model, ids);
    let diff = max_diff;
    let prefill = |ids: &[u32]| {
        let mut c = Cache::new(model.config(), 1);
        model
            .decoder
            .forward(&[ids.to_vec()], &mut c, false)
            .unwrap();
        c
    };
    for (a, b) in [
        (vec![5u32, 17, 99, 3, 42, 7], vec![8u32, 64, 23]),
        // The newcomer longer than the running sequence: the running one gets the padding.
        (vec![9u32, 2], vec![30u32, 31, 32, 33, 34, 35, 36]),
    ] {
        let mut running = prefill(&a);
        model
            .decoder
            .forward(&[vec![11]], &mut running, false)
            .unwrap();
        running.merge(prefill(&b)).unwrap();
        assert_eq!(running.batch(), 2);
        assert_eq!(running.len(), (a.len() + 1).max(b.len()));
        let step = model
            .decoder
            .forward(&[vec![13], vec![13]], &mut running, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let a_all = [a.clone(), vec![11, 13]].concat();
        let b_all = [b.clone(), vec![13]].concat();
        assert!(
            diff(&step[0], &single(&a_all)) < 1e-4,
            "running sequence after the merge"
        );
        assert!(
            diff(&step[1], &single(&b_all)) < 1e-4,
            "joined sequence after the merge"
        );
        // The first sequence leaves; the second goes on alone, its padding trimmed away.
        running.retain(&[1]).unwrap();
        running.trim().unwrap();
        assert_eq!(running.len(), b_all.len());
        assert_eq!(running.pads(), &[0]);
        let step = model
            .decoder
            .forward(&[vec![17]], &mut running, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let b_more = [b_all.clone(), vec![17]].concat();
        assert!(diff(&step[0], &single(&b_more)) < 1e-4, "after trimming");
    }
}

/// The batch thread on the test device: requests arriving while others decode produce the tokens they produce
/// alone (greedy, tiny random-weight llama), up to rounding-level near-ties.
#[test]
fn the_batch_thread_answers_as_single_runs() {
    use std::sync::mpsc::channel;
    use vibecheck_engine::{BatchEvent, Batcher, BatcherSettings};
    let dir = reference_dir().join("tiny").join("llama");
    let opts = LoadOptions {
        device: test_device(),
        ..LoadOptions::default()
    };
    let model = std::sync::Arc::new(Model::load(dir.to_str().unwrap(), &opts).unwrap());
    let batcher = Batcher::new(
        model.clone(),
        BatcherSettings {
            max_batch: 4,
            prefill_chunk: 4,
        },
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = vec![
        vec![5, 17, 99, 3, 42, 7],
        vec![8, 64, 23],
        (20..60).collect(),
        vec![1, 2],
        vec![70, 71, 72, 73, 74],
    ];
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(24)
    };
    let mut receivers = Vec::new();
    for p in &prompts {
        let (tx, rx) = channel();
        batcher.submit(
            p.clone(),
            params.clone(),
            Box::new(move |ev| {
                if let BatchEvent::Done(g) = ev {
                    let _ = tx.send(Ok(g));
                } else if let BatchEvent::Failed(e) = ev {
                    let _ = tx.send(Err(e.to_string()));
                }
                true
            }),
        );
        receivers.push(rx);
        // The first two arrive together (so a batch surely holds two, however fast the engine), the rest while
        // they decode.
        if receivers.len() >= 2 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    // Identical, or (a batch sums in another order and a greedy near-tie can flip) the same for at least the
    // first 8 tokens; most must be identical.
    let mut identical = 0;
    for (p, rx) in prompts.iter().zip(receivers) {
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap()
            .unwrap();
        let alone = model.generate(&Prompt::Tokens(p.clone()), &params).unwrap();
        let same = got
            .token_ids
            .iter()
            .zip(&alone.token_ids)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same >= 8,
            "prompt {p:?}: {:?} vs {:?}",
            got.token_ids,
            alone.token_ids
        );
        identical += usize::from(got.token_ids == alone.token_ids);
    }
    assert!(identical >= 4, "{identical} of 5 identical");
    let counts = batcher.counts();
    assert!(counts.largest >= 2, "{counts:?}");
}

/// `tokenizer.json` files load through our direct BPE path; every reference tokenizer (and the converted SmolLM2
/// one) must come out exactly as `tokenizers` builds it from the whole document, serialized byte for byte.
#[test]
fn tokenizer_json_loads_as_tokenizers_loads_it() {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(reference_dir().join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().path().join("tokenizer.json"))
        .filter(|p| p.is_file())
        .collect();
    paths.push(crate::fixtures::smollm_f32_dir().join("tokenizer.json"));
    assert!(paths.len() >= 8, "{paths:?}");
    for path in paths {
        let direct = vibecheck_engine::tokenizer::read_tokenizer_json(&path).unwrap();
        let whole = tokenizers::Tokenizer::from_file(&path).unwrap();
        assert_eq!(
            direct.to_string(false).unwrap(),
            whole.to_string(false).unwrap(),
            "{}",
            path.display()
        );
        let text = "Hello <|im_start|> world!  123 ünïcödé\n\t<s>";
        assert_eq!(
            direct.encode(text, true).unwrap().get_ids(),
            whole.encode(text, true).unwrap().get_ids(),
            "{}",
            path.display()
        );
    }
}

fn gguf_fixture(name: &str) -> std::path::PathBuf {
    vibecheck_test_support::workspace_root()
        .join("tests/fixtures/gguf")
        .join(format!("{name}.gguf"))
}

/// The tiny checkpoint of `name` converted by llama.cpp's own convert_hf_to_gguf.py (float32,
/// `scripts/make-gguf-fixtures.py`): the same logits and greedy tokens as transformers on the folder.
fn check_gguf(name: &str) {
    check_source(name, &gguf_fixture(name), None, 1e-4);
}

#[test]
fn gguf_files_written_by_llama_cpp_match_transformers() {
    for name in [
        "qwen2",
        "qwen3",
        "qwen2_moe",
        "qwen3_moe",
        "mistral",
        "mixtral",
        "gemma",
        "gemma2",
        "phi3",
        "olmo2",
        "phi",
        "gpt_neox",
        "olmo",
        "stablelm",
        "cohere",
        "granite",
    ] {
        check_gguf(name);
    }
}

/// What GGUF does not record is taken as llama.cpp takes it: Gemma 3 slides five layers in six and scales queries
/// by `head_dim^-0.5`, SmolLM3 drops RoPE on every fourth layer. The tiny checkpoints set other values there, so
/// their GGUF files answer as the folder does with those conventions written into its config.
#[test]
fn gguf_conventions_of_gemma3_and_smollm3_follow_llama_cpp() {
    for (name, edit) in [
        (
            "gemma3",
            Box::new(|c: &mut serde_json::Value| {
                c["query_pre_attn_scalar"] = serde_json::json!(32);
                c["layer_types"] = serde_json::json!(["sliding_attention", "sliding_attention"]);
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "smollm3",
            Box::new(|c: &mut serde_json::Value| {
                c.as_object_mut().unwrap().remove("no_rope_layers");
            }),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        crate::fixtures::copy_dir(&reference_dir().join("tiny").join(name), &dir);
        let mut cfg = read_json(&dir.join("config.json"));
        edit(&mut cfg);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let folder = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let gguf = Model::load(
            gguf_fixture(name).to_str().unwrap(),
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}.gguf: {e}"));
        let ids: Vec<u32> = (1..32).collect();
        // Gemma 3's converter cuts the vocabulary to the tokenizer's entries (411 of 512 rows here).
        let (g, f) = (single_logits(&gguf, &ids), single_logits(&folder, &ids));
        assert!(
            g.len() <= f.len() && g.len() > 400,
            "{name}: {} logits",
            g.len()
        );
        let worst = max_diff(&g, &f[..g.len()]);
        assert!(
            worst <= 1e-4,
            "{name}.gguf differs from the folder by {worst}"
        );
    }
}

/// A Phi-3 with long-rope scaling (128k style: factor tensors and the original context in the GGUF) answers as its
/// folder does.
#[test]
fn phi3_long_rope_gguf_matches_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phi3_longrope");
    crate::fixtures::copy_dir(&reference_dir().join("tiny/phi3"), &dir);
    let mut cfg = read_json(&dir.join("config.json"));
    // As scripts/make-gguf-fixtures.py wrote it before converting.
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0,
        "short_factor": (0..8).map(|i| 1.0 + 0.1 * i as f64).collect::<Vec<_>>(),
        "long_factor": (0..8).map(|i| 2.0 + 0.5 * i as f64).collect::<Vec<_>>(),
        "original_max_position_embeddings": 64});
    cfg["original_max_position_embeddings"] = serde_json::json!(64);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let folder = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let gguf = Model::load(
        gguf_fixture("phi3_longrope").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        gguf.config().rope.scaling,
        vibecheck_engine::config::RopeScaling::LongRope { .. }
    ));
    // Only the short factors are implemented: the context stops at the original length.
    assert_eq!(
        (gguf.decoder.max_positions(), folder.decoder.max_positions()),
        (64, 64)
    );
    let ids: Vec<u32> = (1..40).collect();
    let (g, f) = (single_logits(&gguf, &ids), single_logits(&folder, &ids));
    let worst = max_diff(&g, &f);
    assert!(
        worst <= 1e-4,
        "long-rope GGUF differs from its folder by {worst}"
    );
    // The factors matter: without them the logits move.
    let plain = Model::load(
        reference_dir().join("tiny/phi3").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(max_diff(&single_logits(&plain, &ids), &g) > 1e-3);
}
