//! Parsing config.json: transformers 4 and 5 keys, every architecture's rules, refusals.

use super::*;
use serde_json::json;

fn base() -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 512})
}

#[test]
fn transformers5_rope_parameters_theta_is_used() {
    let mut j = base();
    j["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "default"});
    assert_eq!(ModelConfig::from_hf_json(&j).unwrap().rope.theta, 100000.0);
}

#[test]
fn transformers5_without_theta_is_an_error_not_10000() {
    let mut j = base();
    j["rope_parameters"] = json!({"rope_type": "default"});
    let err = ModelConfig::from_hf_json(&j).unwrap_err();
    assert!(err.contains("rope_theta"), "{err}");
}

#[test]
fn transformers4_keys_and_llama3_scaling() {
    let mut j = base();
    j["rope_theta"] = json!(500000.0);
    j["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let c = ModelConfig::from_hf_json(&j).unwrap();
    assert_eq!(c.rope.theta, 500000.0);
    assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let mut j = base();
    j["architectures"] = json!(["BloomForCausalLM"]);
    let err = ModelConfig::from_hf_json(&j).unwrap_err();
    assert!(
        err.contains("BloomForCausalLM") && err.contains("GPTNeoXForCausalLM"),
        "{err}"
    );
}

/// transformers 4 Qwen configs (no `layer_types`): the window applies from `max_window_layers` on, not to
/// every layer.
#[test]
fn qwen_window_starts_at_max_window_layers() {
    let mut j = base();
    j["architectures"] = json!(["Qwen2ForCausalLM"]);
    j["num_hidden_layers"] = json!(4);
    j["use_sliding_window"] = json!(true);
    j["sliding_window"] = json!(16);
    j["max_window_layers"] = json!(2);
    let c = ModelConfig::from_hf_json(&j).unwrap();
    assert_eq!(c.layer_windows, vec![None, None, Some(16), Some(16)]);
    j["use_sliding_window"] = json!(false);
    let c = ModelConfig::from_hf_json(&j).unwrap();
    assert_eq!(c.layer_windows, vec![None; 4]);
}

/// Gemma 3's 4.x keys: the sliding pattern and the local base at the top level.
#[test]
fn gemma3_transformers4_keys() {
    let mut j = base();
    j["architectures"] = json!(["Gemma3ForCausalLM"]);
    j["num_hidden_layers"] = json!(6);
    j["sliding_window"] = json!(512);
    j["sliding_window_pattern"] = json!(3);
    j["rope_theta"] = json!(1e6);
    j["rope_local_base_freq"] = json!(1e4);
    let c = ModelConfig::from_hf_json(&j).unwrap();
    let w = Some(512);
    assert_eq!(c.layer_windows, vec![w, w, None, w, w, None]);
    assert_eq!(c.layer_rope(0), LayerRope::Local);
    assert_eq!(c.layer_rope(2), LayerRope::Global);
    assert_eq!((c.rope.theta, c.quirks.local_rope_theta), (1e6, Some(1e4)));
}

/// GPT-NeoX's 4.x keys for the rotary fraction and base.
#[test]
fn gpt_neox_transformers4_rotary_keys() {
    let mut j = base();
    j["architectures"] = json!(["GPTNeoXForCausalLM"]);
    j["rotary_pct"] = json!(0.25);
    j["rotary_emb_base"] = json!(10000);
    let c = ModelConfig::from_hf_json(&j).unwrap();
    assert_eq!(c.rotary_dim(), 4);
    assert!(c.quirks.parallel_residual && c.attention_bias && c.mlp_bias);
}

/// Variants whose computation is not implemented are refused by name rather than run wrongly.
#[test]
fn unimplemented_variants_are_refused_by_name() {
    let mut j = base();
    j["architectures"] = json!(["CohereForCausalLM"]);
    j["use_qk_norm"] = json!(true);
    let err = ModelConfig::from_hf_json(&j).unwrap_err();
    assert!(err.contains("use_qk_norm"), "{err}");
}

#[test]
fn eos_may_be_a_list() {
    assert_eq!(token_ids(Some(&json!([2, 7]))), vec![2, 7]);
    assert_eq!(token_ids(Some(&json!(3))), vec![3]);
}
