//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Both transformers-4 keys (`rope_theta`, `rope_scaling`) and transformers-5 keys (`rope_parameters`) are read.
//! The one thing never done is a silent fallback that changes the model: a transformers-5 config keeps its
//! `rope_theta` inside `rope_parameters`, and falling back to 10000 there turns SmolLM2 into a model that says
//! "Le Grand Paris is the capital of France".

use std::path::Path;

use serde_json::Value;

use crate::EngineError;

/// The architectures this engine implements, by their `architectures[0]` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Olmo2,
    Gemma2,
    Phi3,
}

impl Arch {
    pub const ALL: [(&'static str, Arch); 7] = [
        ("LlamaForCausalLM", Arch::Llama),
        ("MistralForCausalLM", Arch::Mistral),
        ("Qwen2ForCausalLM", Arch::Qwen2),
        ("Qwen3ForCausalLM", Arch::Qwen3),
        ("Olmo2ForCausalLM", Arch::Olmo2),
        ("Gemma2ForCausalLM", Arch::Gemma2),
        ("Phi3ForCausalLM", Arch::Phi3),
    ];

    pub fn from_hf_name(name: &str) -> Option<Arch> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn hf_name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The MLP's activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// Exact erf-based GELU.
    Gelu,
}

/// How rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: Option<f64>,
    },
    /// Per-frequency divisors, as GGUF files carry Llama 3.1-style scaling (`rope_freqs.weight`).
    Divisors(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    pub partial_rotary_factor: f64,
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope: RopeConfig,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// Per layer: the sliding-window size for layers that use one.
    pub layer_windows: Vec<Option<usize>>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2 scales queries by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The dimensions rotated by RoPE in each head.
    pub fn rotary_dim(&self) -> usize {
        let d = (self.head_dim as f64 * self.rope.partial_rotary_factor).round() as usize;
        d - d % 2
    }

    pub fn attention_scale(&self) -> f64 {
        match self.query_pre_attn_scalar {
            Some(s) => 1.0 / s.sqrt(),
            None => 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    /// Reads `config.json` in `dir`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("config.json");
        let text = read_small_file(&path)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::file(&path, format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&json).map_err(|m| EngineError::file(&path, m))
    }

    /// Parses a `config.json` value; the error is a message naming the field.
    pub fn from_hf_json(json: &Value) -> Result<Self, String> {
        let arch_name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or("missing `architectures[0]`, which names the model class (for example \"LlamaForCausalLM\")")?;
        let arch = Arch::from_hf_name(arch_name).ok_or_else(|| {
            format!(
                "architecture {arch_name:?} is not supported; supported: {}",
                Arch::supported_list()
            )
        })?;
        let f = Fields(json);
        let hidden_size = bounded("hidden_size", f.usize("hidden_size")?, Limit::Width)?;
        let num_heads = bounded(
            "num_attention_heads",
            f.usize("num_attention_heads")?,
            Limit::Heads,
        )?;
        let num_kv_heads = bounded(
            "num_key_value_heads",
            f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
            Limit::Heads,
        )?;
        let head_dim = bounded(
            "head_dim",
            f.opt_usize("head_dim")?
                .unwrap_or(hidden_size / num_heads.max(1)),
            Limit::Width,
        )?;
        let num_layers = bounded(
            "num_hidden_layers",
            f.usize("num_hidden_layers")?,
            Limit::Layers,
        )?;
        let max_position_embeddings = bounded(
            "max_position_embeddings",
            f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            Limit::Positions,
        )?;
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!(
                "head_dim ({head_dim}) must be a positive even number"
            ));
        }

        let rope = parse_rope(json, arch)?;
        let act_name = json
            .get("hidden_activation")
            .or_else(|| json.get("hidden_act"))
            .and_then(|v| v.as_str())
            .unwrap_or(if arch == Arch::Gemma2 {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            });
        let activation = match act_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => {
                return Err(format!(
                "hidden_act {other:?} is not supported (supported: silu, gelu, gelu_pytorch_tanh)"
            ))
            }
        };

        let sliding_window = f.opt_usize("sliding_window")?;
        let use_sliding = json.get("use_sliding_window").and_then(|v| v.as_bool());
        let layer_types: Option<Vec<String>> =
            json.get("layer_types").and_then(|v| v.as_array()).map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            });
        let layer_windows = (0..num_layers)
            .map(|i| {
                let sliding = match (&layer_types, arch) {
                    (Some(types), _) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                    (None, Arch::Gemma2) => i % 2 == 0,
                    (None, Arch::Qwen2 | Arch::Qwen3) => use_sliding == Some(true),
                    (None, _) => true,
                };
                if sliding {
                    sliding_window
                } else {
                    None
                }
            })
            .collect();

        let tie_default = arch == Arch::Gemma2;
        let eos_token_ids = token_ids(json.get("eos_token_id"));
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: bounded(
                "intermediate_size",
                f.usize("intermediate_size")?,
                Limit::Width,
            )?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: bounded("vocab_size", f.usize("vocab_size")?, Limit::Vocab)?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(tie_default),
            rope,
            attention_bias: json
                .get("attention_bias")
                .and_then(|v| v.as_bool())
                .unwrap_or(arch == Arch::Qwen2),
            mlp_bias: json
                .get("mlp_bias")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            activation,
            layer_windows,
            attn_logit_softcapping: f.opt_f64("attn_logit_softcapping")?,
            final_logit_softcapping: f.opt_f64("final_logit_softcapping")?,
            query_pre_attn_scalar: if arch == Arch::Gemma2 {
                f.opt_f64("query_pre_attn_scalar")?
            } else {
                None
            },
            bos_token_id: token_ids(json.get("bos_token_id")).first().copied(),
            eos_token_ids,
        })
    }
}

/// Reads one id or a list of ids (`eos_token_id` may be either).
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// What a count in a model's description may be at most: far beyond any published model (the largest have
/// about 130 layers, hidden sizes of 25 600, vocabularies of 260 000 and contexts of 10 M positions), so only a
/// damaged or hostile file reaches them. Counts are checked before anything is sized by them, and again against
/// the weights actually present when the decoder loads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Layers,
    Heads,
    /// Hidden, head and intermediate sizes.
    Width,
    Vocab,
    Positions,
}

impl Limit {
    fn max(self) -> usize {
        match self {
            Limit::Layers => 1 << 10,
            Limit::Heads => 1 << 10,
            Limit::Width => 1 << 18,
            Limit::Vocab => 1 << 23,
            Limit::Positions => 1 << 26,
        }
    }
}

/// `value` of `field`, or an error naming the field when it passes its [`Limit`].
pub(crate) fn bounded(field: &str, value: usize, limit: Limit) -> Result<usize, String> {
    if value > limit.max() {
        return Err(format!(
            "`{field}` is {value}, past the most vibecheck accepts ({}): the file is damaged or not a real model's",
            limit.max()
        ));
    }
    Ok(value)
}

/// The largest JSON description (config.json, generation_config.json) read: real ones are a few kB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A small JSON file's text, refused unread past [`MAX_CONFIG_BYTES`] (so a huge file cannot exhaust memory).
pub(crate) fn read_small_file(path: &Path) -> Result<String, EngineError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| EngineError::io(path, e))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(EngineError::file(
            path,
            format!(
                "is larger than {} MiB; a model description is a few kB (is this the right file?)",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= 1 << 31)
                .map(|n| Some(n as usize))
                .ok_or_else(|| format!("`{key}` must be a non-negative integer, found {v}")),
        }
    }
    fn usize(&self, key: &str) -> Result<usize, String> {
        self.opt_usize(key)?
            .ok_or_else(|| format!("missing `{key}`"))
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        opt_f64_in(self.0, key)
    }
}

fn opt_f64_in(obj: &Value, key: &str) -> Result<Option<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a finite number, found {v}")),
    }
}

fn parse_rope(json: &Value, arch: Arch) -> Result<RopeConfig, String> {
    // transformers 5 keeps everything in `rope_parameters`; transformers 4 has `rope_theta` at the top level and
    // the scaling in `rope_scaling`.
    let params = json.get("rope_parameters").filter(|v| v.is_object());
    let scaling = json
        .get("rope_scaling")
        .filter(|v| v.is_object())
        .or(params);
    let theta = match opt_f64_in(json, "rope_theta")? {
        Some(t) => t,
        None => match params
            .map(|p| opt_f64_in(p, "rope_theta"))
            .transpose()?
            .flatten()
        {
            Some(t) => t,
            None if params.is_some() => return Err(
                "`rope_parameters` has no `rope_theta` and there is no top-level `rope_theta`; \
                     refusing to guess the RoPE base (add `rope_theta` to the config)"
                    .into(),
            ),
            // transformers 4 configs without the key use the class default, which is 10000 for every
            // architecture supported here.
            None => 10000.0,
        },
    };
    let partial_rotary_factor = params
        .map(|p| opt_f64_in(p, "partial_rotary_factor"))
        .transpose()?
        .flatten()
        .or(opt_f64_in(json, "partial_rotary_factor")?)
        .unwrap_or(1.0);
    let scaling = match scaling {
        None => RopeScaling::None,
        Some(s) => parse_scaling(s, json, arch)?,
    };
    Ok(RopeConfig {
        theta,
        scaling,
        partial_rotary_factor,
    })
}

fn parse_scaling(s: &Value, json: &Value, _arch: Arch) -> Result<RopeScaling, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |k: &str| opt_f64_in(s, k);
    let need = |k: &str| -> Result<f64, String> {
        num(k)?.ok_or_else(|| format!("rope scaling {kind:?} needs `{k}`"))
    };
    let orig_max = || -> Result<f64, String> {
        Ok(match num("original_max_position_embeddings")? {
            Some(v) => v,
            None => opt_f64_in(json, "original_max_position_embeddings")?
                .or(opt_f64_in(json, "max_position_embeddings")?)
                .unwrap_or(4096.0),
        })
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: need("factor")?,
            original_max_position_embeddings: orig_max()?,
            beta_fast: num("beta_fast")?.unwrap_or(32.0),
            beta_slow: num("beta_slow")?.unwrap_or(1.0),
            attention_factor: num("attention_factor")?,
            mscale: num("mscale")?,
            mscale_all_dim: num("mscale_all_dim")?,
            truncate: s.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
        },
        "longrope" | "su" => {
            let list = |k: &str| -> Result<Vec<f64>, String> {
                s.get(k)
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| format!("rope scaling \"longrope\" needs `{k}` as a list of numbers"))
            };
            RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: orig_max()?,
                attention_factor: num("attention_factor")?,
            }
        }
        other => {
            return Err(format!(
                "rope scaling type {other:?} is not supported (supported: default, linear, llama3, yarn, longrope)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
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
        j["architectures"] = json!(["GPTNeoXForCausalLM"]);
        let err = ModelConfig::from_hf_json(&j).unwrap_err();
        assert!(
            err.contains("GPTNeoXForCausalLM") && err.contains("Phi3ForCausalLM"),
            "{err}"
        );
    }

    #[test]
    fn eos_may_be_a_list() {
        assert_eq!(token_ids(Some(&json!([2, 7]))), vec![2, 7]);
        assert_eq!(token_ids(Some(&json!(3))), vec![3]);
    }
}
