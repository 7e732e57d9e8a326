//! Where tensors come from: memory-mapped safetensors shards or a GGUF file, behind one [`Weights`] type that
//! the decoder asks for tensors by their Hugging Face names.
//!
//! This is also the kernels' seam: a projection is a [`Linear`], either dense (candle's matmul in the compute
//! dtype) or quantized (ggml block formats through candle's quantized matmul). Faster kernels plug in here.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::kernels::{PackError, PackedMatrix};
use crate::EngineError;

/// A projection `y = x W^T (+ b)`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// candle's matmul in the compute dtype (GPU).
    Dense { weight: Tensor, bias: Option<Tensor> },
    /// candle's quantized matmul (GPU).
    Quant { weight: QMatMul, bias: Option<Tensor> },
    /// Our CPU kernels: any weight format, float32 activations.
    Packed { weight: Arc<PackedMatrix>, bias: Option<Tensor> },
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match self {
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
            Linear::Dense { bias, .. } | Linear::Quant { bias, .. } | Linear::Packed { bias, .. } => bias.as_ref(),
        }
    }

    pub fn out_dim(&self) -> candle_core::Result<usize> {
        match self {
            Linear::Dense { weight, .. } => weight.dim(0),
            Linear::Quant {
                weight: QMatMul::QTensor(q),
                ..
            } => q.shape().dim(0),
            Linear::Quant {
                weight: QMatMul::Tensor(t) | QMatMul::TensorF16(t),
                ..
            } => t.dim(0),
            Linear::Packed { weight, .. } => Ok(weight.rows),
        }
    }
}

/// A tensor as stored: dense, or in a ggml block format.
pub enum Stored {
    Dense(Tensor),
    Quant(QTensor),
}

/// The tensors of a checkpoint, by Hugging Face name.
pub struct Weights {
    backend: Backend,
    pub dtype: DType,
    pub device: Device,
}

enum Backend {
    Safetensors {
        st: candle_core::safetensors::MmapedSafetensors,
        files: Vec<PathBuf>,
    },
    Gguf {
        content: gguf_file::Content,
        path: PathBuf,
        heads: usize,
        kv_heads: usize,
    },
}

impl Weights {
    /// Memory-maps safetensors files (already validated by `vibecheck_checkpoint::shard_files`).
    pub fn from_safetensors(
        files: Vec<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EngineError> {
        // SAFETY: memory-mapping is how every safetensors loader works; the headers were validated against the
        // file sizes just before. A file truncated after this point is the one hazard mmap cannot guard against.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::file(&files[0], format!("cannot map safetensors: {e}")))?;
        Ok(Self {
            backend: Backend::Safetensors { st, files },
            dtype,
            device: device.clone(),
        })
    }

    pub fn from_gguf(
        content: gguf_file::Content,
        path: &Path,
        heads: usize,
        kv_heads: usize,
        device: &Device,
    ) -> Self {
        Self {
            backend: Backend::Gguf {
                content,
                path: path.to_path_buf(),
                heads,
                kv_heads,
            },
            dtype: DType::F32,
            device: device.clone(),
        }
    }

    fn origin(&self) -> &Path {
        match &self.backend {
            Backend::Safetensors { files, .. } => &files[0],
            Backend::Gguf { path, .. } => path,
        }
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        match &self.backend {
            Backend::Safetensors { st, .. } => st.get(hf_name).is_ok(),
            Backend::Gguf { content, .. } => {
                gguf_name(hf_name).is_some_and(|n| content.tensor_infos.contains_key(&n))
            }
        }
    }

    fn missing(&self, name: &str) -> EngineError {
        EngineError::file(
            self.origin(),
            format!("tensor {name:?} is missing (is this checkpoint complete?)"),
        )
    }

    /// Loads a tensor as stored.
    pub fn stored(&self, hf_name: &str) -> Result<Stored, EngineError> {
        match &self.backend {
            Backend::Safetensors { st, files } => {
                if st.get(hf_name).is_err() {
                    return Err(self.missing(hf_name));
                }
                let t = st.load(hf_name, &self.device).map_err(|e| {
                    EngineError::file(&files[0], format!("tensor {hf_name:?}: {e}"))
                })?;
                Ok(Stored::Dense(t))
            }
            Backend::Gguf {
                content,
                path,
                heads,
                kv_heads,
            } => {
                let name = gguf_name(hf_name).ok_or_else(|| self.missing(hf_name))?;
                if !content.tensor_infos.contains_key(&name) {
                    return Err(self.missing(hf_name));
                }
                let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
                let q = content
                    .tensor(&mut file, &name, &self.device)
                    .map_err(|e| EngineError::file(path, format!("tensor {name:?}: {e}")))?;
                let permute_heads = if name.ends_with("attn_q.weight") {
                    Some(*heads)
                } else if name.ends_with("attn_k.weight") {
                    Some(*kv_heads)
                } else {
                    None
                };
                let q = match permute_heads {
                    Some(h) => unpermute_qk_rows(&q, h)
                        .map_err(|e| EngineError::file(path, format!("{name}: {e}")))?,
                    None => q,
                };
                Ok(match q.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Stored::Dense(q.dequantize(&self.device).map_err(EngineError::Candle)?)
                    }
                    _ => Stored::Quant(q),
                })
            }
        }
    }

    /// A dense tensor in the compute dtype (quantized ones are dequantized).
    pub fn dense(&self, hf_name: &str) -> Result<Tensor, EngineError> {
        let t = match self.stored(hf_name)? {
            Stored::Dense(t) => t,
            Stored::Quant(q) => q.dequantize(&self.device)?,
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A dense tensor in float32, whatever the compute dtype (norm weights are applied in float32).
    pub fn dense_f32(&self, hf_name: &str) -> Result<Tensor, EngineError> {
        Ok(self.dense(hf_name)?.to_dtype(DType::F32)?)
    }

    pub fn optional_dense(&self, hf_name: &str) -> Result<Option<Tensor>, EngineError> {
        if self.contains(hf_name) {
            self.dense(hf_name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A projection with its weight `[out, in]` checked against the expected shape.
    pub fn linear(
        &self,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Linear, EngineError> {
        let name = format!("{prefix}.weight");
        let bias = if bias {
            Some(self.dense(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        let stored = self.stored(&name)?;
        let dims = match &stored {
            Stored::Dense(t) => t.dims().to_vec(),
            Stored::Quant(q) => q.shape().dims().to_vec(),
        };
        if dims != [out_dim, in_dim] {
            return Err(EngineError::file(
                self.origin(),
                format!("tensor {name:?} has shape {dims:?}, but config.json implies [{out_dim}, {in_dim}]"),
            ));
        }
        let packed = |r: Result<PackedMatrix, PackError>| -> Result<Linear, EngineError> {
            let m = r.map_err(|e| EngineError::file(self.origin(), format!("tensor {name:?}: {e}")))?;
            Ok(Linear::Packed { weight: Arc::new(m), bias: bias.clone() })
        };
        if self.device.is_cpu() {
            return match stored {
                Stored::Dense(t) => packed(PackedMatrix::from_dense(&t)),
                Stored::Quant(q) => match PackedMatrix::from_qtensor(&q) {
                    Err(PackError::Unsupported(_)) => packed(PackedMatrix::from_dense(&q.dequantize(&self.device)?)),
                    other => packed(other),
                },
            };
        }
        Ok(match stored {
            Stored::Dense(t) => Linear::Dense { weight: t.to_dtype(self.dtype)?, bias },
            Stored::Quant(q) => Linear::Quant { weight: QMatMul::from_qtensor(q)?, bias },
        })
    }

    /// Every tensor name, for the GGUF converter and diagnostics.
    pub fn gguf_tensor_names(&self) -> Vec<String> {
        match &self.backend {
            Backend::Gguf { content, .. } => content.tensor_infos.keys().cloned().collect(),
            Backend::Safetensors { st, .. } => st.tensors().into_iter().map(|(n, _)| n).collect(),
        }
    }
}

/// Maps a Hugging Face llama tensor name to its GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{suffix}"))
}

/// Undoes llama.cpp's Q/K row permutation (GGUF stores each head's rotary pairs interleaved; Hugging Face
/// stores them as two halves). Each row of a ggml tensor is quantized on its own, so rows move as whole blocks.
pub fn unpermute_qk_rows(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let (rows, cols) = (dims[0], dims[1]);
    if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        candle_core::bail!("cannot un-permute {rows} rows into {heads} heads");
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    if data.len() != rows * row_bytes {
        candle_core::bail!(
            "unexpected data size {} for {rows}x{cols} {dtype:?}",
            data.len()
        );
    }
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for part in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + part * half + j;
                let gguf_row = h * head_dim + j * 2 + part;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&data[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), &q.device(), dtype)?;
    QTensor::new(storage, dims)
}

/// Reads a GGUF file's header, naming the file in any error.
pub fn read_gguf(path: &Path) -> Result<gguf_file::Content, EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    gguf_file::Content::read(&mut file)
        .map_err(|e| EngineError::file(path, format!("not a readable GGUF file: {e}")))
}
