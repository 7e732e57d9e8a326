//! Where tensors come from: safetensors shards or a GGUF file, behind one [`Weights`] type that the decoder asks
//! for tensors by their Hugging Face names. Tensor bytes are read (`pread`), never memory-mapped: a trainer that
//! re-saves a checkpoint in place can shrink a file while it loads, and a mapping would then kill the whole
//! process with SIGBUS where a read just comes up short ([`read_range`] reports "changed while loading").
//!
//! This is also the kernels' seam: a projection is a [`Linear`] (`linear.rs`). On the CPU it is a
//! [`PackedMatrix`] for our own kernels, packed straight from the file's bytes (ggml blocks repacked exactly, GGUF Q/K rows
//! un-permuted on the way) and shared between users (a tied `lm_head` reuses the embedding). On a GPU it is a
//! candle tensor or candle quantized matrix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::Arch;
use crate::gguf::names::{gguf_location, gguf_permute_heads, gguf_range, permuted, unpermute_rows};
use crate::kernels::{PackError, PackedMatrix, Quantize};
pub use crate::linear::Linear;
use crate::EngineError;

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
