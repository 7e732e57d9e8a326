//! Projections: `y = x Wᵀ (+ b)` as candle computes it on a GPU or our packed kernels on the CPU, and a shared
//! base projection with LoRA updates on some of its output rows (peft's unmerged adapter).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

use crate::kernels::PackedMatrix;

/// A projection `y = x W^T (+ b)`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// candle's matmul in the compute dtype (GPU).
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// candle's quantized matmul (GPU).
    Quant {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
    /// Our CPU kernels: any weight format, float32 activations.
    Packed {
        weight: Arc<PackedMatrix>,
        bias: Option<Tensor>,
    },
    /// A shared base projection plus low-rank updates on some of its output rows (peft's unmerged LoRA).
    Lora {
        base: Box<Linear>,
        parts: Vec<LoraPart>,
    },
}

/// One LoRA update: `scale · (x Aᵀ) Bᵀ` added to output rows `offset..offset + out` of its projection.
#[derive(Debug, Clone)]
pub struct LoraPart {
    factors: Factors,
    pub scale: f64,
    pub offset: usize,
}

/// A LoRA update's factors where its projection computes.
#[derive(Debug, Clone)]
enum Factors {
    /// CPU: A (`[r, in]`) and B transposed (`[r, out]`) as float32 rows, applied beside the packed base with no
    /// tensor op per token (each of Bᵀ's rows is one contiguous multiply-add into the output).
    Host {
        a: Arc<Vec<f32>>,
        bt: Arc<Vec<f32>>,
        rank: usize,
    },
    /// GPU: A `[r, in]` and B `[out, r]` as tensors.
    Device { a: Tensor, b: Tensor },
}

impl LoraPart {
    pub fn new(a: Tensor, b: Tensor, scale: f64, offset: usize) -> candle_core::Result<Self> {
        let factors = if a.device().is_cpu() {
            let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Factors::Host {
                rank: a.dim(0)?,
                a: Arc::new(flat(&a)?),
                bt: Arc::new(flat(&b.t()?.contiguous()?)?),
            }
        } else {
            Factors::Device { a, b }
        };
        Ok(Self {
            factors,
            scale,
            offset,
        })
    }

    /// Output rows it updates.
    fn rows(&self) -> candle_core::Result<usize> {
        match &self.factors {
            Factors::Host { bt, rank, .. } => Ok(bt.len() / (*rank).max(1)),
            Factors::Device { b, .. } => b.dim(0),
        }
    }

    /// The factors as tensors on `device` (the general path).
    fn tensors(&self, device: &candle_core::Device) -> candle_core::Result<(Tensor, Tensor)> {
        match &self.factors {
            Factors::Device { a, b } => Ok((a.clone(), b.clone())),
            Factors::Host { a, bt, rank } => {
                let a = Tensor::from_slice(a, (*rank, a.len() / (*rank).max(1)), device)?;
                let b = Tensor::from_slice(bt, (*rank, bt.len() / (*rank).max(1)), device)?
                    .t()?
                    .contiguous()?;
                Ok((a, b))
            }
        }
    }
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
    // Eight lanes, summed at the end: vectorizes, and the order is fixed whatever the batch.
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The CPU path of a LoRA projection over a packed base: the base product into the output buffer, each update
/// added to its rows in place, with no tensor op per update (a decoding step has hundreds of them).
fn lora_packed(
    weight: &PackedMatrix,
    bias: Option<&Tensor>,
    parts: &[LoraPart],
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let total = weight.rows;
    let mut out = vec![0f32; rows * total];
    weight.matmul(&xv, rows, &mut out);
    for p in parts {
        let Factors::Host { a, bt, rank: r } = &p.factors else {
            unreachable!("checked by the caller")
        };
        let (r, n) = (*r, bt.len() / (*r).max(1));
        let scale = p.scale as f32;
        for row in 0..rows {
            let xr = &xv[row * k..(row + 1) * k];
            let o = &mut out[row * total + p.offset..row * total + p.offset + n];
            for i in 0..r {
                let c = scale * dot(&a[i * k..(i + 1) * k], xr);
                for (oj, bj) in o.iter_mut().zip(&bt[i * n..(i + 1) * n]) {
                    *oj += c * bj;
                }
            }
        }
    }
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = total;
    let y = Tensor::from_vec(out, out_dims, x.device())?.to_dtype(x.dtype())?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

impl Linear {
    /// Output features (rows of the weight).
    pub fn out_dim(&self) -> usize {
        match self {
            Linear::Dense { weight, .. } => weight.dims().first().copied().unwrap_or(0),
            Linear::Quant { weight, .. } => match weight {
                QMatMul::QTensor(q) => q.shape().dims().first().copied().unwrap_or(0),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                    t.dims().first().copied().unwrap_or(0)
                }
            },
            Linear::Packed { weight, .. } => weight.rows,
            Linear::Lora { base, .. } => base.out_dim(),
        }
    }

    /// Input features (columns of the weight).
    pub fn in_dim(&self) -> usize {
        match self {
            Linear::Dense { weight, .. } => weight.dims().get(1).copied().unwrap_or(0),
            Linear::Quant { weight, .. } => match weight {
                QMatMul::QTensor(q) => q.shape().dims().get(1).copied().unwrap_or(0),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims().get(1).copied().unwrap_or(0),
            },
            Linear::Packed { weight, .. } => weight.cols,
            Linear::Lora { base, .. } => base.in_dim(),
        }
    }

    /// This projection with `part` added (on top of any it has).
    pub fn with_lora(self, part: LoraPart) -> Linear {
        match self {
            Linear::Lora { base, mut parts } => {
                parts.push(part);
                Linear::Lora { base, parts }
            }
            other => Linear::Lora {
                base: Box::new(other),
                parts: vec![part],
            },
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Linear::Lora { base, parts } = self {
            return lora_forward(base, parts, x);
        }
        let y = match self {
            Linear::Lora { .. } => unreachable!("handled above"),
            Linear::Dense { weight, .. } => {
                let dims = x.dims().to_vec();
                let k = dims[dims.len() - 1];
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let y = x.reshape((rows, k))?.matmul(&weight.t()?)?;
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = weight.dim(0)?;
                y.reshape(out_dims)?
            }
            Linear::Quant { weight, .. } => weight.forward(x)?,
            Linear::Packed { weight, .. } => {
                let dims = x.dims().to_vec();
                let k = dims[dims.len() - 1];
                let rows = x.elem_count() / k.max(1);
                let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; rows * weight.rows];
                weight.matmul(&xv, rows, &mut out);
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = weight.rows;
                Tensor::from_vec(out, out_dims, x.device())?.to_dtype(x.dtype())?
            }
        };
        match self.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn bias(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense { bias, .. }
            | Linear::Quant { bias, .. }
            | Linear::Packed { bias, .. } => bias.as_ref(),
            Linear::Lora { .. } => None,
        }
    }
}

/// `base(x) + Σ scale · (x Aᵀ) Bᵀ`, each update on its rows, computed as peft computes the unmerged adapter.
fn lora_forward(base: &Linear, parts: &[LoraPart], x: &Tensor) -> candle_core::Result<Tensor> {
    if let Linear::Packed { weight, bias } = base {
        if parts
            .iter()
            .all(|p| matches!(p.factors, Factors::Host { .. }))
        {
            return lora_packed(weight, bias.as_ref(), parts, x);
        }
    }
    let mut y = base.forward(x)?;
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let total = base.out_dim();
    for p in parts {
        let (a, b) = p.tensors(x.device())?;
        let x2 = x.reshape((rows, k))?.to_dtype(a.dtype())?;
        let out = p.rows()?;
        let d = ((x2.matmul(&a.t()?)?.matmul(&b.t()?)?) * p.scale)?.to_dtype(y.dtype())?;
        let d = if out == total {
            d
        } else {
            let mut pieces = Vec::with_capacity(3);
            if p.offset > 0 {
                pieces.push(Tensor::zeros((rows, p.offset), d.dtype(), d.device())?);
            }
            pieces.push(d);
            let after = total - p.offset - out;
            if after > 0 {
                pieces.push(Tensor::zeros((rows, after), y.dtype(), y.device())?);
            }
            Tensor::cat(&pieces, 1)?
        };
        let mut out_dims = dims.clone();
        *out_dims.last_mut().unwrap() = total;
        y = (y + d.reshape(out_dims)?)?;
    }
    Ok(y)
}
