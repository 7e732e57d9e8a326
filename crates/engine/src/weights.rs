//! Where tensors come from: safetensors shards or a GGUF file, behind one [`Weights`] type that the decoder asks
//! for tensors by their Hugging Face names. Tensor bytes are read (`pread`), never memory-mapped: a trainer that
//! re-saves a checkpoint in place can shrink a file while it loads, and a mapping would then kill the whole
//! process with SIGBUS where a read just comes up short ([`read_range`] reports "changed while loading").
//!
//! This is also the kernels' seam: a projection is a [`Linear`]. On the CPU it is a [`PackedMatrix`] for our
//! own kernels, packed straight from the file's bytes (ggml blocks repacked exactly, GGUF Q/K rows
//! un-permuted on the way) and shared between users (a tied `lm_head` reuses the embedding). On a GPU it is a
//! candle tensor or candle quantized matrix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::Arch;
use crate::gguf::names::{gguf_location, gguf_permute_heads, gguf_range, permuted, unpermute_rows};
use crate::kernels::{PackError, PackedMatrix, Quantize};
use crate::EngineError;

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

/// A tensor as stored: dense, or in a ggml block format (boxed: a `QTensor` is large on some targets).
pub enum Stored {
    Dense(Tensor),
    Quant(Box<QTensor>),
}

/// A GGUF tensor's format, dimensions (rows first) and bytes (Q/K rows un-permuted).
type GgufTensorBytes = (GgmlDType, Vec<usize>, Vec<u8>);

/// The tensors of a checkpoint, by Hugging Face name.
pub struct Weights {
    backend: Backend,
    /// Compute dtype of activations and dense GPU weights.
    pub dtype: DType,
    pub device: Device,
    packed: Mutex<HashMap<String, Arc<PackedMatrix>>>,
    /// Dense projection weights are rounded into this format as they are packed (CPU only).
    pub quantize: Option<Quantize>,
}

enum Backend {
    Safetensors {
        files: Vec<PathBuf>,
        /// The shards, open for reading each tensor ([`read_range`]).
        opened: Vec<std::fs::File>,
        /// Every tensor, from the shards' validated headers (a name in several shards is an error).
        tensors: HashMap<String, SafetensorsEntry>,
    },
    Gguf {
        content: gguf_file::Content,
        file: std::fs::File,
        /// The file's length when it was opened (every tensor range was checked against it).
        file_len: usize,
        path: PathBuf,
        heads: usize,
        kv_heads: usize,
        /// Decides the tensor names and whether Q/K rows were permuted.
        arch: Arch,
        /// The vocabulary (the embedding's rows): Gemma 3's converter cuts the embedding to the tokenizer's size
        /// but not the head, whose extra rows are dropped to match.
        vocab: usize,
    },
}

/// Where a safetensors tensor lies and what it holds.
struct SafetensorsEntry {
    shard: usize,
    /// Absolute byte offset in the shard.
    offset: u64,
    len: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

impl Weights {
    /// Reads the safetensors files' headers (already validated by `vibecheck_checkpoint::shard_files`); the
    /// tensors are read one by one as they load.
    pub fn from_safetensors(
        files: Vec<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let mut opened = Vec::with_capacity(files.len());
        let mut tensors: HashMap<String, SafetensorsEntry> = HashMap::new();
        for (shard, path) in files.iter().enumerate() {
            let header = vibecheck_checkpoint::weight_header(path)?;
            for t in header.tensors {
                let dtype = serde_json::from_value(serde_json::Value::String(t.dtype.clone()))
                    .map_err(|_| {
                        EngineError::file(
                            path,
                            format!("tensor {:?}: unknown dtype {:?}", t.name, t.dtype),
                        )
                    })?;
                let entry = SafetensorsEntry {
                    shard,
                    offset: header.data_start + t.begin,
                    len: (t.end - t.begin) as usize,
                    dtype,
                    shape: t.shape,
                };
                // A name in two shards is a fault of the checkpoint, not "the last one's".
                match tensors.entry(t.name) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        return Err(EngineError::file(
                            path,
                            format!(
                                "tensor {:?} is also in {}; a tensor must be in one shard only",
                                first.key(),
                                files[first.get().shard].display()
                            ),
                        ));
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(entry);
                    }
                }
            }
            opened.push(std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?);
        }
        Ok(Self {
            backend: Backend::Safetensors {
                files,
                opened,
                tensors,
            },
            dtype,
            device: device.clone(),
            packed: Default::default(),
            quantize: None,
        })
    }

    /// Opens a GGUF file whose header is `content`; every tensor's byte range is checked against the file.
    pub fn from_gguf(
        content: gguf_file::Content,
        path: &Path,
        (heads, kv_heads, arch, vocab): (usize, usize, Arch, usize),
        device: &Device,
    ) -> Result<Self, EngineError> {
        let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| EngineError::io(path, e))?.len() as usize;
        for (name, info) in &content.tensor_infos {
            gguf_range(&content, info, file_len)
                .map_err(|m| EngineError::file(path, format!("tensor {name:?}: {m}")))?;
        }
        Ok(Self {
            backend: Backend::Gguf {
                content,
                file,
                file_len,
                path: path.to_path_buf(),
                heads,
                kv_heads,
                arch,
                vocab,
            },
            dtype: DType::F32,
            device: device.clone(),
            packed: Default::default(),
            quantize: None,
        })
    }

    fn origin(&self) -> &Path {
        match &self.backend {
            Backend::Safetensors { files, .. } => &files[0],
            Backend::Gguf { path, .. } => path,
        }
    }

    /// Every tensor's name (safetensors files; a GGUF file's are its own convention's), sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.backend {
            Backend::Safetensors { tensors, .. } => tensors.keys().cloned().collect(),
            Backend::Gguf { content, .. } => content.tensor_infos.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    /// Whether the tensors come from a GGUF file (laid out as llama.cpp's converter left them).
    pub fn is_gguf(&self) -> bool {
        matches!(self.backend, Backend::Gguf { .. })
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        match &self.backend {
            Backend::Safetensors { tensors, .. } => tensors.contains_key(hf_name),
            Backend::Gguf { content, arch, .. } => gguf_location(hf_name, *arch)
                .is_some_and(|(n, _)| content.tensor_infos.contains_key(&n)),
        }
    }

    /// How many decoder layers the file holds: one past the highest layer index of any tensor name
    /// (`model.layers.N.` or GPT-NeoX's `gpt_neox.layers.N.` in safetensors, `blk.N.` in GGUF).
    pub fn layer_count(&self) -> usize {
        let index = |name: &str, prefix: &str| -> Option<usize> {
            name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
        };
        let highest = match &self.backend {
            Backend::Safetensors { tensors, .. } => tensors
                .keys()
                .filter_map(|n| index(n, "model.layers.").or_else(|| index(n, "gpt_neox.layers.")))
                .max(),
            Backend::Gguf { content, .. } => content
                .tensor_infos
                .keys()
                .filter_map(|n| index(n, "blk."))
                .max(),
        };
        highest.map_or(0, |h| h + 1)
    }

    /// The file the weights come from (the first shard of a folder).
    pub fn origin_path(&self) -> &Path {
        self.origin()
    }

    /// The error for a tensor the model needs and the file lacks.
    pub fn missing_tensor(&self, name: &str) -> EngineError {
        self.missing(name)
    }

    /// Whether two stored tensors hold the same dtype, shape and bytes (read a few MB at a time).
    pub fn same_tensor(&self, a: &str, b: &str) -> Result<bool, EngineError> {
        const PIECE: usize = 4 << 20;
        let compare = |file: &std::fs::File, (oa, ob): (u64, u64), len: usize| {
            for at in (0..len).step_by(PIECE) {
                let n = PIECE.min(len - at);
                let x = read_range(file, oa + at as u64, n).map_err(|m| self.bad(a, m))?;
                let y = read_range(file, ob + at as u64, n).map_err(|m| self.bad(b, m))?;
                if x != y {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        match &self.backend {
            Backend::Safetensors { opened, .. } => {
                let (ta, _) = self.safetensors_tensor(a)?;
                let (tb, _) = self.safetensors_tensor(b)?;
                if ta.dtype != tb.dtype || ta.shape != tb.shape || ta.len != tb.len {
                    return Ok(false);
                }
                if ta.shard != tb.shard {
                    let x = read_range(&opened[ta.shard], ta.offset, ta.len)
                        .map_err(|m| self.bad(a, m))?;
                    let y = read_range(&opened[tb.shard], tb.offset, tb.len)
                        .map_err(|m| self.bad(b, m))?;
                    return Ok(x == y);
                }
                compare(&opened[ta.shard], (ta.offset, tb.offset), ta.len)
            }
            Backend::Gguf { .. } => {
                let (da, sa, xa) = self.gguf_bytes(a)?;
                let (db, sb, xb) = self.gguf_bytes(b)?;
                Ok(da == db && sa == sb && xa == xb)
            }
        }
    }

    fn missing(&self, name: &str) -> EngineError {
        EngineError::file(
            self.origin(),
            format!("tensor {name:?} is missing (is this checkpoint complete?)"),
        )
    }

    fn bad(&self, name: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::file(self.origin(), format!("tensor {name:?}: {e}"))
    }

    /// A safetensors tensor's entry and the shard that holds it.
    fn safetensors_tensor(
        &self,
        hf_name: &str,
    ) -> Result<(&SafetensorsEntry, &std::fs::File), EngineError> {
        let Backend::Safetensors {
            opened, tensors, ..
        } = &self.backend
        else {
            unreachable!("only called for safetensors")
        };
        let t = tensors.get(hf_name).ok_or_else(|| self.missing(hf_name))?;
        Ok((t, &opened[t.shard]))
    }

    /// A GGUF tensor's info and (un-permuted) bytes; one expert's slice of a stacked expert tensor.
    fn gguf_bytes(&self, hf_name: &str) -> Result<GgufTensorBytes, EngineError> {
        let Backend::Gguf {
            content,
            file,
            file_len,
            heads,
            kv_heads,
            arch,
            vocab,
            ..
        } = &self.backend
        else {
            unreachable!("only called for GGUF")
        };
        let (name, expert) = gguf_location(hf_name, *arch).ok_or_else(|| self.missing(hf_name))?;
        let info = content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| self.missing(hf_name))?;
        let range = gguf_range(content, info, *file_len).map_err(|m| self.bad(&name, m))?;
        let mut dims = info.shape.dims().to_vec();
        let (start, len) = match expert {
            None if name == "output.weight"
                && dims.len() == 2
                && dims[0] > *vocab
                && *vocab > 0 =>
            {
                let row = range.len() / dims[0];
                dims[0] = *vocab;
                (range.start, row * *vocab)
            }
            None => (range.start, range.len()),
            Some(e) => {
                // Stacked experts: `[experts, rows, cols]`, each expert's matrix contiguous.
                let n = dims.first().copied().unwrap_or(0);
                if dims.len() != 3 || e >= n || !range.len().is_multiple_of(n) {
                    return Err(self.bad(
                        &name,
                        format!("has shape {dims:?}, which holds no expert {e} as a [experts, rows, cols] stack"),
                    ));
                }
                dims.remove(0);
                let per = range.len() / n;
                (range.start + e * per, per)
            }
        };
        let bytes = read_range(file, start as u64, len).map_err(|m| self.bad(&name, m))?;
        let permute = permuted(*arch)
            .then(|| gguf_permute_heads(&name, *heads, *kv_heads))
            .flatten();
        Ok(match permute {
            Some(h) => {
                let row_bytes = bytes.len() / dims[0].max(1);
                let permuted = unpermute_rows(&bytes, dims[0], row_bytes, h)
                    .map_err(|m| self.bad(&name, m))?;
                (info.ggml_dtype, dims, permuted)
            }
            None => (info.ggml_dtype, dims, bytes),
        })
    }

    /// A GGUF tensor as a candle ggml tensor (Q/K rows un-permuted).
    fn gguf_qtensor(&self, hf_name: &str) -> Result<QTensor, EngineError> {
        let (dtype, dims, bytes) = self.gguf_bytes(hf_name)?;
        candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &bytes, dims, &self.device)
            .map_err(|e| self.bad(hf_name, e))
    }

    /// Loads a tensor as stored.
    pub fn stored(&self, hf_name: &str) -> Result<Stored, EngineError> {
        match &self.backend {
            Backend::Safetensors { .. } => {
                let (t, file) = self.safetensors_tensor(hf_name)?;
                let bytes = read_range(file, t.offset, t.len).map_err(|m| self.bad(hf_name, m))?;
                let own = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &bytes)
                    .map_err(|e| self.bad(hf_name, format!("{e:?}")))?;
                let t = candle_core::safetensors::Load::load(&own, &self.device)
                    .map_err(|e| self.bad(hf_name, e))?;
                Ok(Stored::Dense(t))
            }
            Backend::Gguf { .. } => {
                let q = self.gguf_qtensor(hf_name)?;
                Ok(match q.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Stored::Dense(q.dequantize(&self.device)?)
                    }
                    _ => Stored::Quant(Box::new(q)),
                })
            }
        }
    }

    /// Bytes of every matrix packed so far (each shared matrix once).
    pub fn packed_bytes(&self) -> usize {
        let packed = self.packed.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        packed
            .values()
            .filter(|m| seen.insert(Arc::as_ptr(m)))
            .map(|m| m.bytes())
            .sum()
    }

    /// A matrix packed for the CPU kernels, built once per name and shared.
    pub fn packed(&self, hf_name: &str) -> Result<Arc<PackedMatrix>, EngineError> {
        if let Some(p) = self.packed.lock().unwrap().get(hf_name) {
            return Ok(p.clone());
        }
        let m = Arc::new(self.pack(hf_name)?);
        self.packed
            .lock()
            .unwrap()
            .insert(hf_name.to_string(), m.clone());
        Ok(m)
    }

    /// Packs one matrix (quantizing it on the way when asked), without caching it. A matrix holding NaN or
    /// infinite values is refused, naming it: its answers would be garbage, and the reason is worth knowing.
    fn pack(&self, hf_name: &str) -> Result<PackedMatrix, EngineError> {
        let m = self.pack_unchecked(hf_name)?;
        if m.has_non_finite() {
            return Err(self.bad(hf_name, NON_FINITE));
        }
        Ok(m)
    }

    fn pack_unchecked(&self, hf_name: &str) -> Result<PackedMatrix, EngineError> {
        match &self.backend {
            Backend::Safetensors { .. } => {
                let (t, file) = self.safetensors_tensor(hf_name)?;
                // The tensor's bytes a few MB at a time, each piece dropped once packed.
                const PIECE: usize = 4 << 20;
                let pieces = (0..t.len).step_by(PIECE).map(|at| {
                    read_range(file, t.offset + at as u64, PIECE.min(t.len - at))
                        .map_err(PackError::Read)
                });
                PackedMatrix::from_safetensors(t.dtype, &t.shape, t.len, pieces).map(|m| {
                    let kind = match self.quantize {
                        Some(q)
                            if hf_name.contains("embed_tokens")
                                || hf_name.starts_with("lm_head")
                                || hf_name.contains("embed_in")
                                || hf_name.starts_with("embed_out") =>
                        {
                            Some(q.for_embeddings())
                        }
                        other => other,
                    };
                    match kind.and_then(|k| m.quantized(k)) {
                        Some(q) => q,
                        None => m,
                    }
                })
            }
            Backend::Gguf { .. } => {
                let (dtype, dims, bytes) = self.gguf_bytes(hf_name)?;
                let packed = match PackedMatrix::from_ggml(dtype, &bytes, &dims) {
                    // No compact kernel for this format (Q8_1, Q8_K): exact float32 instead.
                    Err(PackError::Unsupported(_)) => PackedMatrix::from_dense(
                        &self.gguf_qtensor(hf_name)?.dequantize(&self.device)?,
                    ),
                    other => other,
                };
                drop(bytes);
                packed
            }
        }
        .map_err(|e| self.bad(hf_name, e))
    }

    /// A projection weight must be `[out_dim, in_dim]` as config.json implies.
    fn check_shape(
        &self,
        name: &str,
        dims: &[usize],
        out_dim: usize,
        in_dim: usize,
    ) -> Result<(), EngineError> {
        if dims != [out_dim, in_dim] {
            return Err(self.bad(
                name,
                format!("has shape {dims:?}, but config.json implies [{out_dim}, {in_dim}]"),
            ));
        }
        Ok(())
    }

    /// Projections that read the same input (q, k and v; gate and up) as one CPU matrix with their rows
    /// stacked in order, so a token needs one parallel pass over them instead of several (and its input is
    /// quantized once). `None` on a GPU, or when the parts are stored in different formats: then the caller
    /// loads them one by one. `parts` are (prefix, out_dim); every part has `in_dim` columns.
    pub fn stacked_linear(
        &self,
        parts: &[(&str, usize)],
        in_dim: usize,
        bias: bool,
    ) -> Result<Option<Linear>, EngineError> {
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let mut mats = Vec::with_capacity(parts.len());
        for (prefix, out_dim) in parts {
            let name = format!("{prefix}.weight");
            let m = self.pack(&name)?;
            self.check_shape(&name, &[m.rows, m.cols], *out_dim, in_dim)?;
            mats.push(m);
        }
        let Some(weight) = PackedMatrix::stack_rows(mats) else {
            return Ok(None);
        };
        let bias = if bias {
            let b = parts
                .iter()
                .map(|(prefix, _)| self.dense(&format!("{prefix}.bias")))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        let weight = Arc::new(weight);
        let key = parts.iter().map(|(p, _)| *p).collect::<Vec<_>>().join("+");
        self.packed.lock().unwrap().insert(key, weight.clone());
        Ok(Some(Linear::Packed { weight, bias }))
    }

    /// A dense tensor in the compute dtype (quantized ones are dequantized); NaN or infinite values are refused as
    /// in [`Weights::packed`]. Used for the small tensors (norms, biases) and for everything on a GPU.
    pub fn dense(&self, hf_name: &str) -> Result<Tensor, EngineError> {
        let t = match self.stored(hf_name)? {
            Stored::Dense(t) => t,
            Stored::Quant(q) => q.dequantize(&self.device)?,
        };
        // x − x is 0 for every finite x and NaN otherwise, so one sum says it (on any device, one number back).
        let t32 = t.to_dtype(DType::F32)?;
        let finite = t32.sub(&t32)?.sum_all()?.to_scalar::<f32>()?.is_finite();
        if !finite {
            return Err(self.bad(hf_name, NON_FINITE));
        }
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A dense tensor in float32, whatever the compute dtype (norm weights are applied in float32).
    pub fn dense_f32(&self, hf_name: &str) -> Result<Tensor, EngineError> {
        Ok(self.dense(hf_name)?.to_dtype(DType::F32)?)
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
        let check = |dims: &[usize]| self.check_shape(&name, dims, out_dim, in_dim);
        if self.device.is_cpu() {
            let weight = self.packed(&name)?;
            check(&[weight.rows, weight.cols])?;
            return Ok(Linear::Packed { weight, bias });
        }
        let stored = self.stored(&name)?;
        Ok(match stored {
            Stored::Dense(t) => {
                check(t.dims())?;
                Linear::Dense {
                    weight: t.to_dtype(self.dtype)?,
                    bias,
                }
            }
            Stored::Quant(q) => {
                check(q.shape().dims())?;
                Linear::Quant {
                    weight: QMatMul::from_qtensor(*q)?,
                    bias,
                }
            }
        })
    }
}

const NON_FINITE: &str =
    "holds NaN or infinite values (saved after a training step diverged?); this checkpoint \
                          cannot give meaningful answers";

/// `len` bytes of `file` from `offset`, read into memory. A read that comes up short means the file shrank after
/// its header was checked (a trainer re-saving the checkpoint in place): that is this checkpoint's error, worded so
/// the user knows to wait for the save to finish, where a memory mapping would have killed the process (SIGBUS).
pub(crate) fn read_range(file: &std::fs::File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| format!("cannot allocate {len} bytes to read it"))?;
    buf.resize(len, 0);
    read_exact_at(file, &mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!(
                "the file changed while loading: bytes {offset}..{} are no longer there (was the checkpoint \
                 re-saved meanwhile? it is read again once it stops changing)",
                offset + len as u64
            )
        } else {
            format!("cannot read bytes {offset}..{}: {e}", offset + len as u64)
        }
    })?;
    Ok(buf)
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}
