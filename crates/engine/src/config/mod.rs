//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Both transformers-4 keys (`rope_theta`, `rope_scaling`) and transformers-5 keys (`rope_parameters`) are read.
//! The one thing never done is a silent fallback that changes the model: a transformers-5 config keeps its
//! `rope_theta` inside `rope_parameters`, and falling back to 10000 there turns SmolLM2 into a model that says
//! "Le Grand Paris is the capital of France".

use std::path::Path;

use serde_json::Value;

use crate::EngineError;

mod quirks;
pub use quirks::{LayerRope, MoeConfig, NormKind, Quirks};

/// The architectures this engine implements, by their `architectures[0]` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Mixtral,
    Qwen2,
    Qwen2Moe,
    Qwen3,
    Qwen3Moe,
    Olmo,
    Olmo2,
    Gemma,
    Gemma2,
    Gemma3,
    Phi,
    Phi3,
    SmolLM3,
    Granite,
    GptNeoX,
    StableLm,
    Cohere,
}

impl Arch {
    pub const ALL: [(&'static str, Arch); 19] = [
        ("LlamaForCausalLM", Arch::Llama),
        ("MistralForCausalLM", Arch::Mistral),
        ("MixtralForCausalLM", Arch::Mixtral),
        ("Qwen2ForCausalLM", Arch::Qwen2),
        ("Qwen2MoeForCausalLM", Arch::Qwen2Moe),
        ("Qwen3ForCausalLM", Arch::Qwen3),
        ("Qwen3MoeForCausalLM", Arch::Qwen3Moe),
        ("OlmoForCausalLM", Arch::Olmo),
        ("Olmo2ForCausalLM", Arch::Olmo2),
        ("GemmaForCausalLM", Arch::Gemma),
        ("Gemma2ForCausalLM", Arch::Gemma2),
        ("Gemma3ForCausalLM", Arch::Gemma3),
        ("PhiForCausalLM", Arch::Phi),
        ("Phi3ForCausalLM", Arch::Phi3),
        ("SmolLM3ForCausalLM", Arch::SmolLM3),
        ("GraniteForCausalLM", Arch::Granite),
        ("GPTNeoXForCausalLM", Arch::GptNeoX),
        ("StableLmForCausalLM", Arch::StableLm),
        ("CohereForCausalLM", Arch::Cohere),
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

    /// Gemma's family: embeddings times √hidden, `(1 + w)` RMSNorm, tanh-GELU.
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }

    fn is_qwen(self) -> bool {
        matches!(
            self,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen2Moe | Arch::Qwen3Moe
        )
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
    /// The epsilon of every norm (RMSNorm's or LayerNorm's).
    pub norm_eps: f64,
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
    pub quirks: Quirks,
}

impl ModelConfig {
    /// The dimensions rotated by RoPE in each head.
    pub fn rotary_dim(&self) -> usize {
        // transformers truncates (`int(head_dim * partial_rotary_factor)`).
        let d = (self.head_dim as f64 * self.rope.partial_rotary_factor) as usize;
        (d - d % 2).min(self.head_dim)
    }

    pub fn attention_scale(&self) -> f64 {
        if let Some(m) = self.quirks.attention_multiplier {
            return m;
        }
        match self.query_pre_attn_scalar {
            Some(s) => 1.0 / s.sqrt(),
            None => 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    /// The rotary table layer `i` uses.
    pub fn layer_rope(&self, i: usize) -> LayerRope {
        self.quirks
            .layer_rope
            .get(i)
            .copied()
            .unwrap_or(LayerRope::Global)
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
        refuse_unimplemented(json, arch)?;
        let f = Fields(json);
        let flag = |key: &str| json.get(key).and_then(|v| v.as_bool());
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

        let (rope, local_rope_theta) = parse_rope(json, arch)?;
        let activation = parse_activation(json, arch)?;

        // Which layers slide, as transformers decides it: `layer_types` where the config lists them, else each
        // architecture's own rule (Qwen's window starts at `max_window_layers`).
        let use_sliding = flag("use_sliding_window");
        let sliding_window = f.opt_usize("sliding_window")?.filter(|&w| w > 0);
        let max_window_layers = f.opt_usize("max_window_layers")?.unwrap_or(28);
        let pattern = f.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
        let layer_types: Option<Vec<String>> =
            json.get("layer_types").and_then(|v| v.as_array()).map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            });
        let sliding: Vec<bool> = (0..num_layers)
            .map(|i| match (&layer_types, arch) {
                _ if use_sliding == Some(false) && !arch.is_gemma() => false,
                (Some(types), _) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                (None, Arch::Gemma2) => i % 2 == 0,
                (None, Arch::Gemma3) => (i + 1) % pattern != 0,
                (None, a) if a.is_qwen() => use_sliding == Some(true) && i >= max_window_layers,
                (None, _) => true,
            })
            .collect();
        let layer_windows = sliding
            .iter()
            .map(|&s| if s { sliding_window } else { None })
            .collect();
        let layer_rope = match arch {
            Arch::Gemma3 => sliding
                .iter()
                .map(|&s| {
                    if s {
                        LayerRope::Local
                    } else {
                        LayerRope::Global
                    }
                })
                .collect(),
            Arch::SmolLM3 => {
                let listed = json.get("no_rope_layers").and_then(|v| v.as_array());
                let interval = f.opt_usize("no_rope_layer_interval")?.unwrap_or(4).max(1);
                (0..num_layers)
                    .map(|i| {
                        let uses_rope = match listed {
                            Some(l) => l.get(i).and_then(|v| v.as_u64()).unwrap_or(1) != 0,
                            None => (i + 1) % interval != 0,
                        };
                        if uses_rope {
                            LayerRope::Global
                        } else {
                            LayerRope::None
                        }
                    })
                    .collect()
            }
            _ => Vec::new(),
        };

        let norm = match arch {
            _ if arch.is_gemma() => NormKind::RmsPlusOne,
            Arch::Phi | Arch::GptNeoX | Arch::StableLm => NormKind::LayerNorm {
                weight: true,
                bias: true,
            },
            Arch::Cohere => NormKind::LayerNorm {
                weight: true,
                bias: false,
            },
            Arch::Olmo => NormKind::LayerNorm {
                weight: false,
                bias: false,
            },
            _ => NormKind::Rms,
        };
        let norm_eps = match arch {
            // OLMo 1's LayerNorm has its epsilon fixed in the code, not in the config.
            Arch::Olmo => 1e-5,
            _ => f
                .opt_f64("rms_norm_eps")?
                .or(f.opt_f64("layer_norm_eps")?)
                .unwrap_or(if matches!(norm, NormKind::LayerNorm { .. }) {
                    1e-5
                } else {
                    1e-6
                }),
        };
        let attention_bias = match arch {
            Arch::Phi => true,
            Arch::StableLm => flag("use_qkv_bias").unwrap_or(false),
            Arch::Qwen2 | Arch::Qwen2Moe => {
                flag("attention_bias").or(flag("qkv_bias")).unwrap_or(true)
            }
            Arch::GptNeoX => flag("attention_bias").unwrap_or(true),
            _ => flag("attention_bias").unwrap_or(false),
        };
        let attention_out_bias = match arch {
            Arch::Phi => true,
            Arch::Qwen2 | Arch::Qwen2Moe | Arch::StableLm => false,
            _ => attention_bias,
        };
        let mlp_bias = match arch {
            Arch::Phi | Arch::GptNeoX => true,
            _ => flag("mlp_bias").unwrap_or(false),
        };
        let moe = parse_moe(&f, json, arch, num_layers)?;
        let granite = arch == Arch::Granite;
        let quirks = Quirks {
            norm,
            layer_rope,
            local_rope_theta,
            rope_interleaved: arch == Arch::Cohere,
            embedding_multiplier: if arch.is_gemma() {
                Some((hidden_size as f64).sqrt())
            } else if granite {
                Some(f.opt_f64("embedding_multiplier")?.unwrap_or(1.0))
            } else {
                None
            },
            residual_multiplier: if granite {
                Some(f.opt_f64("residual_multiplier")?.unwrap_or(1.0))
            } else {
                None
            },
            attention_multiplier: if granite {
                Some(f.opt_f64("attention_multiplier")?.unwrap_or(1.0))
            } else {
                None
            },
            logits_multiplier: match arch {
                Arch::Granite => {
                    let s = f.opt_f64("logits_scaling")?.unwrap_or(1.0);
                    if s == 0.0 {
                        return Err(
                            "`logits_scaling` must not be 0 (the logits are divided by it)".into(),
                        );
                    }
                    Some(1.0 / s)
                }
                Arch::Cohere => Some(f.opt_f64("logit_scale")?.unwrap_or(0.0625)),
                _ => None,
            },
            clip_qkv: if arch == Arch::Olmo {
                f.opt_f64("clip_qkv")?
            } else {
                None
            },
            parallel_residual: match arch {
                Arch::Phi | Arch::Cohere => true,
                Arch::GptNeoX => flag("use_parallel_residual").unwrap_or(true),
                Arch::StableLm => flag("use_parallel_residual").unwrap_or(false),
                _ => false,
            },
            lm_head_bias: arch == Arch::Phi,
            attention_out_bias,
            moe,
        };

        let tie_default = matches!(
            arch,
            Arch::Gemma | Arch::Gemma2 | Arch::Gemma3 | Arch::Cohere | Arch::SmolLM3
        );
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
            norm_eps,
            max_position_embeddings,
            tie_word_embeddings: flag("tie_word_embeddings").unwrap_or(tie_default),
            rope,
            attention_bias,
            mlp_bias,
            activation,
            layer_windows,
            attn_logit_softcapping: f.opt_f64("attn_logit_softcapping")?,
            final_logit_softcapping: f.opt_f64("final_logit_softcapping")?,
            query_pre_attn_scalar: match arch {
                Arch::Gemma2 => f.opt_f64("query_pre_attn_scalar")?,
                Arch::Gemma3 => Some(f.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0)),
                _ => None,
            },
            bos_token_id: token_ids(json.get("bos_token_id")).first().copied(),
            eos_token_ids,
            quirks,
        })
    }
}

/// Variants of a supported architecture that change its computation in a way not implemented here: refused by
/// name rather than run wrongly.
fn refuse_unimplemented(json: &Value, arch: Arch) -> Result<(), String> {
    let on = |key: &str| json.get(key).and_then(|v| v.as_bool()) == Some(true);
    let refused = match arch {
        Arch::Phi | Arch::StableLm if on("qk_layernorm") => Some("qk_layernorm"),
        Arch::Cohere if on("use_qk_norm") => Some("use_qk_norm"),
        _ if on("use_bidirectional_attention") => Some("use_bidirectional_attention"),
        _ => None,
    };
    match refused {
        Some(key) => Err(format!(
            "`{key}: true` ({}) is not supported yet; this architecture loads without it",
            arch.hf_name()
        )),
        None => Ok(()),
    }
}

fn parse_activation(json: &Value, arch: Arch) -> Result<Activation, String> {
    let explicit = json
        .get("hidden_activation")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let act = json.get("hidden_act").and_then(|v| v.as_str());
    let name = match (explicit, act) {
        (Some(e), _) => e,
        // Gemma 1 checkpoints say "gelu" but were trained with the tanh approximation, which transformers uses.
        (None, Some("gelu")) if arch == Arch::Gemma => "gelu_pytorch_tanh".into(),
        (None, Some(a)) => a.to_string(),
        (None, None) if arch.is_gemma() => "gelu_pytorch_tanh".into(),
        (None, None) if arch == Arch::GptNeoX => "gelu".into(),
        (None, None) if arch == Arch::Phi => "gelu_new".into(),
        (None, None) => "silu".into(),
    };
    Ok(match name.as_str() {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
        "gelu" => Activation::Gelu,
        other => {
            return Err(format!(
                "hidden_act {other:?} is not supported (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)"
            ))
        }
    })
}

/// The experts of Mixtral and the Qwen MoE models. transformers 5 writes `num_local_experts` where hub configs
/// of Qwen say `num_experts`.
fn parse_moe(
    f: &Fields,
    json: &Value,
    arch: Arch,
    num_layers: usize,
) -> Result<Option<MoeConfig>, String> {
    if !matches!(arch, Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe) {
        return Ok(None);
    }
    let experts = f
        .opt_usize("num_local_experts")?
        .or(f.opt_usize("num_experts")?)
        .ok_or(
            "missing `num_local_experts` (or `num_experts`): how many experts each MoE layer has",
        )?;
    let experts = bounded("num_local_experts", experts, Limit::Heads)?;
    let top_k = f.opt_usize("num_experts_per_tok")?.unwrap_or(2);
    if experts == 0 || top_k == 0 || top_k > experts {
        return Err(format!(
            "`num_experts_per_tok` ({top_k}) must be between 1 and the number of experts ({experts})"
        ));
    }
    let qwen = arch != Arch::Mixtral;
    let intermediate_size = if qwen {
        f.usize("moe_intermediate_size")?
    } else {
        f.usize("intermediate_size")?
    };
    let only_dense: Vec<u64> = json
        .get("mlp_only_layers")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let step = if qwen {
        f.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1)
    } else {
        1
    };
    Ok(Some(MoeConfig {
        experts,
        top_k,
        norm_topk_prob: match arch {
            Arch::Mixtral => true,
            _ => json
                .get("norm_topk_prob")
                .and_then(|v| v.as_bool())
                .unwrap_or(arch == Arch::Qwen3Moe),
        },
        intermediate_size: bounded("moe_intermediate_size", intermediate_size, Limit::Width)?,
        shared_expert_intermediate_size: if arch == Arch::Qwen2Moe {
            f.opt_usize("shared_expert_intermediate_size")?
                .filter(|&n| n > 0)
        } else {
            None
        },
        sparse_layers: (0..num_layers)
            .map(|i| !only_dense.contains(&(i as u64)) && (i + 1) % step == 0)
            .collect(),
    }))
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

/// The RoPE of the global layers, and the base of Gemma 3's local (sliding) layers.
fn parse_rope(json: &Value, arch: Arch) -> Result<(RopeConfig, Option<f64>), String> {
    // transformers 5 keeps everything in `rope_parameters` (Gemma 3: one entry per layer type); transformers 4
    // has `rope_theta` at the top level and the scaling in `rope_scaling`.
    let top = json.get("rope_parameters").filter(|v| v.is_object());
    let params = top
        .and_then(|p| p.get("full_attention"))
        .filter(|v| v.is_object())
        .or(top);
    let scaling = json
        .get("rope_scaling")
        .filter(|v| v.is_object())
        .or(params);
    let theta = match opt_f64_in(json, "rope_theta")?.or(opt_f64_in(json, "rotary_emb_base")?) {
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
            // transformers 4 configs without the key use their class's default.
            None => match arch {
                Arch::Mixtral | Arch::Gemma3 => 1e6,
                Arch::SmolLM3 => 2e6,
                _ => 10000.0,
            },
        },
    };
    let partial_rotary_factor = params
        .map(|p| opt_f64_in(p, "partial_rotary_factor"))
        .transpose()?
        .flatten()
        .or(opt_f64_in(json, "partial_rotary_factor")?)
        .or(opt_f64_in(json, "rotary_pct")?)
        .unwrap_or(1.0);
    if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
        return Err(format!(
            "`partial_rotary_factor` must be in (0, 1], found {partial_rotary_factor}"
        ));
    }
    let scaling = match scaling {
        None => RopeScaling::None,
        Some(s) => parse_scaling(s, json, arch)?,
    };
    let local = if arch == Arch::Gemma3 {
        let nested = top
            .and_then(|p| p.get("sliding_attention"))
            .map(|p| opt_f64_in(p, "rope_theta"))
            .transpose()?
            .flatten();
        Some(
            nested
                .or(opt_f64_in(json, "rope_local_base_freq")?)
                .unwrap_or(10000.0),
        )
    } else {
        None
    };
    Ok((
        RopeConfig {
            theta,
            scaling,
            partial_rotary_factor,
        },
        local,
    ))
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
mod tests;
