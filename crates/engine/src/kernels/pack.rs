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
            GgmlDType::F32 => Format::F32 {
                w: data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            },
            GgmlDType::F16 => Format::F16 { w: u16s(data) },
            GgmlDType::BF16 => Format::Bf16 { w: u16s(data) },
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
            safetensors::Dtype::F32 => Format::F32 { w: floats },
            safetensors::Dtype::BF16 => Format::Bf16 { w: words },
            _ => Format::F16 { w: words },
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
            DType::BF16 => Format::Bf16 {
                w: t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            },
            DType::F16 => Format::F16 {
                w: t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            },
            _ => Format::F32 {
                w: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            },
        };
        Ok(Self { rows, cols, format })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

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
}
