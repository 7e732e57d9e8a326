//! One decoder for every supported architecture.
//!
//! Llama, Mistral, Qwen2/3, OLMo 2, Gemma 2 and Phi-3 are the same pre-norm transformer with small differences,
//! each following its transformers `modeling_*.py`:
//! - Qwen2: biases on the q/k/v projections.
//! - Qwen3: RMSNorm over each head of q and k before RoPE.
//! - OLMo 2: RMSNorm over the whole q and k projections; norms after attention and MLP instead of before.
//! - Gemma 2: embeddings scaled by √hidden, `(1 + w)` RMSNorm, norms before and after both blocks, tanh-GELU,
//!   soft-capped attention and final logits, `query_pre_attn_scalar`, sliding window on alternate layers.
//! - Phi-3: fused `qkv_proj` and `gate_up_proj`, partial rotary.
//!
//! Every tensor carries a batch dimension and every sequence its own positions, so sequences of different
//! lengths can share a forward pass (left-padded, masked per sequence).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::kv_cache::KvCache;

pub use crate::cache::Cache;
use crate::config::{Activation, Arch, ModelConfig};
use crate::masks::Masks;
use crate::rope::RopeTables;
use crate::weights::{Linear, Weights};
use crate::EngineError;

/// RMSNorm with its weight kept in float32 (Gemma's `1 + w` already folded in).
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, cfg: &ModelConfig) -> Result<Self, EngineError> {
        let mut weight = w.dense_f32(&format!("{name}.weight"))?;
        if cfg.arch == Arch::Gemma2 {
            weight = (weight + 1.0)?;
        }
        Ok(Self {
            weight,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::ops::rms_norm(&x32, &self.weight, self.eps)?.to_dtype(dtype)
    }
}

enum QkNorm {
    None,
    PerHead(RmsNorm, RmsNorm),
    Full(RmsNorm, RmsNorm),
}

enum Projections {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

struct Attention {
    proj: Projections,
    o: Linear,
    qk_norm: QkNorm,
    window: Option<usize>,
}

enum MlpProj {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Mlp {
    proj: MlpProj,
    down: Linear,
}

struct Layer {
    attn: Attention,
    mlp: Mlp,
    /// Before attention (absent in OLMo 2).
    input_norm: Option<RmsNorm>,
    /// After attention (Gemma 2, OLMo 2).
    post_attn_norm: Option<RmsNorm>,
    /// Before the MLP (the `post_attention_layernorm` of Llama-style models).
    pre_mlp_norm: Option<RmsNorm>,
    /// After the MLP (Gemma 2, OLMo 2).
    post_mlp_norm: Option<RmsNorm>,
}

enum Embedding {
    /// A candle tensor (GPU).
    Dense(Tensor),
    /// Rows unpacked on lookup (CPU); shared with a tied `lm_head`.
    Packed(std::sync::Arc<crate::kernels::PackedMatrix>),
}

/// A loaded model.
pub struct Decoder {
    pub cfg: ModelConfig,
    embed: Embedding,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RopeTables,
    dtype: DType,
    device: Device,
    /// The KV cache's dtype where it differs from the compute dtype (`--kv-cache f16` on the CPU).
    kv_dtype: Option<DType>,
}

impl Decoder {
    /// Builds the decoder from `weights` (tensor names as in transformers).
    pub fn load(cfg: ModelConfig, w: &Weights, max_positions: usize) -> Result<Self, EngineError> {
        let h = cfg.hidden_size;
        let (embed, embed_dims) = if w.device.is_cpu() {
            let p = w.packed("model.embed_tokens.weight")?;
            let dims = vec![p.rows, p.cols];
            (Embedding::Packed(p), dims)
        } else {
            let t = w.dense("model.embed_tokens.weight")?;
            let dims = t.dims().to_vec();
            (Embedding::Dense(t), dims)
        };
        if embed_dims != [cfg.vocab_size, h] {
            return Err(EngineError::Config(format!(
                "model.embed_tokens.weight has shape {embed_dims:?}, expected [{}, {h}] from vocab_size and hidden_size",
                cfg.vocab_size
            )));
        }
        // The layer count is the file's claim: checked against the layers the weights hold before anything is
        // sized by it.
        let present = w.layer_count();
        if cfg.num_layers > present {
            return Err(EngineError::file(
                w.origin_path(),
                format!(
                    "the model's description says {} layers, but the weights hold {present}: the config does not \
                     belong to these weights, or the checkpoint is incomplete",
                    cfg.num_layers
                ),
            ));
        }
        // Layers are packed in parallel (the tokenizer may be building on another thread meanwhile).
        use rayon::prelude::*;
        let layers = (0..cfg.num_layers)
            .into_par_iter()
            .map(|i| Self::load_layer(&cfg, w, i))
            .collect::<Result<Vec<_>, _>>()?;
        // Tied (or saved without one): the output projection is the embedding matrix, shared, not copied.
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            w.linear("lm_head", cfg.vocab_size, h, false)?
        } else {
            w.linear("model.embed_tokens", cfg.vocab_size, h, false)?
        };
        let max_positions = max_positions.min(cfg.max_position_embeddings.max(1));
        let rope = RopeTables::new(&cfg, max_positions, w.dtype, &w.device)?;
        Ok(Self {
            embed_scale: (cfg.arch == Arch::Gemma2).then(|| (h as f64).sqrt()),
            norm: RmsNorm::load(w, "model.norm", &cfg)?,
            embed,
            layers,
            lm_head,
            rope,
            dtype: w.dtype,
            device: w.device.clone(),
            kv_dtype: None,
            cfg,
        })
    }

    /// Keeps the KV cache in `dtype` (float16 halves what a long context reads per token and holds, at ~3
    /// significant digits per key and value); `None` or the compute dtype keeps it as computed.
    pub fn with_kv_cache(mut self, dtype: Option<DType>) -> Self {
        self.kv_dtype = dtype.filter(|&d| d != self.dtype);
        self
    }

    /// The KV cache's dtype.
    pub fn kv_cache_dtype(&self) -> DType {
        self.kv_dtype.unwrap_or(self.dtype)
    }

    fn load_layer(cfg: &ModelConfig, w: &Weights, i: usize) -> Result<Layer, EngineError> {
        let (h, nh, nkv, hd, inter) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let p = format!("model.layers.{i}");
        let proj = if cfg.arch == Arch::Phi3 {
            Projections::Fused(w.linear(
                &format!("{p}.self_attn.qkv_proj"),
                (nh + 2 * nkv) * hd,
                h,
                false,
            )?)
        } else {
            let b = cfg.attention_bias;
            let (q, k, v) = (
                format!("{p}.self_attn.q_proj"),
                format!("{p}.self_attn.k_proj"),
                format!("{p}.self_attn.v_proj"),
            );
            match w.stacked_linear(&[(&q, nh * hd), (&k, nkv * hd), (&v, nkv * hd)], h, b)? {
                Some(qkv) => Projections::Fused(qkv),
                None => Projections::Separate {
                    q: w.linear(&q, nh * hd, h, b)?,
                    k: w.linear(&k, nkv * hd, h, b)?,
                    v: w.linear(&v, nkv * hd, h, b)?,
                },
            }
        };
        let o_bias = cfg.attention_bias && matches!(cfg.arch, Arch::Llama | Arch::Mistral);
        let qk_norm = match cfg.arch {
            Arch::Qwen3 => QkNorm::PerHead(
                RmsNorm::load(w, &format!("{p}.self_attn.q_norm"), cfg)?,
                RmsNorm::load(w, &format!("{p}.self_attn.k_norm"), cfg)?,
            ),
            Arch::Olmo2 => QkNorm::Full(
                RmsNorm::load(w, &format!("{p}.self_attn.q_norm"), cfg)?,
                RmsNorm::load(w, &format!("{p}.self_attn.k_norm"), cfg)?,
            ),
            _ => QkNorm::None,
        };
        let attn = Attention {
            proj,
            o: w.linear(&format!("{p}.self_attn.o_proj"), h, nh * hd, o_bias)?,
            qk_norm,
            window: cfg.layer_windows.get(i).copied().flatten(),
        };
        let mb = cfg.mlp_bias;
        let mlp = Mlp {
            proj: if cfg.arch == Arch::Phi3 {
                MlpProj::Fused(w.linear(&format!("{p}.mlp.gate_up_proj"), 2 * inter, h, false)?)
            } else {
                let (gate, up) = (format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj"));
                match w.stacked_linear(&[(&gate, inter), (&up, inter)], h, mb)? {
                    Some(gu) => MlpProj::Fused(gu),
                    None => MlpProj::Separate {
                        gate: w.linear(&gate, inter, h, mb)?,
                        up: w.linear(&up, inter, h, mb)?,
                    },
                }
            },
            down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, mb)?,
        };
        let norm = |n: &str| RmsNorm::load(w, &format!("{p}.{n}"), cfg);
        let layer = match cfg.arch {
            Arch::Gemma2 => Layer {
                attn,
                mlp,
                input_norm: Some(norm("input_layernorm")?),
                post_attn_norm: Some(norm("post_attention_layernorm")?),
                pre_mlp_norm: Some(norm("pre_feedforward_layernorm")?),
                post_mlp_norm: Some(norm("post_feedforward_layernorm")?),
            },
            Arch::Olmo2 => Layer {
                attn,
                mlp,
                input_norm: None,
                post_attn_norm: Some(norm("post_attention_layernorm")?),
                pre_mlp_norm: None,
                post_mlp_norm: Some(norm("post_feedforward_layernorm")?),
            },
            _ => Layer {
                attn,
                mlp,
                input_norm: Some(norm("input_layernorm")?),
                post_attn_norm: None,
                pre_mlp_norm: Some(norm("post_attention_layernorm")?),
                post_mlp_norm: None,
            },
        };
        Ok(layer)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The longest sequence (prompt plus generated tokens) this instance can hold.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
    }

    /// Runs `tokens` (`[batch][steps]`, every row the same length) through the model, appending to `cache`.
    /// Returns float32 logits: `[batch, vocab]` for the last step, or `[batch, steps, vocab]` with `all_steps`.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut Cache,
        all_steps: bool,
    ) -> Result<Tensor, EngineError> {
        self.forward_in_pieces(tokens, cache, all_steps, prefill_chunk())
    }

    /// [`Self::forward`] with prompts longer than `chunk` tokens run `chunk` at a time (when only the last step's
    /// logits are wanted): the same computation, with attention's per-layer score and mask tensors bounded by
    /// `chunk` × context instead of prompt × context.
    pub fn forward_in_pieces(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut Cache,
        all_steps: bool,
        chunk: usize,
    ) -> Result<Tensor, EngineError> {
        let chunk = chunk.max(1);
        // Everything that could fail a later piece is checked before the first, so an error leaves the cache as
        // it was.
        let t = self.check_input(tokens, cache)?;
        // Run the whole pass on a rayon worker: the kernels' parallel loops then split work inside the pool
        // instead of handing every matmul from an outside thread to the pool and sleeping until it is done
        // (two futex round trips per matmul).
        rayon::scope(|_| {
            if all_steps || t <= chunk {
                return self.forward_checked(tokens, cache, all_steps);
            }
            // A whole 2 000-token prompt made ~130 MB of scores per layer; in pieces its prefill is ~1.8× faster.
            let mut start = 0;
            loop {
                let end = (start + chunk).min(t);
                let piece: Vec<Vec<u32>> = tokens.iter().map(|r| r[start..end].to_vec()).collect();
                let logits = self.forward_checked(&piece, cache, false)?;
                if end == t {
                    return Ok(logits);
                }
                start = end;
            }
        })
    }

    /// The steps per row of `tokens`, after checking that the rows match the cache's batch, are of equal,
    /// non-zero length, fit in the context and hold only ids of the vocabulary.
    fn check_input(&self, tokens: &[Vec<u32>], cache: &Cache) -> Result<usize, EngineError> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || tokens.iter().any(|r| r.len() != t) || b != cache.batch() {
            return Err(EngineError::Config(format!(
                "forward needs {} rows of equal, non-zero length",
                cache.batch()
            )));
        }
        if cache.len + t > self.rope.max_positions {
            return Err(EngineError::ContextFull {
                needed: cache.len + t,
                max: self.rope.max_positions,
            });
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = tokens.iter().flatten().find(|&&id| id >= vocab) {
            return Err(EngineError::Config(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(t)
    }

    /// One pass over input that [`Self::check_input`] accepted.
    fn forward_checked(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut Cache,
        all_steps: bool,
    ) -> Result<Tensor, EngineError> {
        let (b, t) = (tokens.len(), tokens[0].len());
        let start = cache.len;
        let positions: Vec<Vec<u32>> = cache
            .pads
            .iter()
            .map(|&pad| {
                (start..start + t)
                    .map(|p| p.saturating_sub(pad) as u32)
                    .collect()
            })
            .collect();
        let (cos, sin) = self.rope.gather(&positions)?;
        let step = Step {
            cos,
            sin,
            masks: Masks::new(&cache.pads, start, t, &self.device)?,
        };

        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let h = self.cfg.hidden_size;
        let mut x = match &self.embed {
            Embedding::Dense(table) => {
                let ids = Tensor::from_vec(flat, (b * t,), &self.device)?;
                table.index_select(&ids, 0)?.reshape((b, t, h))?
            }
            Embedding::Packed(table) => {
                let mut rows = vec![0f32; b * t * h];
                for (id, row) in flat.iter().zip(rows.chunks_mut(h)) {
                    table.row_to_f32(*id as usize, row);
                }
                Tensor::from_vec(rows, (b, t, h), &self.device)?.to_dtype(self.dtype)?
            }
        };
        if let Some(s) = self.embed_scale {
            // transformers multiplies by the normalizer cast to the hidden dtype.
            let s = Tensor::new(s as f32, &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&s)?;
        }
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = self.layer_forward(layer, &x, kv, &step)?;
        }
        cache.len += t;
        let x = if all_steps {
            x
        } else {
            x.narrow(1, t - 1, 1)?.contiguous()?
        };
        let x = self.norm.forward(&x)?;
        let mut logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(if all_steps {
            logits
        } else {
            logits.squeeze(1)?
        })
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        kv: &mut KvCache,
        step: &Step,
    ) -> candle_core::Result<Tensor> {
        let h = match &layer.input_norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        };
        let mut h = self.attention(&layer.attn, &h, kv, step)?;
        if let Some(n) = &layer.post_attn_norm {
            h = n.forward(&h)?;
        }
        let x = (x + h)?;
        let h = match &layer.pre_mlp_norm {
            Some(n) => n.forward(&x)?,
            None => x.clone(),
        };
        let mut h = self.mlp(&layer.mlp, &h)?;
        if let Some(n) = &layer.post_mlp_norm {
            h = n.forward(&h)?;
        }
        x + h
    }

    fn mlp(&self, mlp: &Mlp, x: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &mlp.proj {
            MlpProj::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            MlpProj::Fused(p) => {
                let gu = p.forward(x)?;
                let n = self.cfg.intermediate_size;
                (gu.narrow(D::Minus1, 0, n)?, gu.narrow(D::Minus1, n, n)?)
            }
        };
        let act = match self.cfg.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        mlp.down.forward(&(act * up)?)
    }

    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        kv: &mut KvCache,
        step: &Step,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (mut q, mut k, v) = match &attn.proj {
            Projections::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Projections::Fused(p) => {
                let qkv = p.forward(x)?;
                (
                    qkv.narrow(D::Minus1, 0, nh * hd)?,
                    qkv.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    qkv.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        if let QkNorm::Full(qn, kn) = &attn.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let mut q = q.reshape((b, t, nh, hd))?;
        let mut k = k.reshape((b, t, nkv, hd))?;
        if let QkNorm::PerHead(qn, kn) = &attn.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = self.apply_rope(&q.transpose(1, 2)?.contiguous()?, &step.cos, &step.sin)?;
        let k = self.apply_rope(&k.transpose(1, 2)?.contiguous()?, &step.cos, &step.sin)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let (k, v) = match self.kv_dtype {
            Some(d) => kv.append(&k.to_dtype(d)?, &v.to_dtype(d)?)?,
            None => kv.append(&k, &v)?,
        };
        let s = k.dim(2)?;
        if let Some(out) = self.decode_attention(attn, &q, &k, &v, step)? {
            let out = Tensor::from_vec(out, (b, t, nh * hd), &self.device)?;
            return attn.o.forward(&out);
        }
        // The general path (GPU, or compute dtypes other than float32): a cache kept in another dtype is widened.
        let k = k.to_dtype(q.dtype())?.contiguous()?;
        let v = v.to_dtype(q.dtype())?.contiguous()?;

        // Grouped-query attention without copying K/V: the `rep` query heads that share a KV head are stacked
        // along the time axis.
        let rep = nh / nkv;
        let q = (q * cfg.attention_scale())?.reshape((b, nkv, rep * t, hd))?;
        let mut scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        if let Some(cap) = cfg.attn_logit_softcapping {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        if let Some(mask) = step.masks.get(attn.window, s)? {
            scores = scores
                .reshape((b, nkv, rep, t, s))?
                .broadcast_add(&mask)?
                .reshape((b, nkv, rep * t, s))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        attn.o.forward(&out)
    }

    /// Attention computed in place from the cache on the CPU (float32 queries, a float32 or float16 cache), for
    /// a decoding step or a prompt, or `None` where the general path applies (GPU, other dtypes). Each step sees
    /// the keys the general path's mask leaves visible: from the sequence's first real token (or the start of the
    /// sliding window) up to itself; a padding position sees only itself.
    fn decode_attention(
        &self,
        attn: &Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        step: &Step,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let masks = &step.masks;
        if !self.device.is_cpu() || q.dtype() != DType::F32 {
            return Ok(None);
        }
        let visible = masks.visible(attn.window);
        let cfg = &self.cfg;
        let shape = crate::attention::DecodeAttention {
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attention_scale() as f32,
            softcap: cfg.attn_logit_softcapping.map(|c| c as f32),
        };
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        shape.run(&q, k, v, &visible, masks.t)
    }

    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let rot = self.cfg.rotary_dim();
        let hd = self.cfg.head_dim;
        if rot == hd {
            return candle_nn::rotary_emb::rope(x, cos, sin);
        }
        let rotated =
            candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, cos, sin)?;
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rot, hd - rot)?], D::Minus1)
    }
}

/// Prompt tokens per forward pass when only the last step's logits are wanted (`VIBECHECK_PREFILL_CHUNK`
/// overrides it, for measurements).
fn prefill_chunk() -> usize {
    static CHUNK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CHUNK.get_or_init(|| {
        std::env::var("VIBECHECK_PREFILL_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(512)
    })
}

/// What every layer of one forward pass shares: rotary tables gathered for the positions, and the masks.
struct Step {
    cos: Tensor,
    sin: Tensor,
    masks: Masks,
}
