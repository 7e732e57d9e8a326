//! Repacking ggml blocks and dense tensors into the kernel formats, value for value.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use super::{Format, PackedMatrix, BLOCK};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("weights must be a 2-D matrix, got shape {0:?}")]
    NotMatrix(Vec<usize>),
    #[error("{0:?} has no kernel format here")]
    Unsupported(GgmlDType),
    #[error("weights of dtype {0} cannot be used for a projection (expected F32, BF16 or F16)")]
    Dtype(String),
    #[error("data has {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("cannot read the weights: {0}")]
    Read(String),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

fn u16s(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn f16(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The values as float16 bits, if every one of them is a float16 value.
fn halves(v: &[f32]) -> Option<Vec<u16>> {
    // Allocated exactly: collecting into `Option<Vec<_>>` knows no length and grows by doubling.
    let mut out = Vec::with_capacity(v.len());
    for &x in v {
        let h = half::f16::from_f32(x);
        if h.to_f32().to_bits() != x.to_bits() {
            return None;
        }
        out.push(h.to_bits());
    }
    Some(out)
}

/// The 6-bit scale and minimum of sub-block `j` in a K-quant superblock.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The sixteen 6-bit scales of a Q3_K superblock (stored with an offset of 32), unpacked from its 12 bytes.
fn q3k_scales(s: &[u8]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, high) = (word(0), word(1), word(2));
    let (low4, high2) = (0x0f0f_0f0fu32, 0x0303_0303u32);
    let words = [
        (a0 & low4) | ((high & high2) << 4),
        (a1 & low4) | (((high >> 2) & high2) << 4),
        ((a0 >> 4) & low4) | (((high >> 4) & high2) << 4),
        ((a1 >> 4) & low4) | (((high >> 6) & high2) << 4),
    ];
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Appends a Q4_K/Q5_K superblock's eight 6-bit scales, then its eight 6-bit minimums (`Format::Q4K`'s `sm`).
fn push_scales_mins(sm: &mut Vec<u8>, scales: &[u8]) {
    let pairs: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
    sm.extend(pairs.iter().map(|p| p.0));
    sm.extend(pairs.iter().map(|p| p.1));
}

/// Packs 32 four-bit values as the kernel expects: byte `i` holds value `i` (low) and value `i + 16` (high).
pub(super) fn push_q4(qs: &mut Vec<u8>, v: &[u8; 32]) {
    let mut packed = [0u8; 16];
    for (i, p) in packed.iter_mut().enumerate() {
        *p = v[i] | (v[i + 16] << 4);
    }
    qs.extend_from_slice(&packed);
}

impl PackedMatrix {
    /// Repacks a ggml tensor exactly; formats without a kernel here give [`PackError::Unsupported`].
    pub fn from_qtensor(q: &QTensor) -> Result<Self, PackError> {
        Self::from_ggml(q.dtype(), &q.data()?, q.shape().dims())
    }

    /// Repacks raw ggml data (`dims` as candle orders them: rows first).
    pub fn from_ggml(dtype: GgmlDType, data: &[u8], dims: &[usize]) -> Result<Self, PackError> {
        let [rows, cols] = dims[..] else {
            return Err(PackError::NotMatrix(dims.to_vec()));
        };
        let expected = rows * cols / dtype.block_size() * dtype.type_size();
        if data.len() != expected || cols % dtype.block_size() != 0 {
            return Err(PackError::Size {
                got: data.len(),
                expected,
            });
        }
        let blocks = rows * cols / BLOCK;
        let mut dm = Vec::with_capacity(blocks * 2);
        let format = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                let size = if dtype == GgmlDType::Q4_0 { 18 } else { 20 };
                let mut qs = Vec::with_capacity(blocks * 16);
                for b in data.chunks_exact(size) {
                    let d = f16(b, 0);
                    let (m, q) = if dtype == GgmlDType::Q4_0 {
                        (-8.0 * d, &b[2..18])
                    } else {
                        (f16(b, 2), &b[4..20])
                    };
                    dm.extend([d, m]);
                    qs.extend_from_slice(q);
                }
                Format::Q4 { qs, dm }
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let size = if dtype == GgmlDType::Q5_0 { 22 } else { 24 };
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                for b in data.chunks_exact(size) {
                    let d = f16(b, 0);
                    let (m, rest, bias) = if dtype == GgmlDType::Q5_0 {
                        (0.0, &b[2..], 16)
                    } else {
                        (f16(b, 2), &b[4..], 0)
                    };
                    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let ql = &rest[4..20];
                    let mut vals = [0i8; 32];
                    for j in 0..16 {
                        let x0 = (ql[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                        let x1 = (ql[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                        vals[j] = x0 as i8 - bias;
                        vals[j + 16] = x1 as i8 - bias;
                    }
                    dm.extend([d, m]);
                    qs.extend_from_slice(&vals);
                }
                Format::Q8 { qs, dm }
            }
            GgmlDType::Q8_0 => {
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                for b in data.chunks_exact(34) {
                    dm.extend([f16(b, 0), 0.0]);
                    qs.extend(b[2..34].iter().map(|&v| v as i8));
                }
                Format::Q8 { qs, dm }
            }
            GgmlDType::Q4K => {
                let mut qs = Vec::with_capacity(blocks * 16);
                let mut sm = Vec::with_capacity(blocks * 2);
                let mut d = Vec::with_capacity(blocks / 4);
                for b in data.chunks_exact(144) {
                    let (scales, q) = (&b[4..16], &b[16..144]);
                    d.extend([f16(b, 0), f16(b, 2)]);
                    push_scales_mins(&mut sm, scales);
                    for chunk in 0..4 {
                        let q = &q[chunk * 32..chunk * 32 + 32];
                        for shift in [0, 4] {
                            let mut v = [0u8; 32];
                            for l in 0..32 {
                                v[l] = (q[l] >> shift) & 0x0F;
                            }
                            push_q4(&mut qs, &v);
                        }
                    }
                }
                Format::Q4K { qs, sm, d }
            }
            GgmlDType::Q5K => {
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                let mut sm = Vec::with_capacity(blocks * 2);
                let mut d = Vec::with_capacity(blocks / 4);
                for b in data.chunks_exact(176) {
                    let (scales, qh, ql) = (&b[4..16], &b[16..48], &b[48..176]);
                    d.extend([f16(b, 0), f16(b, 2)]);
                    push_scales_mins(&mut sm, scales);
                    for chunk in 0..4 {
                        let ql = &ql[chunk * 32..chunk * 32 + 32];
                        for (half, shift) in [(0usize, 0u8), (1, 4)] {
                            let bit = 1u8 << (2 * chunk + half);
                            let mut run = [0i8; 32];
                            for ((v, &l), &h) in run.iter_mut().zip(ql).zip(qh) {
                                let high = if h & bit != 0 { 16 } else { 0 };
                                *v = (((l >> shift) & 0x0F) + high) as i8;
                            }
                            qs.extend_from_slice(&run);
                        }
                    }
                }
                Format::Q5K { qs, sm, d }
            }
            GgmlDType::Q6K => {
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                let mut scales = Vec::with_capacity(blocks * 2);
                let mut ds = Vec::with_capacity(blocks / 8);
                for b in data.chunks_exact(210) {
                    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16(b, 208));
                    // The sixteen scales are already in the order of the 16-weight runs below.
                    scales.extend(sc.iter().map(|&v| v as i8));
                    ds.push(d);
                    for half in 0..2 {
                        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                        // Run k of 32 takes its low four bits from `ql` (bytes 0–31 or 32–63, low or high
                        // nibble) and its top two from bits 2k of `qh`.
                        for k in 0..4 {
                            let (low, nibble) = (&ql[32 * (k % 2)..32 * (k % 2) + 32], 4 * (k / 2));
                            let mut run = [0i8; 32];
                            for ((v, &l), &h) in run.iter_mut().zip(low).zip(&qh[..32]) {
                                *v = (((l >> nibble) & 0xF) | (((h >> (2 * k)) & 3) << 4)) as i8
                                    - 32;
                            }
                            qs.extend_from_slice(&run);
                        }
                    }
                }
                Format::Q8X16 {
                    qs,
                    sc: scales,
                    d: ds,
                }
            }
            GgmlDType::Q3K => {
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                let mut sc = Vec::with_capacity(blocks * 2);
                let mut ds = Vec::with_capacity(blocks / 8);
                for b in data.chunks_exact(110) {
                    let (hmask, q, d) = (&b[..32], &b[32..96], f16(b, 108));
                    // Stored with an offset of 32; in the order of the 16-weight runs below.
                    sc.extend(q3k_scales(&b[96..108]).iter().map(|&v| v as i8 - 32));
                    ds.push(d);
                    for half in 0..2 {
                        let q = &q[32 * half..32 * half + 32];
                        for shift in 0..4 {
                            let chunk = 4 * half + shift;
                            let bit = 1u8 << chunk;
                            for i in 0..32 {
                                let low = ((q[i] >> (2 * shift)) & 3) as i8;
                                qs.push(low - if hmask[i] & bit == 0 { 4 } else { 0 });
                            }
                        }
                    }
                }
                Format::Q8X16 { qs, sc, d: ds }
            }
            GgmlDType::Q2K => {
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                let mut dm = Vec::with_capacity(blocks * 4);
                for b in data.chunks_exact(84) {
                    let (scales, q, d, dmin) = (&b[..16], &b[16..80], f16(b, 80), f16(b, 82));
                    for half in 0..2 {
                        let q = &q[32 * half..32 * half + 32];
                        for shift in 0..4 {
                            let chunk = 4 * half + shift;
                            for s in 0..2 {
                                let sc = scales[2 * chunk + s];
                                dm.extend([d * (sc & 0xF) as f32, -(dmin * (sc >> 4) as f32)]);
                            }
                            qs.extend(q.iter().map(|v| ((v >> (2 * shift)) & 3) as i8));
                        }
                    }
                }
                Format::Q8Sub { qs, dm }
            }
            GgmlDType::F32 => Format::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            GgmlDType::F16 => Format::F16(u16s(data)),
            GgmlDType::BF16 => Format::Bf16(u16s(data)),
            other => return Err(PackError::Unsupported(other)),
        };
        // Scales and offsets that float16 holds exactly (those of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, barring
        // overflow) are kept as float16: a sixth fewer bytes to read for a 4-bit block, a tenth for an 8-bit one.
        let format = match format {
            Format::Q4 { qs, dm } => match halves(&dm) {
                Some(dm) => Format::Q4H { qs, dm },
                None => Format::Q4 { qs, dm },
            },
            Format::Q8 { qs, dm } => match halves(&dm) {
                Some(dm) => Format::Q8H { qs, dm },
                None => Format::Q8 { qs, dm },
            },
            other => other,
        };
        Ok(Self { rows, cols, format })
    }

    /// Packs a safetensors tensor of `len` bytes from its bytes handed over in consecutive pieces (the loader maps
    /// a few MB of the file at a time and unmaps each piece once it is copied, so loading never holds a large
    /// tensor's file pages beside its packed copy). Every piece but the last holds whole elements.
    pub fn from_safetensors<P: std::ops::Deref<Target = [u8]>>(
        dtype: safetensors::Dtype,
        shape: &[usize],
        len: usize,
        pieces: impl IntoIterator<Item = Result<P, PackError>>,
    ) -> Result<Self, PackError> {
        let [rows, cols] = shape[..] else {
            return Err(PackError::NotMatrix(shape.to_vec()));
        };
        let width = match dtype {
            safetensors::Dtype::F32 => 4,
            safetensors::Dtype::BF16 | safetensors::Dtype::F16 => 2,
            other => return Err(PackError::Dtype(format!("{other:?}"))),
        };
        let expected = rows * cols * width;
        if len != expected {
            return Err(PackError::Size { got: len, expected });
        }
        let (mut words, mut floats) = (Vec::new(), Vec::new());
        if width == 4 {
            floats.reserve_exact(rows * cols);
        } else {
            words.reserve_exact(rows * cols);
        }
        let mut got = 0;
        for piece in pieces {
            let piece = piece?;
            if piece.len() % width != 0 {
                return Err(PackError::Read(format!(
                    "a piece of {} bytes is not whole {width}-byte elements",
                    piece.len()
                )));
            }
            got += piece.len();
            if got > expected {
                break;
            }
            if width == 4 {
                floats.extend(
                    piece
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
            } else {
                words.extend(
                    piece
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]])),
                );
            }
        }
        if got != expected {
            return Err(PackError::Size { got, expected });
        }
        let format = match dtype {
            safetensors::Dtype::F32 => Format::F32(floats),
            safetensors::Dtype::BF16 => Format::Bf16(words),
            _ => Format::F16(words),
        };
        Ok(Self { rows, cols, format })
    }

    /// Packs a dense 2-D tensor, keeping bf16 and f16 weights in half precision.
    pub fn from_dense(t: &Tensor) -> Result<Self, PackError> {
        let dims = t.dims().to_vec();
        let [rows, cols] = dims[..] else {
            return Err(PackError::NotMatrix(dims));
        };
        let t = t.contiguous()?;
        let format = match t.dtype() {
            DType::BF16 => Format::Bf16(
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            ),
            DType::F16 => Format::F16(
                t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            ),
            _ => Format::F32(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        };
        Ok(Self { rows, cols, format })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::{scalar, Kernel};

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let v = crate::sampling::Rng::values(seed, rows * cols);
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Repacking is exact: the packed weights equal candle's own dequantization of the ggml blocks.
    #[test]
    fn repacked_ggml_blocks_dequantize_exactly() {
        for (dtype, cols) in [
            (GgmlDType::Q4_0, 576),
            (GgmlDType::Q4_1, 576),
            (GgmlDType::Q5_0, 576),
            (GgmlDType::Q5_1, 576),
            (GgmlDType::Q8_0, 576),
            (GgmlDType::Q4K, 512),
            (GgmlDType::Q5K, 768),
            (GgmlDType::Q6K, 512),
            (GgmlDType::Q3K, 768),
            (GgmlDType::Q2K, 512),
        ] {
            let q = QTensor::quantize(&random(24, cols, 1), dtype).unwrap();
            let reference = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let packed = PackedMatrix::from_qtensor(&q).unwrap().to_f32();
            let worst = reference
                .iter()
                .zip(&packed)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let tol = if dtype == GgmlDType::Q4_0 { 1e-6 } else { 0.0 };
            assert!(
                worst <= tol,
                "{dtype:?}: packed weights differ from candle's by {worst}"
            );
        }
    }

    /// Every kernel, for every format and shape class (576-wide rows included), against a float64 reference.
    #[test]
    fn kernels_match_a_plain_reference() {
        let shapes = [
            (1usize, 64usize, 576usize),
            (3, 40, 576),
            (1, 16, 1536),
            (5, 8, 64),
            (2, 7, 96),
            // Batches of eight and more, odd row counts (the two-row kernels and their remainders).
            (8, 12, 576),
            (13, 9, 96),
            // Prompts: the GEMM on widened panels (GEMM_MIN_INPUTS and more), rows past one panel.
            (40, 100, 576),
            (33, 7, 96),
            // K-quant rows (multiples of 256): one input, a batch, a prompt.
            (1, 20, 512),
            (6, 9, 768),
            (34, 11, 256),
        ];
        for (m, rows, cols) in shapes {
            let w = random(rows, cols, 2);
            let x: Vec<f32> = random(m, cols, 3).flatten_all().unwrap().to_vec1().unwrap();
            let mut mats = vec![
                PackedMatrix::from_dense(&w).unwrap(),
                PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
                PackedMatrix::from_dense(&w.to_dtype(DType::F16).unwrap()).unwrap(),
            ];
            for dtype in [
                GgmlDType::Q4_0,
                GgmlDType::Q4_1,
                GgmlDType::Q5_0,
                GgmlDType::Q5_1,
                GgmlDType::Q8_0,
            ] {
                mats.push(
                    PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap(),
                );
            }
            if cols % 256 == 0 {
                for dtype in [
                    GgmlDType::Q4K,
                    GgmlDType::Q5K,
                    GgmlDType::Q6K,
                    GgmlDType::Q3K,
                    GgmlDType::Q2K,
                ] {
                    mats.push(
                        PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap(),
                    );
                }
            }
            for p in &mats {
                let wf = p.to_f32();
                let mut out = vec![0f32; m * rows];
                p.matmul(&x, m, &mut out);
                for t in 0..m {
                    for r in 0..rows {
                        let terms =
                            (0..cols).map(|c| wf[r * cols + c] as f64 * x[t * cols + c] as f64);
                        let exact: f64 = terms.clone().sum();
                        // Rounding error of a dot product scales with Σ|w·x|; 16-bit activations allow a few 1e-5 of it.
                        let magnitude: f64 = terms.map(f64::abs).sum();
                        let got = out[t * rows + r] as f64;
                        assert!(
                            (got - exact).abs() <= 5e-5 * magnitude + 1e-6,
                            "{} m={m} rows={rows} cols={cols} kernel={}: {got} vs {exact}",
                            p.format_name(),
                            Kernel::detect().name()
                        );
                    }
                }
            }
        }
    }

    /// Softmax (the SIMD exponential included) against float64, for lengths around the vector width, scores
    /// spread over ±30 and some far below the maximum (their exponential underflows to zero).
    #[test]
    fn softmax_matches_a_float64_reference() {
        let mut rng = crate::sampling::Rng::new(11);
        for kernel in [Kernel::Portable, Kernel::detect()] {
            for n in [1usize, 7, 8, 29, 300] {
                let mut s: Vec<f32> = (0..n)
                    .map(|i| match i % 13 {
                        5 => -200.0,
                        _ => (rng.next_f64() * 60.0 - 30.0) as f32,
                    })
                    .collect();
                let max = s.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let total: f64 = s.iter().map(|&v| (v as f64 - max).exp()).sum();
                let want: Vec<f64> = s.iter().map(|&v| (v as f64 - max).exp() / total).collect();
                kernel.softmax(&mut s);
                // Float32 rounds `v − max` (up to 60 here) to 2^-24 of itself: a few 1e-6 of each result.
                for (i, (&have, &want)) in s.iter().zip(&want).enumerate() {
                    assert!(
                        (have as f64 - want).abs() <= 5e-6 * want + 1e-30,
                        "{} n={n} [{i}]: {have} vs {want}",
                        kernel.name()
                    );
                }
            }
            // A NaN score (a broken model) makes every probability NaN, as the scalar exponential does, instead
            // of vanishing from the softmax.
            let mut s = vec![1.0f32, 2.0, 0.5, f32::NAN, -1.0, 3.0, 0.0, 1.5, 2.5];
            kernel.softmax(&mut s);
            assert!(s.iter().all(|v| v.is_nan()), "{}: {s:?}", kernel.name());
        }
    }

    /// Attention's kernels, portable and detected (AVX2 or NEON), against float64: a query's scores against strided
    /// keys and the probability-weighted sum of strided values added to what the output holds, over float32 and
    /// float16 caches, head sizes with and without a tail past the vector width, one key to several.
    #[test]
    fn attention_kernels_match_a_float64_reference() {
        use crate::sampling::Rng;
        for kernel in [Kernel::Portable, Kernel::detect()] {
            for (seed, (hd, n, stride)) in [
                (64usize, 13usize, 64usize),
                (36, 5, 40),
                (128, 9, 192),
                (80, 1, 80),
            ]
            .into_iter()
            .enumerate()
            {
                let seed = seed as u64 * 10;
                let k = Rng::values(seed, n * stride);
                let k16: Vec<u16> = k
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                let k16_wide: Vec<f32> = k16
                    .iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect();
                let q = Rng::values(seed + 1, hd);
                let p: Vec<f32> = Rng::values(seed + 2, n)
                    .iter()
                    .map(|v| v.abs() / 2.0)
                    .collect();
                let base = Rng::values(seed + 3, hd);
                for f16_cache in [false, true] {
                    let cache = if f16_cache { &k16_wide } else { &k };
                    let what = format!("{} hd={hd} n={n} f16={f16_cache}", kernel.name());
                    let mut scores = vec![0f32; n];
                    let mut sums = base.clone();
                    if f16_cache {
                        kernel.scores_f16(&k16, stride, &q, &mut scores);
                        kernel.weighted_sum_f16(&k16, stride, &p, &mut sums);
                    } else {
                        kernel.scores_f32(&k, stride, &q, &mut scores);
                        kernel.weighted_sum_f32(&k, stride, &p, &mut sums);
                    }
                    // Float32 rounding of sums of up to 128 terms: a few 1e-6 of the terms' magnitude.
                    for (j, &have) in scores.iter().enumerate() {
                        let terms = (0..hd).map(|d| cache[j * stride + d] as f64 * q[d] as f64);
                        let (want, magnitude) =
                            terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                        assert!(
                            (have as f64 - want).abs() <= 1e-5 * magnitude + 1e-6,
                            "{what}: score {j}: {have} vs {want}"
                        );
                    }
                    for (d, &have) in sums.iter().enumerate() {
                        let terms = (0..n).map(|j| p[j] as f64 * cache[j * stride + d] as f64);
                        let (want, magnitude) = terms
                            .fold((base[d] as f64, base[d].abs() as f64), |(s, m), t| {
                                (s + t, m + t.abs())
                            });
                        assert!(
                            (have as f64 - want).abs() <= 1e-5 * magnitude + 1e-6,
                            "{what}: column {d}: {have} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The portable loops agree with the SIMD ones (each is also checked against the reference above).
    #[test]
    fn portable_and_detected_kernels_agree() {
        let w = random(4, 512, 5);
        let x: Vec<f32> = random(1, 512, 6).flatten_all().unwrap().to_vec1().unwrap();
        let xq = crate::kernels::QuantizedInput::new(&x);
        let kernel = Kernel::detect();
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q2K,
        ] {
            let p = PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let (a, b) = match &p.format {
                Format::Q4 { qs, dm } => (
                    scalar::dot_q4(&qs[..256], &dm[..32], &xq),
                    kernel.dot_q4(&qs[..256], &dm[..32], &xq),
                ),
                Format::Q8 { qs, dm } => (
                    scalar::dot_q8(&qs[..512], &dm[..32], &xq),
                    kernel.dot_q8(&qs[..512], &dm[..32], &xq),
                ),
                Format::Q8Sub { qs, dm } => (
                    scalar::dot_q8sub(&qs[..512], &dm[..64], &xq),
                    kernel.dot_q8sub(&qs[..512], &dm[..64], &xq),
                ),
                Format::Q8X16 { qs, sc, d } => (
                    scalar::dot_q8x16(&qs[..512], &sc[..32], &d[..2], &xq),
                    kernel.dot_q8x16(&qs[..512], &sc[..32], &d[..2], &xq),
                ),
                Format::Q5K { qs, sm, d } => (
                    scalar::dot_q5k(&qs[..512], &sm[..32], &d[..4], &xq),
                    kernel.dot_q5k(&qs[..512], &sm[..32], &d[..4], &xq),
                ),
                Format::Q4K { qs, sm, d } => (
                    scalar::dot_q4k(&qs[..256], &sm[..32], &d[..4], &xq),
                    kernel.dot_q4k(&qs[..256], &sm[..32], &d[..4], &xq),
                ),
                Format::Q4H { qs, dm } => (
                    scalar::dot_q4h(&qs[..256], &dm[..32], &xq),
                    kernel.dot_q4h(&qs[..256], &dm[..32], &xq),
                ),
                Format::Q8H { qs, dm } => (
                    scalar::dot_q8h(&qs[..512], &dm[..32], &xq),
                    kernel.dot_q8h(&qs[..512], &dm[..32], &xq),
                ),
                _ => unreachable!(),
            };
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }

    /// Formats whose scales and offsets float16 holds keep them as float16; the others, and a file whose
    /// offsets overflow float16, keep float32 (same values either way).
    #[test]
    fn float16_scales_where_exact_float32_otherwise() {
        let w = random(8, 512, 9);
        for (dtype, name) in [
            (GgmlDType::Q4_0, "q4h"),
            (GgmlDType::Q4_1, "q4h"),
            (GgmlDType::Q5_0, "q8h"),
            (GgmlDType::Q5_1, "q8h"),
            (GgmlDType::Q8_0, "q8h"),
            (GgmlDType::Q4K, "q4k"),
            (GgmlDType::Q5K, "q5k"),
            (GgmlDType::Q6K, "q8x16"),
            (GgmlDType::Q3K, "q8x16"),
            (GgmlDType::Q2K, "q8/16"),
        ] {
            let p = PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap();
            assert_eq!(p.format_name(), name, "{dtype:?}");
        }
        // A Q4_0 block with d = 60000: its offset −8·d is beyond float16's range.
        let mut block = half::f16::from_f32(60000.0)
            .to_bits()
            .to_le_bytes()
            .to_vec();
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let p = PackedMatrix::from_ggml(GgmlDType::Q4_0, &block, &[1, 32]).unwrap();
        assert_eq!(p.format_name(), "q4");
        let values = p.to_f32();
        assert_eq!(values[0], -8.0 * 60000.0);
        assert_eq!(values[16], 7.0 * 60000.0);
    }

    /// The four-row kernels of a lone input and the four-input kernels of a batch do each row's arithmetic
    /// exactly as the one-row kernel does, so an answer does not depend on which of them computed it.
    #[test]
    fn row_groups_and_batches_compute_each_row_as_one_row_alone() {
        let kernel = Kernel::detect();
        // 72 and 40 columns (dense only): the columns past the last 16 are summed one by one.
        for (rows, cols) in [
            (13usize, 576usize),
            (9, 1536),
            (8, 64),
            (11, 512),
            (7, 72),
            (5, 40),
        ] {
            let w = random(rows, cols, 11);
            let xs: Vec<f32> = random(5, cols, 12)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let x = &xs[..cols];
            let k_quants: &[GgmlDType] = if cols % 256 == 0 {
                &[
                    GgmlDType::Q4K,
                    GgmlDType::Q5K,
                    GgmlDType::Q6K,
                    GgmlDType::Q3K,
                    GgmlDType::Q2K,
                ]
            } else {
                &[]
            };
            let simple: &[GgmlDType] = if cols % 32 == 0 {
                &[
                    GgmlDType::Q4_0,
                    GgmlDType::Q4_1,
                    GgmlDType::Q5_1,
                    GgmlDType::Q8_0,
                ]
            } else {
                &[]
            };
            let mut mats: Vec<(String, PackedMatrix)> = simple
                .iter()
                .chain(k_quants)
                .map(|&dtype| {
                    let q = QTensor::quantize(&w, dtype).unwrap();
                    (
                        format!("{dtype:?}"),
                        PackedMatrix::from_qtensor(&q).unwrap(),
                    )
                })
                .collect();
            // Quantized on load: the float32-scaled `Q8` and `Q4`.
            for kind in [
                crate::kernels::Quantize::Q8_0,
                crate::kernels::Quantize::Q4_1,
            ]
            .into_iter()
            .filter(|_| cols % 32 == 0)
            {
                let dense = PackedMatrix::from_dense(&w).unwrap();
                mats.push((kind.to_string(), dense.quantized(kind).unwrap()));
            }
            // Dense weights: float32 and bfloat16.
            mats.push(("f32".into(), PackedMatrix::from_dense(&w).unwrap()));
            mats.push((
                "bf16".into(),
                PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
            ));
            for (dtype, p) in &mats {
                let xq = crate::kernels::QuantizedInput::new(x);
                let alone: Vec<f32> = (0..rows)
                    .map(|r| p.row_dot(kernel, r, x, Some(&xq)))
                    .collect();
                for r in (0..rows - 3).step_by(4) {
                    if let Some(group) = p.rows4_dot(kernel, r, Some(&xq)) {
                        assert_eq!(group[..], alone[r..r + 4], "{dtype:?} rows {r}..{}", r + 4);
                    }
                }
                let mut single = vec![0f32; rows];
                p.matmul(x, 1, &mut single);
                assert_eq!(
                    single, alone,
                    "{dtype:?} {rows}x{cols}: matmul of one input"
                );
                let mut batch = vec![0f32; 5 * rows];
                p.matmul(&xs, 5, &mut batch);
                for t in 0..5 {
                    let xt = &xs[t * cols..(t + 1) * cols];
                    let xq = crate::kernels::QuantizedInput::new(xt);
                    let lone: Vec<f32> = (0..rows)
                        .map(|r| p.row_dot(kernel, r, xt, Some(&xq)))
                        .collect();
                    assert_eq!(
                        batch[t * rows..(t + 1) * rows],
                        lone[..],
                        "{dtype:?} {rows}x{cols}: input {t} of a batch"
                    );
                }
            }
        }
    }

    /// Stacked projections (q, k, v as one matrix) compute exactly what their parts compute, in every format;
    /// parts in different formats are not stacked.
    #[test]
    fn stacked_matrices_compute_what_their_parts_compute() {
        let x: Vec<f32> = random(5, 96, 3).flatten_all().unwrap().to_vec1().unwrap();
        let builders: [fn(&Tensor) -> PackedMatrix; 4] = [
            |w| PackedMatrix::from_dense(w).unwrap(),
            |w| PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
            |w| {
                PackedMatrix::from_qtensor(&QTensor::quantize(w, GgmlDType::Q4_1).unwrap()).unwrap()
            },
            |w| {
                PackedMatrix::from_qtensor(&QTensor::quantize(w, GgmlDType::Q8_0).unwrap()).unwrap()
            },
        ];
        for build in builders {
            let parts: Vec<PackedMatrix> = [(12, 1), (4, 2), (4, 3)]
                .iter()
                .map(|&(rows, seed)| build(&random(rows, 96, seed)))
                .collect();
            let mut separate = Vec::new();
            for p in &parts {
                let mut out = vec![0f32; 5 * p.rows];
                p.matmul(&x, 5, &mut out);
                separate.push(out);
            }
            let stacked = PackedMatrix::stack_rows(parts).unwrap();
            assert_eq!((stacked.rows, stacked.cols), (20, 96));
            let mut out = vec![0f32; 5 * 20];
            stacked.matmul(&x, 5, &mut out);
            for t in 0..5 {
                let mut expect = Vec::new();
                for (p, rows) in separate.iter().zip([12, 4, 4]) {
                    expect.extend_from_slice(&p[t * rows..(t + 1) * rows]);
                }
                assert_eq!(
                    &out[t * 20..(t + 1) * 20],
                    &expect[..],
                    "{}",
                    stacked.format_name()
                );
            }
        }
        let mixed = vec![
            PackedMatrix::from_dense(&random(4, 96, 1)).unwrap(),
            PackedMatrix::from_dense(&random(4, 96, 2).to_dtype(DType::BF16).unwrap()).unwrap(),
        ];
        assert!(PackedMatrix::stack_rows(mixed).is_none());
    }
}
