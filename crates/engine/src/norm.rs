//! The normalizations of every supported architecture, computed in float32 as transformers does: RMSNorm (with
//! Gemma's `1 + w` folded into the weight) and LayerNorm with or without its weight and bias.

use candle_core::{DType, Tensor};

use crate::config::{ModelConfig, NormKind};
use crate::weights::Weights;
use crate::EngineError;

#[derive(Debug, Clone)]
enum Params {
    Rms(Tensor),
    Layer { weight: Tensor, bias: Tensor },
}

/// A norm with its parameters kept in float32.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    params: Params,
    eps: f32,
}

impl Norm {
    /// The model's norm of width `dim` at `name` (`{name}.weight`, `{name}.bias` as the kind has them).
    pub fn load(
        w: &Weights,
        name: &str,
        dim: usize,
        cfg: &ModelConfig,
    ) -> Result<Self, EngineError> {
        Self::load_kind(w, name, dim, cfg.quirks.norm, cfg.norm_eps)
    }

    /// The RMSNorm of a head's query or key (Qwen 3, OLMo 2, Gemma 3): Gemma's `1 + w` where the model has it.
    pub fn load_qk(w: &Weights, name: &str, cfg: &ModelConfig) -> Result<Self, EngineError> {
        let kind = match cfg.quirks.norm {
            NormKind::RmsPlusOne => NormKind::RmsPlusOne,
            _ => NormKind::Rms,
        };
        Self::load_kind(w, name, 0, kind, cfg.norm_eps)
    }

    fn load_kind(
        w: &Weights,
        name: &str,
        dim: usize,
        kind: NormKind,
        eps: f64,
    ) -> Result<Self, EngineError> {
        let weight = || w.dense_f32(&format!("{name}.weight"));
        let params = match kind {
            NormKind::Rms => Params::Rms(weight()?),
            NormKind::RmsPlusOne => Params::Rms((weight()? + 1.0)?),
            NormKind::LayerNorm {
                weight: has_weight,
                bias: has_bias,
            } => {
                let weight = if has_weight {
                    weight()?
                } else {
                    Tensor::ones(dim, DType::F32, &w.device)?
                };
                let bias = if has_bias {
                    w.dense_f32(&format!("{name}.bias"))?
                } else {
                    Tensor::zeros(weight.dims1()?, DType::F32, &w.device)?
                };
                Params::Layer { weight, bias }
            }
        };
        Ok(Self {
            params,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        match &self.params {
            Params::Rms(w) => candle_nn::ops::rms_norm(&x32, w, self.eps),
            Params::Layer { weight, bias } => {
                candle_nn::ops::layer_norm(&x32, weight, bias, self.eps)
            }
        }?
        .to_dtype(dtype)
    }
}
