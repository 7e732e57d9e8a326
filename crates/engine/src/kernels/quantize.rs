//! Quantize on load: dense weights (float32, bfloat16, float16) rounded into the compact kernel formats, for
//! checkpoints whose dense weights are too large for memory or too slow to read every token.
//!
//! - `q8_0`: 8-bit signed values, one scale per 32 weights (`w ≈ d·q`, `d = max|w| / 127`), as ggml's Q8_0
//!   with the scale kept in float32 instead of float16.
//! - `q4_1`: 4-bit values with a scale and a minimum per 32 weights (`w ≈ d·q + m`), as ggml's Q4_1 with both
//!   kept in float32.
//! - `q4_0`: 4-bit values with one scale per 32 weights (`w ≈ d·(q − 8)`), as ggml's Q4_0.
//!
//! Every rounding goes to the nearest level, so each weight is off by at most half a step of its block (`q4_0`,
//! whose levels run from −8·d to 7·d, can clip a weight on the short side by up to one step, as ggml's).
//! The 4-bit kinds keep the embedding and output matrices at `q8_0`, as llama.cpp's 4-bit files do.

use std::fmt;
use std::str::FromStr;

use super::{Format, PackedMatrix, BLOCK};

/// A format to quantize dense weights into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    Q8_0,
    Q4_1,
    Q4_0,
}

impl Quantize {
    pub const ALL: [Quantize; 3] = [Quantize::Q8_0, Quantize::Q4_1, Quantize::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4_1 => "q4_1",
            Quantize::Q4_0 => "q4_0",
        }
    }

    /// The format for the embedding and output matrices (kept at 8 bits by the 4-bit kinds).
    pub fn for_embeddings(self) -> Quantize {
        Quantize::Q8_0
    }
}

impl fmt::Display for Quantize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quantize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Quantize::Q8_0),
            "q4_1" => Ok(Quantize::Q4_1),
            "q4_0" | "q4" => Ok(Quantize::Q4_0),
            other => Err(format!(
                "unknown quantization {other:?}; use q8_0, q4_1 or q4_0"
            )),
        }
    }
}

impl PackedMatrix {
    /// These weights rounded into `kind`. Already-quantized matrices, and rows whose length is not a multiple
    /// of 32, are returned unchanged (`None`).
    pub fn quantized(&self, kind: Quantize) -> Option<PackedMatrix> {
        if self.is_quantized() || !self.cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = self.rows * self.cols / BLOCK;
        let mut dm = Vec::with_capacity(blocks * 2);
        let mut row = vec![0f32; self.cols];
        let format = match kind {
            Quantize::Q8_0 => {
                let mut qs = Vec::with_capacity(self.rows * self.cols);
                for r in 0..self.rows {
                    self.row_to_f32(r, &mut row);
                    for block in row.chunks_exact(BLOCK) {
                        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                        let d = amax / 127.0;
                        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                        qs.extend(
                            block
                                .iter()
                                .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
                        );
                        dm.extend([d, 0.0]);
                    }
                }
                Format::Q8 { qs, dm }
            }
            Quantize::Q4_1 | Quantize::Q4_0 => {
                let mut qs = Vec::with_capacity(self.rows * self.cols / 2);
                let mut levels = [0u8; BLOCK];
                for r in 0..self.rows {
                    self.row_to_f32(r, &mut row);
                    for block in row.chunks_exact(BLOCK) {
                        let (d, m) = if kind == Quantize::Q4_1 {
                            let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                            let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            ((hi - lo) / 15.0, lo)
                        } else {
                            // The value of largest magnitude maps to level 0 (−8·d), as ggml does.
                            let big = block.iter().copied().fold(0f32, |a, v| {
                                if v.abs() > a.abs() {
                                    v
                                } else {
                                    a
                                }
                            });
                            let d = big / -8.0;
                            (d, -8.0 * d)
                        };
                        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                        for (l, v) in levels.iter_mut().zip(block) {
                            *l = ((v - m) * inv).round().clamp(0.0, 15.0) as u8;
                        }
                        super::pack::push_q4(&mut qs, &levels);
                        dm.extend([d, m]);
                    }
                }
                Format::Q4 { qs, dm }
            }
        };
        Some(PackedMatrix {
            rows: self.rows,
            cols: self.cols,
            format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(rows: usize, cols: usize, seed: u64) -> PackedMatrix {
        let mut rng = crate::sampling::Rng::new(seed);
        let mut v: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        // An outlier per row and an all-zero block: the cases that break careless scale choices.
        for r in 0..rows {
            v[r * cols + 3] = 9.0;
        }
        v[..BLOCK].fill(0.0);
        PackedMatrix {
            rows,
            cols,
            format: Format::F32 { w: v },
        }
    }

    /// The most a weight of `block` may move under `kind`: half a step, or a whole one for q4_0's clipped side.
    fn max_error(kind: Quantize, block: &[f32]) -> f32 {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        match kind {
            Quantize::Q8_0 => amax / 127.0 * 0.5,
            Quantize::Q4_1 => {
                let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                (hi - lo) / 15.0 * 0.5
            }
            Quantize::Q4_0 => amax / 8.0,
        }
    }

    /// Every weight lands within its bound, for each kind.
    #[test]
    fn each_weight_is_within_half_a_step() {
        let m = dense(6, 96, 11);
        let w = m.to_f32();
        for kind in Quantize::ALL {
            let q = m.quantized(kind).unwrap();
            let got = q.to_f32();
            for (b, (orig, new)) in w.chunks(BLOCK).zip(got.chunks(BLOCK)).enumerate() {
                let bound = max_error(kind, orig) + 1e-6;
                for (a, b2) in orig.iter().zip(new) {
                    assert!(
                        (a - b2).abs() <= bound,
                        "{kind} block {b}: {a} became {b2} (bound {bound})"
                    );
                }
            }
            // The all-zero block stays exactly zero.
            assert!(got[..BLOCK].iter().all(|&v| v == 0.0), "{kind}");
        }
    }

    /// The quantized matrix multiplies as its own dequantized weights do (the kernels see a normal matrix), and
    /// within the rounding bound of the dense original.
    #[test]
    fn quantized_matrices_multiply_like_their_weights() {
        let (rows, cols) = (40, 576);
        let m = dense(rows, cols, 5);
        let w = m.to_f32();
        let mut rng = crate::sampling::Rng::new(9);
        let x: Vec<f32> = (0..8 * cols)
            .map(|_| (rng.next_f64() - 0.5) as f32)
            .collect();
        let mut dense_out = vec![0f32; 8 * rows];
        m.matmul(&x, 8, &mut dense_out);
        for kind in Quantize::ALL {
            let q = m.quantized(kind).unwrap();
            let wq = q.to_f32();
            let mut out = vec![0f32; 8 * rows];
            q.matmul(&x, 8, &mut out);
            for t in 0..8 {
                let xt = &x[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    let wr = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = (0..cols)
                        .map(|c| wq[r * cols + c] as f64 * xt[c] as f64)
                        .sum();
                    let got = out[t * rows + r] as f64;
                    assert!((got - exact).abs() < 1e-3, "{kind}: {got} vs {exact}");
                    let bound: f64 = wr
                        .chunks(BLOCK)
                        .zip(xt.chunks(BLOCK))
                        .map(|(wb, xb)| {
                            max_error(kind, wb) as f64
                                * xb.iter().map(|v| v.abs() as f64).sum::<f64>()
                        })
                        .sum();
                    let off = (got - dense_out[t * rows + r] as f64).abs();
                    assert!(off <= bound + 1e-3, "{kind}: off by {off}, bound {bound}");
                }
            }
        }
        assert!(m
            .quantized(Quantize::Q8_0)
            .unwrap()
            .quantized(Quantize::Q4_0)
            .is_none());
    }

    #[test]
    fn names_parse_and_unknown_ones_are_errors() {
        assert_eq!("Q8_0".parse::<Quantize>().unwrap(), Quantize::Q8_0);
        assert_eq!("q4_1".parse::<Quantize>().unwrap(), Quantize::Q4_1);
        let err = "q3_k".parse::<Quantize>().unwrap_err();
        assert!(err.contains("q8_0, q4_1 or q4_0"), "{err}");
    }
}
