//! What sets each architecture apart from Llama, as data the decoder reads ([`Quirks`]); filled from config.json
//! by `ModelConfig::from_hf_json`.

/// How a model normalizes its hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormKind {
    /// RMSNorm times its weight.
    #[default]
    Rms,
    /// RMSNorm times `1 + w` (the Gemma family).
    RmsPlusOne,
    /// LayerNorm, with or without a weight and a bias (OLMo 1 has neither, Cohere no bias).
    LayerNorm { weight: bool, bias: bool },
}

/// Which rotary table a layer's attention uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRope {
    Global,
    /// Gemma 3's sliding layers: the local base (`rope_local_base_freq`).
    Local,
    /// No positional rotation (SmolLM3's NoPE layers).
    None,
}

/// A mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    pub top_k: usize,
    /// Renormalize the chosen experts' router weights to sum to one.
    pub norm_topk_prob: bool,
    /// Each expert's intermediate size.
    pub intermediate_size: usize,
    /// Qwen2-MoE's shared expert behind a sigmoid gate.
    pub shared_expert_intermediate_size: Option<usize>,
    /// Per layer: whether it is sparse (Qwen's `mlp_only_layers` and `decoder_sparse_step` make some dense).
    pub sparse_layers: Vec<bool>,
}

/// What sets an architecture apart from Llama, as data (every field's default is Llama's behaviour).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quirks {
    pub norm: NormKind,
    /// Per layer; empty means every layer uses the global table.
    pub layer_rope: Vec<LayerRope>,
    /// The RoPE base of [`LayerRope::Local`] layers.
    pub local_rope_theta: Option<f64>,
    /// Rotate adjacent pairs (Cohere) rather than the two halves of the rotated dims.
    pub rope_interleaved: bool,
    /// Multiplies the embeddings (Gemma's √hidden, Granite's `embedding_multiplier`).
    pub embedding_multiplier: Option<f64>,
    /// Multiplies each block's output before the residual add (Granite).
    pub residual_multiplier: Option<f64>,
    /// Replaces `head_dim^-0.5` as the attention scale (Granite).
    pub attention_multiplier: Option<f64>,
    /// Multiplies the logits (Cohere's `logit_scale`, Granite's `1 / logits_scaling`).
    pub logits_multiplier: Option<f64>,
    /// Clamps q, k and v to ±this after projection (OLMo 1).
    pub clip_qkv: Option<f64>,
    /// Attention and MLP read the same residual and both add to it (Phi-2, GPT-NeoX, Cohere).
    pub parallel_residual: bool,
    /// The output projection has a bias (Phi-2).
    pub lm_head_bias: bool,
    /// The attention output projection has a bias (where `attention_bias` covers only q/k/v, it has none).
    pub attention_out_bias: bool,
    pub moe: Option<MoeConfig>,
}
