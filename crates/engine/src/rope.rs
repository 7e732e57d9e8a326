//! Rotary position embeddings: inverse frequencies (with the scaling variants of transformers'
//! `ROPE_INIT_FUNCTIONS`) and the cos/sin tables the decoder gathers per position.
//!
//! The layout is the Hugging Face one ("rotate half"): a head's first and second halves of the rotated dims form
//! the pairs. GGUF llama files permute Q/K rows for llama.cpp's interleaved layout; the GGUF loader undoes that,
//! so this single layout serves both formats.

use candle_core::{DType, Device, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies for `rotary_dim` dims and the factor by which cos/sin are scaled.
pub fn inv_freq(cfg: &ModelConfig) -> (Vec<f64>, f64) {
    let dim = cfg.rotary_dim();
    let base = cfg.rope.theta;
    let plain: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
        .collect();
    match &cfg.rope.scaling {
        RopeScaling::None => (plain, 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            let out = plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (out, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attn = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                (Some(m), Some(ma)) => get_mscale(*factor, *m) / get_mscale(*factor, *ma),
                _ => get_mscale(*factor, 1.0),
            });
            let d = dim as f64;
            let correction = |rot: f64| {
                d * (original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0);
            let high = high.min(d - 1.0);
            let span = if (high - low).abs() < f64::EPSILON {
                0.001
            } else {
                high - low
            };
            let out = plain
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    (f / factor) * (1.0 - extrapolation) + f * extrapolation
                })
                .collect();
            (out, attn)
        }
        RopeScaling::Divisors(d) => {
            let out = plain
                .iter()
                .enumerate()
                .map(|(i, f)| f / d.get(i).copied().unwrap_or(1.0))
                .collect();
            (out, 1.0)
        }
        RopeScaling::LongRope {
            short_factor,
            original_max_position_embeddings,
            attention_factor,
            ..
        } => {
            // Contexts up to the original length use the short factors; vibecheck caps the context there.
            let scale = cfg.max_position_embeddings as f64 / original_max_position_embeddings;
            let attn = attention_factor.unwrap_or(if scale <= 1.0 {
                1.0
            } else {
                (1.0 + scale.ln() / original_max_position_embeddings.ln()).sqrt()
            });
            let out = plain
                .iter()
                .enumerate()
                .map(|(i, &f)| f / short_factor.get(i).copied().unwrap_or(1.0))
                .collect();
            (out, attn)
        }
    }
}

/// Precomputed cos/sin tables of shape `[max_positions, rotary_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub max_positions: usize,
}

impl RopeTables {
    pub fn new(
        cfg: &ModelConfig,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (freqs, scale) = inv_freq(cfg);
        let half = freqs.len();
        // transformers computes these products in float32; so do we, to match it to the last bits.
        let freqs32: Vec<f32> = freqs.iter().map(|&f| f as f32).collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &freqs32 {
                let angle = p as f32 * f;
                cos.push(angle.cos() * scale as f32);
                sin.push(angle.sin() * scale as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(Self {
            cos,
            sin,
            max_positions,
        })
    }

    /// cos/sin rows for per-sequence positions `[B][T]` as `[B, T, half]` tensors (or `[T, half]` when every
    /// sequence shares the same run of positions).
    pub fn gather(&self, positions: &[Vec<u32>]) -> candle_core::Result<(Tensor, Tensor)> {
        let first = &positions[0];
        let contiguous = first.windows(2).all(|w| w[1] == w[0] + 1);
        if contiguous && positions.iter().all(|p| p == first) {
            let start = first[0] as usize;
            return Ok((
                self.cos.narrow(0, start, first.len())?,
                self.sin.narrow(0, start, first.len())?,
            ));
        }
        let (b, t) = (positions.len(), first.len());
        let flat: Vec<u32> = positions.iter().flatten().copied().collect();
        let idx = Tensor::from_vec(flat, b * t, self.cos.device())?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }
}
