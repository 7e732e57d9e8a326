//! The matrix driver: a product split across threads by rows, each row (or four rows, or two rows by four
//! inputs) handed to the inner product its format and this CPU have, and prompts routed to a GEMM (the integer
//! one on AVX-512 VNNI, candle's on widened panels otherwise).

use rayon::prelude::*;

#[cfg(target_arch = "aarch64")]
use super::neon;
#[cfg(target_arch = "x86_64")]
use super::{vnni, x86};
use super::{Format, Kernel, PackedMatrix, QuantizedInput, SendPtr, BLOCK};

/// Whether matrix–vector products use the four-row kernels (on by default); benchmarks switch it off to measure
/// the row-at-a-time kernels beside them in one process.
static ROW_GROUPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[doc(hidden)]
pub fn set_row_groups(enabled: bool) {
    ROW_GROUPS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether prompts on quantized weights may use the integer GEMM (on by default where the CPU has AVX-512
/// VNNI); benchmarks switch it off to measure the float32 GEMM beside it in one process.
#[doc(hidden)]
pub fn set_integer_gemm(enabled: bool) {
    #[cfg(target_arch = "x86_64")]
    vnni::set_enabled(enabled);
    let _ = enabled;
}

/// Whether this CPU runs prompts on quantized weights through the integer GEMM.
pub fn integer_gemm() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Inputs from which [`PackedMatrix::matmul`] multiplies with a GEMM (integer or on widened panels): below it,
/// unpacking each weight costs more than the GEMM saves (and batched decoding keeps the per-row kernels, whose
/// every row equals a lone input's).
pub const GEMM_MIN_INPUTS: usize = 32;

/// Whether the CPU has AVX-512 F and VL (the dense pair kernels' 32 vector registers).
#[cfg(target_arch = "x86_64")]
fn avx512vl() -> bool {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl"))
}

impl PackedMatrix {
    /// `out[t][r] = Σ_c w[r][c] · x[t][c]` for `m` input rows `x` (`m × cols`), writing `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "input is not m × cols");
        assert_eq!(out.len(), m * self.rows, "output is not m × rows");
        if m >= GEMM_MIN_INPUTS {
            #[cfg(target_arch = "x86_64")]
            if vnni::available() && vnni::matmul(self, x, out) {
                return;
            }
            self.matmul_gemm(x, m, out);
            return;
        }
        let quantized: Vec<QuantizedInput> = match self.format {
            _ if !self.is_quantized() => Vec::new(),
            _ if m >= 8 => x.par_chunks(self.cols).map(QuantizedInput::new).collect(),
            _ => x.chunks(self.cols).map(QuantizedInput::new).collect(),
        };
        let kernel = Kernel::detect();
        // Rows per task: enough work to amortise scheduling, enough tasks to balance threads, whole row groups.
        let chunk = (4096 / self.cols.max(1)).clamp(8, 256).next_multiple_of(4);
        if m == 1 {
            let groups = ROW_GROUPS.load(std::sync::atomic::Ordering::Relaxed);
            out.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
                let r0 = ci * chunk;
                let mut i = 0;
                while i + 4 <= o.len() && groups {
                    match self.rows4_dot(kernel, r0 + i, quantized.first()) {
                        Some(v) => o[i..i + 4].copy_from_slice(&v),
                        None => break,
                    }
                    i += 4;
                }
                for (i, v) in o.iter_mut().enumerate().skip(i) {
                    *v = self.row_dot(kernel, r0 + i, x, quantized.first());
                }
            });
            return;
        }
        // Several inputs: compute rows × m, then transpose into m × rows.
        let mut tmp = vec![0f32; self.rows * m];
        tmp.par_chunks_mut(chunk * m)
            .enumerate()
            .for_each(|(ci, o)| {
                let r0 = ci * chunk;
                let xt = |t: usize| &x[t * self.cols..(t + 1) * self.cols];
                let n_rows = o.len() / m;
                let mut i = 0;
                // Dense formats: two rows by four inputs per pass, each input loaded once for both rows.
                while i + 1 < n_rows && m >= 4 {
                    let (a, b) = o[i * m..(i + 2) * m].split_at_mut(m);
                    let mut t = 0;
                    while t + 4 <= m {
                        let group = [t, t + 1, t + 2, t + 3];
                        let Some([v0, v1]) = self.rows2_dot4(kernel, r0 + i, group.map(xt)) else {
                            break;
                        };
                        a[t..t + 4].copy_from_slice(&v0);
                        b[t..t + 4].copy_from_slice(&v1);
                        t += 4;
                    }
                    if t == 0 {
                        break; // no pair kernel for this format: the loop below does it row by row
                    }
                    for t in t..m {
                        a[t] = self.row_dot(kernel, r0 + i, xt(t), quantized.get(t));
                        b[t] = self.row_dot(kernel, r0 + i + 1, xt(t), quantized.get(t));
                    }
                    i += 2;
                }
                for (j, row_out) in o.chunks_mut(m).enumerate().skip(i) {
                    let r = r0 + j;
                    // Four inputs per pass over the row: the weights are loaded and unpacked once for all four.
                    let mut t = 0;
                    while t + 4 <= m {
                        let group = [t, t + 1, t + 2, t + 3];
                        let v = self.row_dot4(
                            kernel,
                            r,
                            group.map(xt),
                            group.map(|t| quantized.get(t)),
                        );
                        row_out[t..t + 4].copy_from_slice(&v);
                        t += 4;
                    }
                    for (t, v) in row_out.iter_mut().enumerate().skip(t) {
                        *v = self.row_dot(kernel, r, xt(t), quantized.get(t));
                    }
                }
            });
        // The transpose runs in parallel too (serial, one thread did it while the other waited).
        let rows = self.rows;
        out.par_chunks_mut(rows).enumerate().for_each(|(t, o)| {
            for (r, v) in o.iter_mut().enumerate() {
                *v = tmp[r * m + t];
            }
        });
    }

    /// [`Self::matmul`] for many inputs (a prompt): panels of rows are widened to float32 (exactly: every format
    /// here is float32-representable) and multiplied by the float32 inputs with candle's GEMM, which runs near
    /// the cores' multiply-add peak where the one- and four-input kernels above are bound by unpacking each block
    /// for every few inputs. The inputs are not rounded to 16 bits on this path (it serves dense weights, and
    /// quantized ones on CPUs without the integer GEMM).
    pub(crate) fn matmul_gemm(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        // Panels of about 192 KB: one thread's panel stays in its L2 while the GEMM sweeps it.
        let panel = (49152 / cols.max(1)).clamp(8, 512).next_multiple_of(8);
        let dst = SendPtr(out.as_mut_ptr());
        let run = |r0: usize, n: usize, w: &[f32]| {
            // SAFETY: `w` is `n × cols` (row-major), `x` is `m × cols`, and the destination columns
            // `r0..r0 + n` of the `m × rows` output belong to this panel alone.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    cols,
                    dst.get().add(r0),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    w.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        let starts: Vec<usize> = (0..rows).step_by(panel).collect();
        starts.par_iter().for_each(|&r0| {
            let n = panel.min(rows - r0);
            match &self.format {
                Format::F32 { w } => run(r0, n, &w[r0 * cols..(r0 + n) * cols]),
                _ => {
                    let mut w = vec![0f32; n * cols];
                    for (i, row) in w.chunks_mut(cols).enumerate() {
                        self.row_to_f32(r0 + i, row);
                    }
                    run(r0, n, &w);
                }
            }
        });
    }

    /// Rows `r..r + 4` against one quantized input, where a kernel for it exists (the quantized formats on AVX2;
    /// those with one (d, m) per 32 weights on NEON).
    pub(crate) fn rows4_dot(
        &self,
        kernel: Kernel,
        r: usize,
        xq: Option<&QuantizedInput>,
    ) -> Option<[f32; 4]> {
        let (c, nb, ns) = (self.cols, self.cols / BLOCK, self.cols / 256);
        // The four-row kernels of the formats with one (d, m) per block, in ISA module `$isa`: each takes the four
        // rows' slices and how far apart the rows are in each.
        #[allow(unused_macros)]
        macro_rules! block_rows4 {
            ($isa:ident, $format:expr, $x:expr) => {
                match $format {
                    Format::Q4 { qs, dm } => Some($isa::dot_q4_rows4(
                        rows(qs, c / 2, r, 4),
                        rows(dm, 2 * nb, r, 4),
                        c / 2,
                        2 * nb,
                        $x,
                    )),
                    Format::Q4H { qs, dm } => Some($isa::dot_q4h_rows4(
                        rows(qs, c / 2, r, 4),
                        rows(dm, 2 * nb, r, 4),
                        c / 2,
                        2 * nb,
                        $x,
                    )),
                    Format::Q8 { qs, dm } => Some($isa::dot_q8_rows4(
                        rows(qs, c, r, 4),
                        rows(dm, 2 * nb, r, 4),
                        c,
                        2 * nb,
                        $x,
                    )),
                    Format::Q8H { qs, dm } => Some($isa::dot_q8h_rows4(
                        rows(qs, c, r, 4),
                        rows(dm, 2 * nb, r, 4),
                        c,
                        2 * nb,
                        $x,
                    )),
                    _ => None,
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2 {
            let x = xq?;
            // SAFETY: `Kernel::Avx2` is only chosen when the CPU has AVX2, FMA and F16C; the slices hold four rows.
            return unsafe {
                match &self.format {
                    Format::Q8Sub { qs, dm } => Some(x86::dot_q8sub_rows4(
                        rows(qs, c, r, 4),
                        rows(dm, 4 * nb, r, 4),
                        c,
                        4 * nb,
                        x,
                    )),
                    Format::Q4K { qs, sm, d } => Some(x86::dot_q4k_rows4(
                        rows(qs, c / 2, r, 4),
                        rows(sm, 16 * ns, r, 4),
                        rows(d, 2 * ns, r, 4),
                        c / 2,
                        16 * ns,
                        2 * ns,
                        x,
                    )),
                    Format::Q5K { qs, sm, d } => Some(x86::dot_q5k_rows4(
                        rows(qs, c, r, 4),
                        rows(sm, 16 * ns, r, 4),
                        rows(d, 2 * ns, r, 4),
                        c,
                        16 * ns,
                        2 * ns,
                        x,
                    )),
                    Format::Q8X16 { qs, sc, d } => Some(x86::dot_q8x16_rows4(
                        rows(qs, c, r, 4),
                        rows(sc, 16 * ns, r, 4),
                        rows(d, ns, r, 4),
                        c,
                        16 * ns,
                        ns,
                        x,
                    )),
                    other => block_rows4!(x86, other, x),
                }
            };
        }
        #[cfg(target_arch = "aarch64")]
        if kernel == Kernel::Neon {
            let x = xq?;
            // SAFETY: NEON is part of AArch64; the slices hold four rows.
            return unsafe { block_rows4!(neon, &self.format, x) };
        }
        let _ = (kernel, r, xq, c, nb, ns);
        None
    }

    /// Rows `r` and `r + 1` against four inputs, where a kernel for it exists (float32 and bfloat16 on CPUs with
    /// AVX-512VL: the kernel keeps sixteen sums in registers).
    fn rows2_dot4(&self, kernel: Kernel, r: usize, x: [&[f32]; 4]) -> Option<[[f32; 4]; 2]> {
        let c = self.cols;
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2 && avx512vl() {
            // SAFETY: `Kernel::Avx2` is only chosen when the CPU has AVX2, FMA and F16C; `avx512vl` checked
            // AVX-512 F and VL.
            unsafe {
                match &self.format {
                    Format::F32 { w } => {
                        return Some(x86::dot2x4_f32(
                            &w[r * c..(r + 1) * c],
                            &w[(r + 1) * c..(r + 2) * c],
                            x,
                        ))
                    }
                    Format::Bf16 { w } => {
                        return Some(x86::dot2x4_bf16(
                            &w[r * c..(r + 1) * c],
                            &w[(r + 1) * c..(r + 2) * c],
                            x,
                        ))
                    }
                    _ => {}
                }
            }
        }
        let _ = (kernel, r, x, c);
        None
    }

    /// [`Self::row_dot`] for four inputs at once.
    fn row_dot4(
        &self,
        kernel: Kernel,
        r: usize,
        x: [&[f32]; 4],
        xq: [Option<&QuantizedInput>; 4],
    ) -> [f32; 4] {
        let (c, nb, ns) = (self.cols, self.cols / BLOCK, self.cols / 256);
        let q = || xq.map(|q| q.expect("quantized input"));
        // The four-input kernels of float32, bfloat16 and the formats with one (d, m) per block, in ISA module
        // `$isa`; `None` for the other formats.
        #[allow(unused_macros)]
        macro_rules! common_dot4 {
            ($isa:ident, $format:expr) => {
                match $format {
                    Format::F32 { w } => Some($isa::dot4_f32(rows(w, c, r, 1), x)),
                    Format::Bf16 { w } => Some($isa::dot4_bf16(rows(w, c, r, 1), x)),
                    Format::Q4 { qs, dm } => Some($isa::dot4_q4(
                        rows(qs, c / 2, r, 1),
                        rows(dm, 2 * nb, r, 1),
                        q(),
                    )),
                    Format::Q4H { qs, dm } => Some($isa::dot4_q4h(
                        rows(qs, c / 2, r, 1),
                        rows(dm, 2 * nb, r, 1),
                        q(),
                    )),
                    Format::Q8 { qs, dm } => Some($isa::dot4_q8(
                        rows(qs, c, r, 1),
                        rows(dm, 2 * nb, r, 1),
                        q(),
                    )),
                    Format::Q8H { qs, dm } => Some($isa::dot4_q8h(
                        rows(qs, c, r, 1),
                        rows(dm, 2 * nb, r, 1),
                        q(),
                    )),
                    _ => None,
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2 {
            // SAFETY: `Kernel::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
            let v = unsafe {
                match &self.format {
                    Format::Q8Sub { qs, dm } => Some(x86::dot4_q8sub(
                        rows(qs, c, r, 1),
                        rows(dm, 4 * nb, r, 1),
                        q(),
                    )),
                    Format::Q4K { qs, sm, d } => Some(x86::dot4_q4k(
                        rows(qs, c / 2, r, 1),
                        rows(sm, 16 * ns, r, 1),
                        rows(d, 2 * ns, r, 1),
                        q(),
                    )),
                    Format::Q5K { qs, sm, d } => Some(x86::dot4_q5k(
                        rows(qs, c, r, 1),
                        rows(sm, 16 * ns, r, 1),
                        rows(d, 2 * ns, r, 1),
                        q(),
                    )),
                    Format::Q8X16 { qs, sc, d } => Some(x86::dot4_q8x16(
                        rows(qs, c, r, 1),
                        rows(sc, 16 * ns, r, 1),
                        rows(d, ns, r, 1),
                        q(),
                    )),
                    other => common_dot4!(x86, other),
                }
            };
            if let Some(v) = v {
                return v;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if kernel == Kernel::Neon {
            // SAFETY: NEON is part of AArch64; the slices hold one row.
            let v = unsafe {
                match &self.format {
                    Format::F16 { w } => Some(neon::dot4_f16(rows(w, c, r, 1), x)),
                    other => common_dot4!(neon, other),
                }
            };
            if let Some(v) = v {
                return v;
            }
        }
        let _ = (c, nb, ns, &q);
        [0, 1, 2, 3].map(|i| self.row_dot(kernel, r, x[i], xq[i]))
    }

    #[inline]
    pub(crate) fn row_dot(
        &self,
        kernel: Kernel,
        r: usize,
        x: &[f32],
        xq: Option<&QuantizedInput>,
    ) -> f32 {
        let (c, nb, ns) = (self.cols, self.cols / BLOCK, self.cols / 256);
        let q = || xq.expect("quantized input");
        match &self.format {
            Format::F32 { w } => kernel.dot_f32(rows(w, c, r, 1), x),
            Format::Bf16 { w } => kernel.dot_bf16(rows(w, c, r, 1), x),
            Format::F16 { w } => kernel.dot_f16(rows(w, c, r, 1), x),
            Format::Q4 { qs, dm } => {
                kernel.dot_q4(rows(qs, c / 2, r, 1), rows(dm, 2 * nb, r, 1), q())
            }
            Format::Q4H { qs, dm } => {
                kernel.dot_q4h(rows(qs, c / 2, r, 1), rows(dm, 2 * nb, r, 1), q())
            }
            Format::Q8 { qs, dm } => kernel.dot_q8(rows(qs, c, r, 1), rows(dm, 2 * nb, r, 1), q()),
            Format::Q8H { qs, dm } => {
                kernel.dot_q8h(rows(qs, c, r, 1), rows(dm, 2 * nb, r, 1), q())
            }
            Format::Q8Sub { qs, dm } => {
                kernel.dot_q8sub(rows(qs, c, r, 1), rows(dm, 4 * nb, r, 1), q())
            }
            Format::Q4K { qs, sm, d } => {
                let (qs, sm, d) = (
                    rows(qs, c / 2, r, 1),
                    rows(sm, 16 * ns, r, 1),
                    rows(d, 2 * ns, r, 1),
                );
                kernel.dot_q4k(qs, sm, d, q())
            }
            Format::Q5K { qs, sm, d } => {
                let (qs, sm, d) = (
                    rows(qs, c, r, 1),
                    rows(sm, 16 * ns, r, 1),
                    rows(d, 2 * ns, r, 1),
                );
                kernel.dot_q5k(qs, sm, d, q())
            }
            Format::Q8X16 { qs, sc, d } => {
                let (qs, sc, d) = (
                    rows(qs, c, r, 1),
                    rows(sc, 16 * ns, r, 1),
                    rows(d, ns, r, 1),
                );
                kernel.dot_q8x16(qs, sc, d, q())
            }
        }
    }
}

/// Rows `r..r + n` of an array that holds `per_row` elements for each row of a matrix.
#[inline]
fn rows<T>(v: &[T], per_row: usize, r: usize, n: usize) -> &[T] {
    &v[r * per_row..(r + n) * per_row]
}
