//! One decoder for every supported architecture.
//!
//! Every supported model is a pre-norm transformer with small differences, each following its transformers
//! `modeling_*.py`, and each difference is data in [`crate::config::Quirks`] rather than a branch per model:
//! - Qwen2: biases on the q/k/v projections. Qwen3, Gemma 3: RMSNorm over each head of q and k before RoPE.
//!   OLMo 2: RMSNorm over the whole q and k projections; norms after attention and MLP instead of before.
//! - The Gemma family: embeddings scaled by √hidden, `(1 + w)` RMSNorm, tanh-GELU. Gemma 2 and 3: norms before
//!   and after both blocks, `query_pre_attn_scalar`, sliding windows on some layers (Gemma 3's with their own
//!   RoPE base); Gemma 2 soft-caps attention and final logits.
//! - Phi-3: fused `qkv_proj` and `gate_up_proj`, partial rotary (Phi-4-mini).
//! - Phi-2, GPT-NeoX, StableLM, Cohere, OLMo 1: LayerNorm (with or without weight and bias), partial rotary,
//!   attention and MLP in parallel on one residual (Phi-2, NeoX, Cohere), NeoX's per-head fused q/k/v,
//!   Cohere's interleaved RoPE and logit scale, OLMo's q/k/v clipping.
//! - SmolLM3: layers without RoPE. Granite: embedding, residual, attention and logit multipliers.
//! - Mixtral, Qwen2-MoE, Qwen3-MoE: sparse MLPs (`mlp.rs`).
//!
//! Every tensor carries a batch dimension and every sequence its own positions, so sequences of different
//! lengths can share a forward pass (left-padded, masked per sequence).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::kv_cache::KvCache;

pub use crate::cache::Cache;
use crate::config::{Arch, LayerRope, ModelConfig};
use crate::linear::Linear;
use crate::masks::Masks;
use crate::mlp::{Ffn, Gated, GatedNames, Plain};
use crate::norm::Norm;
use crate::rope::RopeTables;
use crate::weights::Weights;
use crate::EngineError;

#[derive(Clone)]
enum QkNorm {
    None,
    PerHead(Norm, Norm),
    Full(Norm, Norm),
}

#[derive(Clone)]
enum Projections {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// q rows, then k, then v.
    Fused(Linear),
    /// GPT-NeoX's `query_key_value`: for each head its q, k and v rows in turn.
    PerHead(Linear),
}

#[derive(Clone)]
struct Attention {
    proj: Projections,
    o: Linear,
    qk_norm: QkNorm,
    window: Option<usize>,
    rope: LayerRope,
}

#[derive(Clone)]
struct Layer {
    attn: Attention,
    ffn: Ffn,
    /// Before attention (absent in OLMo 2).
    input_norm: Option<Norm>,
    /// After attention (Gemma 2 and 3, OLMo 2).
    post_attn_norm: Option<Norm>,
    /// Before the MLP (the `post_attention_layernorm` of Llama-style models; GPT-NeoX's second parallel norm).
    pre_mlp_norm: Option<Norm>,
    /// After the MLP (Gemma 2 and 3, OLMo 2).
    post_mlp_norm: Option<Norm>,
}

#[derive(Clone)]
enum Embedding {
    /// A candle tensor (GPU).
    Dense(Tensor),
    /// Rows unpacked on lookup (CPU); shared with a tied `lm_head`.
    Packed(std::sync::Arc<crate::kernels::PackedMatrix>),
}

/// Where an architecture keeps its tensors (transformers' names).
struct Names {
    embed: &'static str,
    final_norm: &'static str,
    lm_head: &'static str,
    layers: &'static str,
    attn: &'static str,
    o: &'static str,
}

impl Names {
    fn of(arch: Arch) -> Self {
        match arch {
            Arch::GptNeoX => Names {
                embed: "gpt_neox.embed_in",
                final_norm: "gpt_neox.final_layer_norm",
                lm_head: "embed_out",
                layers: "gpt_neox.layers",
                attn: "attention",
                o: "dense",
            },
            Arch::Phi => Names {
                final_norm: "model.final_layernorm",
                o: "dense",
                ..Self::of(Arch::Llama)
            },
            _ => Names {
                embed: "model.embed_tokens",
                final_norm: "model.norm",
                lm_head: "lm_head",
                layers: "model.layers",
                attn: "self_attn",
                o: "o_proj",
            },
        }
    }
}

/// A loaded model.
#[derive(Clone)]
pub struct Decoder {
    pub cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rope: RopeTables,
    /// Gemma 3's table for its sliding layers (another base).
    rope_local: Option<RopeTables>,
    dtype: DType,
    device: Device,
    /// The KV cache's dtype where it differs from the compute dtype (`--kv-cache f16` on the CPU).
    kv_dtype: Option<DType>,
}

impl Decoder {
    /// Builds the decoder from `weights` (tensor names as in transformers).
    pub fn load(cfg: ModelConfig, w: &Weights, max_positions: usize) -> Result<Self, EngineError> {
        let h = cfg.hidden_size;
        let names = Names::of(cfg.arch);
        let embed_name = format!("{}.weight", names.embed);
        let (embed, embed_dims) = if w.device.is_cpu() {
            let p = w.packed(&embed_name)?;
            let dims = vec![p.rows, p.cols];
            (Embedding::Packed(p), dims)
        } else {
            let t = w.dense(&embed_name)?;
            let dims = t.dims().to_vec();
            (Embedding::Dense(t), dims)
        };
        if embed_dims != [cfg.vocab_size, h] {
            return Err(EngineError::Config(format!(
                "{embed_name} has shape {embed_dims:?}, expected [{}, {h}] from vocab_size and hidden_size",
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
            .map(|i| Self::load_layer(&cfg, w, &names, i))
            .collect::<Result<Vec<_>, _>>()?;
        let lm_head = Self::load_head(&cfg, w, &names)?;
        let mut max_positions = max_positions.min(cfg.max_position_embeddings.max(1));
        // Long-rope models switch to their long factors past the original context (transformers recomputes the whole
        // sequence then); only the short factors are implemented, so the context stops at the original length.
        if let crate::config::RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        } = cfg.rope.scaling
        {
            let original = original_max_position_embeddings.max(1.0) as usize;
            if max_positions > original {
                tracing::info!(
                    original,
                    "long-rope model: the context is held to its original length (the long factors are not implemented)"
                );
                max_positions = original;
            }
        }
        let rope = RopeTables::new(&cfg, max_positions, w.dtype, &w.device)?;
        let rope_local = match cfg.quirks.local_rope_theta {
            Some(theta) => {
                let mut local = cfg.clone();
                local.rope.theta = theta;
                local.rope.scaling = crate::config::RopeScaling::None;
                Some(RopeTables::new(&local, max_positions, w.dtype, &w.device)?)
            }
            None => None,
        };
        Ok(Self {
            norm: Norm::load(w, names.final_norm, h, &cfg)?,
            embed,
            layers,
            lm_head,
            rope,
            rope_local,
            dtype: w.dtype,
            device: w.device.clone(),
            kv_dtype: None,
            cfg,
        })
    }

    /// The output projection as transformers 5 decides it: a stored head is used (with a warning when the
    /// config says the head is tied to different embeddings), a tied model without one shares the embedding
    /// matrix (not copied), and an untied model without one is refused.
    fn load_head(cfg: &ModelConfig, w: &Weights, names: &Names) -> Result<Linear, EngineError> {
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let head = format!("{}.weight", names.lm_head);
        let embed = format!("{}.weight", names.embed);
        let bias = cfg.quirks.lm_head_bias;
        if w.contains(&head) {
            if cfg.tie_word_embeddings && !w.same_tensor(&head, &embed)? {
                tracing::warn!(
                    file = %w.origin_path().display(),
                    "config.json says tie_word_embeddings, but the weights hold an {head} that differs from \
                     {embed}; using the stored head, as transformers 5 does"
                );
            }
            return w.linear(names.lm_head, vocab, h, bias);
        }
        if !cfg.tie_word_embeddings {
            return Err(EngineError::file(
                w.origin_path(),
                format!(
                    "tensor {head:?} is missing and config.json says the head is not tied to the embeddings \
                     (tie_word_embeddings: false): the checkpoint is incomplete, or the config should say true"
                ),
            ));
        }
        if bias {
            return Err(w.missing_tensor(&format!("{}.bias", names.lm_head)));
        }
        w.linear(names.embed, vocab, h, false)
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

    /// The projection at a transformers module path (`model.layers.3.self_attn.q_proj`, `lm_head`): the
    /// [`Linear`] that computes it, the first of its output rows there and their count (q, k and v may share one
    /// stacked matrix, as may gate and up). `None` for a path that names no projection of this model.
    pub fn projection_mut(&mut self, path: &str) -> Option<(&mut Linear, usize, usize)> {
        let names = Names::of(self.cfg.arch);
        if path == names.lm_head {
            let rows = self.lm_head.out_dim();
            return Some((&mut self.lm_head, 0, rows));
        }
        let rest = path.strip_prefix(names.layers)?.strip_prefix('.')?;
        let (index, module) = rest.split_once('.')?;
        let layer = self.layers.get_mut(index.parse::<usize>().ok()?)?;
        let cfg = &self.cfg;
        if let Some(name) = module
            .strip_prefix(names.attn)
            .and_then(|m| m.strip_prefix('.'))
        {
            let (q, kv) = (
                cfg.num_heads * cfg.head_dim,
                cfg.num_kv_heads * cfg.head_dim,
            );
            let attn = &mut layer.attn;
            if name == names.o {
                let rows = attn.o.out_dim();
                return Some((&mut attn.o, 0, rows));
            }
            return match (&mut attn.proj, name) {
                (Projections::Separate { q: l, .. }, "q_proj") => Some((l, 0, q)),
                (Projections::Separate { k: l, .. }, "k_proj") => Some((l, 0, kv)),
                (Projections::Separate { v: l, .. }, "v_proj") => Some((l, 0, kv)),
                (Projections::Fused(l), "q_proj") => Some((l, 0, q)),
                (Projections::Fused(l), "k_proj") => Some((l, q, kv)),
                (Projections::Fused(l), "v_proj") => Some((l, q + kv, kv)),
                (Projections::Fused(l), "qkv_proj") if cfg.arch == Arch::Phi3 => {
                    let rows = l.out_dim();
                    Some((l, 0, rows))
                }
                _ => None,
            };
        }
        layer.ffn.projection_mut(module)
    }

    /// Replaces the embedding matrix (a LoRA adapter's `modules_to_save`); the head keeps what it had.
    pub fn replace_embedding(&mut self, w: &Weights, name: &str) -> Result<(), EngineError> {
        let (vocab, h) = (self.cfg.vocab_size, self.cfg.hidden_size);
        let (embed, dims) = if w.device.is_cpu() {
            let p = w.packed(name)?;
            let dims = vec![p.rows, p.cols];
            (Embedding::Packed(p), dims)
        } else {
            let t = w.dense(name)?;
            let dims = t.dims().to_vec();
            (Embedding::Dense(t), dims)
        };
        if dims != [vocab, h] {
            return Err(EngineError::file(
                w.origin_path(),
                format!("tensor {name:?} has shape {dims:?}, but the base model's embeddings are [{vocab}, {h}]"),
            ));
        }
        self.embed = embed;
        Ok(())
    }

    /// Replaces the output projection (a LoRA adapter's `modules_to_save`).
    pub fn replace_head(&mut self, w: &Weights, prefix: &str) -> Result<(), EngineError> {
        let (vocab, h) = (self.cfg.vocab_size, self.cfg.hidden_size);
        self.lm_head = w.linear(prefix, vocab, h, self.cfg.quirks.lm_head_bias)?;
        Ok(())
    }

    /// Transformers' names of the embedding matrix and the head (without `.weight`).
    pub fn embedding_and_head_names(&self) -> (&'static str, &'static str) {
        let n = Names::of(self.cfg.arch);
        (n.embed, n.lm_head)
    }

    fn load_attention(
        cfg: &ModelConfig,
        w: &Weights,
        p: &str,
        i: usize,
    ) -> Result<Attention, EngineError> {
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        let b = cfg.attention_bias;
        let proj = match cfg.arch {
            Arch::Phi3 => Projections::Fused(w.linear(
                &format!("{p}.qkv_proj"),
                (nh + 2 * nkv) * hd,
                h,
                false,
            )?),
            // GPT-NeoX interleaves each head's q, k and v rows; llama.cpp's converter reorders them to q, k, v.
            Arch::GptNeoX => {
                let qkv = w.linear(&format!("{p}.query_key_value"), 3 * nh * hd, h, b)?;
                if w.is_gguf() {
                    Projections::Fused(qkv)
                } else {
                    Projections::PerHead(qkv)
                }
            }
            _ => {
                let (q, k, v) = (
                    format!("{p}.q_proj"),
                    format!("{p}.k_proj"),
                    format!("{p}.v_proj"),
                );
                match w.stacked_linear(&[(&q, nh * hd), (&k, nkv * hd), (&v, nkv * hd)], h, b)? {
                    Some(qkv) => Projections::Fused(qkv),
                    None => Projections::Separate {
                        q: w.linear(&q, nh * hd, h, b)?,
                        k: w.linear(&k, nkv * hd, h, b)?,
                        v: w.linear(&v, nkv * hd, h, b)?,
                    },
                }
            }
        };
        let qk = |kind: fn(Norm, Norm) -> QkNorm| -> Result<QkNorm, EngineError> {
            Ok(kind(
                Norm::load_qk(w, &format!("{p}.q_norm"), cfg)?,
                Norm::load_qk(w, &format!("{p}.k_norm"), cfg)?,
            ))
        };
        let qk_norm = match cfg.arch {
            Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3 => qk(QkNorm::PerHead)?,
            Arch::Olmo2 => qk(QkNorm::Full)?,
            _ => QkNorm::None,
        };
        let o_name = format!("{p}.{}", Names::of(cfg.arch).o);
        Ok(Attention {
            proj,
            o: w.linear(&o_name, h, nh * hd, cfg.quirks.attention_out_bias)?,
            qk_norm,
            window: cfg.layer_windows.get(i).copied().flatten(),
            rope: cfg.layer_rope(i),
        })
    }

    fn load_ffn(cfg: &ModelConfig, w: &Weights, p: &str, i: usize) -> Result<Ffn, EngineError> {
        let (h, inter, act, bias) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.activation,
            cfg.mlp_bias,
        );
        if let Some(moe) = cfg
            .quirks
            .moe
            .as_ref()
            .filter(|m| m.sparse_layers.get(i).copied().unwrap_or(true))
        {
            let mixtral = cfg.arch == Arch::Mixtral;
            let prefix = if mixtral {
                format!("{p}.block_sparse_moe")
            } else {
                format!("{p}.mlp")
            };
            return Ok(Ffn::Moe(crate::mlp::load_moe(
                w, &prefix, moe, h, act, mixtral,
            )?));
        }
        let plain = |up: &str, down: &str| -> Result<Ffn, EngineError> {
            Ok(Ffn::Plain(Plain {
                up: w.linear(&format!("{p}.{up}"), inter, h, bias)?,
                down: w.linear(&format!("{p}.{down}"), h, inter, bias)?,
                act,
            }))
        };
        match cfg.arch {
            Arch::Phi => plain("mlp.fc1", "mlp.fc2"),
            Arch::GptNeoX => plain("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
            _ => Ok(Ffn::Gated(Gated::load(
                w,
                &format!("{p}.mlp"),
                &GatedNames {
                    gate: "gate_proj",
                    up: "up_proj",
                    down: "down_proj",
                },
                (cfg.arch == Arch::Phi3).then_some("gate_up_proj"),
                (h, inter),
                bias,
                act,
            )?)),
        }
    }

    fn load_layer(
        cfg: &ModelConfig,
        w: &Weights,
        names: &Names,
        i: usize,
    ) -> Result<Layer, EngineError> {
        let p = format!("{}.{i}", names.layers);
        let attn = Self::load_attention(cfg, w, &format!("{p}.{}", names.attn), i)?;
        let ffn = Self::load_ffn(cfg, w, &p, i)?;
        let h = cfg.hidden_size;
        let norm = |n: &str| Norm::load(w, &format!("{p}.{n}"), h, cfg);
        let layer = match cfg.arch {
            Arch::Gemma2 | Arch::Gemma3 => Layer {
                attn,
                ffn,
                input_norm: Some(norm("input_layernorm")?),
                post_attn_norm: Some(norm("post_attention_layernorm")?),
                pre_mlp_norm: Some(norm("pre_feedforward_layernorm")?),
                post_mlp_norm: Some(norm("post_feedforward_layernorm")?),
            },
            Arch::Olmo2 => Layer {
                attn,
                ffn,
                input_norm: None,
                post_attn_norm: Some(norm("post_attention_layernorm")?),
                pre_mlp_norm: None,
                post_mlp_norm: Some(norm("post_feedforward_layernorm")?),
            },
            // Attention and MLP both read the one input norm.
            Arch::Phi | Arch::Cohere => Layer {
                attn,
                ffn,
                input_norm: Some(norm("input_layernorm")?),
                post_attn_norm: None,
                pre_mlp_norm: None,
                post_mlp_norm: None,
            },
            _ => Layer {
                attn,
                ffn,
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
        let global = self.rope.gather(&positions)?;
        let local = match &self.rope_local {
            Some(r) => Some(r.gather(&positions)?),
            None => None,
        };
        let step = Step {
            global,
            local,
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
        if let Some(s) = self.cfg.quirks.embedding_multiplier {
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
        if let Some(m) = self.cfg.quirks.logits_multiplier {
            logits = (logits * m)?;
        }
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
        let mut a = self.attention(&layer.attn, &h, kv, step)?;
        if self.cfg.quirks.parallel_residual {
            // One residual for both blocks; the MLP reads its own norm of it where the model has one (NeoX).
            let m_in = match &layer.pre_mlp_norm {
                Some(n) => n.forward(x)?,
                None => h,
            };
            let m = layer.ffn.forward(&m_in)?;
            return (a + m)? + x;
        }
        if let Some(n) = &layer.post_attn_norm {
            a = n.forward(&a)?;
        }
        let x = (x + self.residual(a)?)?;
        let h = match &layer.pre_mlp_norm {
            Some(n) => n.forward(&x)?,
            None => x.clone(),
        };
        let mut m = layer.ffn.forward(&h)?;
        if let Some(n) = &layer.post_mlp_norm {
            m = n.forward(&m)?;
        }
        x + self.residual(m)?
    }

    /// A block's output as it joins the residual stream (Granite scales it).
    fn residual(&self, h: Tensor) -> candle_core::Result<Tensor> {
        match self.cfg.quirks.residual_multiplier {
            Some(m) => h * m,
            None => Ok(h),
        }
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
        let (q, k, v) = match &attn.proj {
            Projections::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Projections::Fused(p) => {
                let qkv = p.forward(x)?;
                (
                    qkv.narrow(D::Minus1, 0, nh * hd)?,
                    qkv.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    qkv.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
            Projections::PerHead(p) => {
                let qkv = p.forward(x)?.reshape((b, t, nh, 3 * hd))?;
                let part = |i: usize| -> candle_core::Result<Tensor> {
                    qkv.narrow(D::Minus1, i * hd, hd)?
                        .contiguous()?
                        .reshape((b, t, nh * hd))
                };
                (part(0)?, part(1)?, part(2)?)
            }
        };
        let (q, k, v) = match cfg.quirks.clip_qkv {
            Some(c) => (q.clamp(-c, c)?, k.clamp(-c, c)?, v.clamp(-c, c)?),
            None => (q, k, v),
        };
        let (mut q, mut k) = (q, k);
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
        let q = self.apply_rope(&q.transpose(1, 2)?.contiguous()?, attn.rope, step)?;
        let k = self.apply_rope(&k.transpose(1, 2)?.contiguous()?, attn.rope, step)?;
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

    fn apply_rope(&self, x: &Tensor, which: LayerRope, step: &Step) -> candle_core::Result<Tensor> {
        let (cos, sin) = match (which, &step.local) {
            (LayerRope::None, _) => return Ok(x.clone()),
            (LayerRope::Local, Some(local)) => (&local.0, &local.1),
            _ => (&step.global.0, &step.global.1),
        };
        let rope = |x: &Tensor| {
            if self.cfg.quirks.rope_interleaved {
                candle_nn::rotary_emb::rope_i(x, cos, sin)
            } else {
                candle_nn::rotary_emb::rope(x, cos, sin)
            }
        };
        let rot = self.cfg.rotary_dim();
        let hd = self.cfg.head_dim;
        if rot == hd {
            return rope(x);
        }
        // Partial rotary: the first `rot` dims of each head turn, the rest pass through. `cat` along the last
        // dim yields a strided tensor; the KV cache needs it contiguous.
        let rotated = rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?)?;
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rot, hd - rot)?], D::Minus1)?.contiguous()
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
    /// cos and sin of the global table.
    global: (Tensor, Tensor),
    /// Of Gemma 3's local table.
    local: Option<(Tensor, Tensor)>,
    masks: Masks,
}
