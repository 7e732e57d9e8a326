//! CPU matrix kernels with float32 activations.
//!
//! Why our own: candle's quantized CPU matmul quantizes the activations to 8 bits (as llama.cpp does), which
//! moves SmolLM2's first greedy token away from what the same weights give in transformers; and its f32/bf16
//! matrix–vector products are far from the memory-bandwidth limit. Here dense weights meet float32
//! activations, and quantized weights meet activations rounded to 16-bit integers per block of 32 (relative
//! error at most 2^-16 of the block's largest value, where ggml's 8 bits allow 2^-8), so a GGUF file computes
//! what its dequantized weights compute to about five significant digits, and decoding reads each weight once,
//! in its compact form, with integer multiply-adds.
//!
//! Formats (weights row-major, one row per output):
//! - `F32`, `Bf16`, `F16`: dense rows.
//! - `Q4`: 4-bit values with a float32 scale and offset per 32 weights (`w = d·q + m`): `--quantize q4_1|q4_0`,
//!   and Q4_0/Q4_1 files whose offsets float16 cannot hold.
//! - `Q8`: 8-bit signed values with a float32 scale and offset per 32 (`w = d·q + m`): `--quantize q8_0`, and
//!   Q8_0/Q5_0/Q5_1 files whose scales float16 cannot hold.
//! - `Q4H`, `Q8H`: `Q4` and `Q8` with (d, m) as float16, as the files store them (20 and 36 bytes per 32
//!   weights instead of 24 and 40), holding Q4_0, Q4_1, Q8_0, Q5_0 and Q5_1 exactly (a file whose offsets do not
//!   fit float16 keeps the float32 formats).
//! - `Q4K`: Q4_K as the file has it but for the nibble order: 4-bit values, the 6-bit scale and minimum of each
//!   32 weights, (d, dmin) per 256 as float32 (19 bytes per 32 weights; the file's 18), each block's scale formed
//!   in the kernel as ggml forms it.
//! - `Q5K`: Q5_K with its 5-bit values in bytes, the 6-bit scales and minimums, (d, dmin) per 256 as float32
//!   (35 bytes per 32 weights; the file's 22), each block's scale formed in the kernel as ggml forms it.
//! - `Q8X16`: 8-bit signed values, an 8-bit scale per 16 and a float32 scale per 256 (`w = d·sc·q`), holding
//!   Q6_K and Q3_K exactly at 1.08 bytes per weight (Q6_K's own: 0.82).
//! - `Q8Sub`: 8-bit signed values with a float32 scale and offset per 16 (`w = d·q + m`), holding Q2_K (whose
//!   16-weight blocks have minimums) exactly, at 1.5 bytes per weight.
//!
//! The inner products are selected at run time (AVX2+FMA+F16C on x86-64, NEON on AArch64, a portable loop
//! elsewhere), so one binary runs everywhere. Rows are split across rayon's threads; a lone input meets quantized
//! rows four at a time (each input block loaded once for four rows, four independent sums, the next rows
//! prefetched on x86), with
//! every row's arithmetic exactly that of the one-row kernel, and so do the four-input kernels of a batch; a
//! prompt ([`GEMM_MIN_INPUTS`] inputs or more) goes through a GEMM instead: on CPUs with AVX-512 VNNI, quantized
//! weights meet the prompt's 16-bit activations in an integer GEMM (`vnni`: `vpdpwssd`, twice the multiply-adds
//! of a float32 FMA per instruction, the decoding kernels' accuracy); elsewhere, and for dense weights, candle's
//! float32 GEMM on rows widened to float32. `cargo run --release -p vibecheck-engine --example kernels` measures
//! each format's throughput beside the row-at-a-time kernel, and each GEMM beside the float32 one.

#[cfg(target_arch = "aarch64")]
mod neon;
mod pack;
mod quantize;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

pub use pack::PackError;
pub use quantize::Quantize;

/// Weights in one of the kernel formats.
#[derive(Debug, Clone)]
pub enum Format {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    /// `qs`: 16 bytes per block of 32 (low nibbles hold weights 0–15, high nibbles 16–31); `dm`: (d, m) pairs.
    Q4 {
        qs: Vec<u8>,
        dm: Vec<f32>,
    },
    /// `qs`: 32 signed bytes per block of 32; `dm`: (d, m) pairs.
    Q8 {
        qs: Vec<i8>,
        dm: Vec<f32>,
    },
    /// `Q4` with (d, m) as float16 bits.
    Q4H {
        qs: Vec<u8>,
        dm: Vec<u16>,
    },
    /// `Q8` with (d, m) as float16 bits.
    Q8H {
        qs: Vec<i8>,
        dm: Vec<u16>,
    },
    /// Q4_K superblocks of 256: `qs` as in `Q4`; `sm`: per superblock the eight blocks' 6-bit scales, then their
    /// eight 6-bit minimums; `d`: (d, dmin) per superblock (`w = d·sc·q − dmin·mn`).
    Q4K {
        qs: Vec<u8>,
        sm: Vec<u8>,
        d: Vec<f32>,
    },
    /// Q5_K superblocks of 256: `qs` as in `Q8` (values 0–31); `sm` and `d` as in `Q4K`.
    Q5K {
        qs: Vec<i8>,
        sm: Vec<u8>,
        d: Vec<f32>,
    },
    /// Superblocks of 256: `qs` as in `Q8`; `sc`: an 8-bit scale per 16 weights; `d`: a float32 scale per
    /// superblock (`w = d·sc·q`).
    Q8X16 {
        qs: Vec<i8>,
        sc: Vec<i8>,
        d: Vec<f32>,
    },
    /// `qs`: 32 signed bytes per block of 32; `dm`: (d, m) of weights 0–15, then (d, m) of weights 16–31.
    Q8Sub {
        qs: Vec<i8>,
        dm: Vec<f32>,
    },
}

/// A `rows × cols` weight matrix ready for [`PackedMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub format: Format,
}

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

/// A pointer to an output handed to the threads of one operation, each of which writes a disjoint part of it
/// (the GEMMs' panels and groups of rows, the attention's units); the users say why their parts are disjoint.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only written through, by threads writing disjoint parts (see each user).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Weights per quantization block.
pub const BLOCK: usize = 32;

impl PackedMatrix {
    pub fn format_name(&self) -> &'static str {
        match self.format {
            Format::F32(_) => "f32",
            Format::Bf16(_) => "bf16",
            Format::F16(_) => "f16",
            Format::Q4 { .. } => "q4",
            Format::Q8 { .. } => "q8",
            Format::Q8Sub { .. } => "q8/16",
            Format::Q4H { .. } => "q4h",
            Format::Q4K { .. } => "q4k",
            Format::Q5K { .. } => "q5k",
            Format::Q8X16 { .. } => "q8x16",
            Format::Q8H { .. } => "q8h",
        }
    }

    /// Whether products round the inputs to 16-bit integers (the quantized formats).
    /// Whether any weight or scale is NaN or infinite (what a diverged training step saves). One pass over the
    /// floats: every value of a dense matrix, only the scales of a quantized one (its integers are always finite).
    pub fn has_non_finite(&self) -> bool {
        // Exponent bits all ones: infinity or NaN. Folded without short-circuiting, so the loops vectorize.
        fn f32s(v: &[f32]) -> bool {
            v.iter().fold(false, |bad, x| {
                bad | (x.to_bits() & 0x7f80_0000 == 0x7f80_0000)
            })
        }
        fn halves(v: &[u16], exponent: u16) -> bool {
            v.iter()
                .fold(false, |bad, w| bad | (w & exponent == exponent))
        }
        const BF16_EXP: u16 = 0x7f80;
        const F16_EXP: u16 = 0x7c00;
        match &self.format {
            Format::F32(v) => f32s(v),
            Format::Bf16(v) => halves(v, BF16_EXP),
            Format::F16(v) => halves(v, F16_EXP),
            Format::Q4 { dm, .. } | Format::Q8 { dm, .. } | Format::Q8Sub { dm, .. } => f32s(dm),
            Format::Q4H { dm, .. } | Format::Q8H { dm, .. } => halves(dm, F16_EXP),
            Format::Q4K { d, .. } | Format::Q5K { d, .. } | Format::Q8X16 { d, .. } => f32s(d),
        }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(
            self.format,
            Format::F32(_) | Format::Bf16(_) | Format::F16(_)
        )
    }

    /// Bytes of weight data read by one matrix–vector product.
    pub fn bytes(&self) -> usize {
        match &self.format {
            Format::F32(v) => v.len() * 4,
            Format::Bf16(v) | Format::F16(v) => v.len() * 2,
            Format::Q4 { qs, dm } => qs.len() + dm.len() * 4,
            Format::Q8 { qs, dm } | Format::Q8Sub { qs, dm } => qs.len() + dm.len() * 4,
            Format::Q4H { qs, dm } => qs.len() + dm.len() * 2,
            Format::Q4K { qs, sm, d } => qs.len() + sm.len() + d.len() * 4,
            Format::Q5K { qs, sm, d } => qs.len() + sm.len() + d.len() * 4,
            Format::Q8X16 { qs, sc, d } => qs.len() + sc.len() + d.len() * 4,
            Format::Q8H { qs, dm } => qs.len() + dm.len() * 2,
        }
    }

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
    pub(super) fn matmul_gemm(&self, x: &[f32], m: usize, out: &mut [f32]) {
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
                Format::F32(w) => run(r0, n, &w[r0 * cols..(r0 + n) * cols]),
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
    fn rows4_dot(&self, kernel: Kernel, r: usize, xq: Option<&QuantizedInput>) -> Option<[f32; 4]> {
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
                    Format::F32(w) => {
                        return Some(x86::dot2x4_f32(
                            &w[r * c..(r + 1) * c],
                            &w[(r + 1) * c..(r + 2) * c],
                            x,
                        ))
                    }
                    Format::Bf16(w) => {
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
                    Format::F32(w) => Some($isa::dot4_f32(rows(w, c, r, 1), x)),
                    Format::Bf16(w) => Some($isa::dot4_bf16(rows(w, c, r, 1), x)),
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
                    Format::F16(w) => Some(neon::dot4_f16(rows(w, c, r, 1), x)),
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
    fn row_dot(&self, kernel: Kernel, r: usize, x: &[f32], xq: Option<&QuantizedInput>) -> f32 {
        let (c, nb, ns) = (self.cols, self.cols / BLOCK, self.cols / 256);
        let q = || xq.expect("quantized input");
        match &self.format {
            Format::F32(w) => kernel.dot_f32(rows(w, c, r, 1), x),
            Format::Bf16(w) => kernel.dot_bf16(rows(w, c, r, 1), x),
            Format::F16(w) => kernel.dot_f16(rows(w, c, r, 1), x),
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

    /// The matrices' rows one after another in one matrix, when they all have the same format and width.
    pub fn stack_rows(parts: Vec<PackedMatrix>) -> Option<PackedMatrix> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| {
            p.cols != cols
                || std::mem::discriminant(&p.format) != std::mem::discriminant(&parts[0].format)
        }) {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let extra = (rows - parts[0].rows) * cols;
        let mut it = parts.into_iter().map(|p| p.format);
        let mut format = it.next()?;
        // One allocation for the whole stack (exact: `reserve` may double the first part's capacity).
        match &mut format {
            Format::F32(a) => a.reserve_exact(extra),
            Format::Bf16(a) | Format::F16(a) => a.reserve_exact(extra),
            Format::Q4 { qs, dm } => {
                qs.reserve_exact(extra / 2);
                dm.reserve_exact(extra / BLOCK * 2);
            }
            Format::Q8 { qs, dm } => {
                qs.reserve_exact(extra);
                dm.reserve_exact(extra / BLOCK * 2);
            }
            Format::Q8Sub { qs, dm } => {
                qs.reserve_exact(extra);
                dm.reserve_exact(extra / BLOCK * 4);
            }
            Format::Q4H { qs, dm } => {
                qs.reserve_exact(extra / 2);
                dm.reserve_exact(extra / BLOCK * 2);
            }
            Format::Q4K { qs, sm, d } => {
                qs.reserve_exact(extra / 2);
                sm.reserve_exact(extra / BLOCK * 2);
                d.reserve_exact(extra / 128);
            }
            Format::Q5K { qs, sm, d } => {
                qs.reserve_exact(extra);
                sm.reserve_exact(extra / BLOCK * 2);
                d.reserve_exact(extra / 128);
            }
            Format::Q8X16 { qs, sc, d } => {
                qs.reserve_exact(extra);
                sc.reserve_exact(extra / 16);
                d.reserve_exact(extra / 256);
            }
            Format::Q8H { qs, dm } => {
                qs.reserve_exact(extra);
                dm.reserve_exact(extra / BLOCK * 2);
            }
        }
        for next in it {
            match (&mut format, next) {
                (Format::F32(a), Format::F32(b)) => a.extend(b),
                (Format::Bf16(a), Format::Bf16(b)) | (Format::F16(a), Format::F16(b)) => {
                    a.extend(b)
                }
                (Format::Q4 { qs, dm }, Format::Q4 { qs: q2, dm: d2 }) => {
                    qs.extend(q2);
                    dm.extend(d2);
                }
                (Format::Q8 { qs, dm }, Format::Q8 { qs: q2, dm: d2 })
                | (Format::Q8Sub { qs, dm }, Format::Q8Sub { qs: q2, dm: d2 }) => {
                    qs.extend(q2);
                    dm.extend(d2);
                }
                (Format::Q4H { qs, dm }, Format::Q4H { qs: q2, dm: d2 }) => {
                    qs.extend(q2);
                    dm.extend(d2);
                }
                (
                    Format::Q4K { qs, sm, d },
                    Format::Q4K {
                        qs: q2,
                        sm: s2,
                        d: d2,
                    },
                ) => {
                    qs.extend(q2);
                    sm.extend(s2);
                    d.extend(d2);
                }
                (
                    Format::Q8X16 { qs, sc, d },
                    Format::Q8X16 {
                        qs: q2,
                        sc: s2,
                        d: d2,
                    },
                ) => {
                    qs.extend(q2);
                    sc.extend(s2);
                    d.extend(d2);
                }
                (
                    Format::Q5K { qs, sm, d },
                    Format::Q5K {
                        qs: q2,
                        sm: s2,
                        d: d2,
                    },
                ) => {
                    qs.extend(q2);
                    sm.extend(s2);
                    d.extend(d2);
                }
                (Format::Q8H { qs, dm }, Format::Q8H { qs: q2, dm: d2 }) => {
                    qs.extend(q2);
                    dm.extend(d2);
                }
                _ => return None,
            }
        }
        Some(PackedMatrix { rows, cols, format })
    }

    /// Row `r` as float32 (embedding lookups).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let nb = c / BLOCK;
        match &self.format {
            Format::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Format::Bf16(w) => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, &v)| *o = f32::from_bits(u32::from(v) << 16)),
            Format::F16(w) => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, &v)| *o = half::f16::from_bits(v).to_f32()),
            Format::Q4 { qs, dm } => unpack_q4(qs, r, nb, out, |b| (dm[2 * b], dm[2 * b + 1])),
            Format::Q4H { qs, dm } => unpack_q4(qs, r, nb, out, |b| half_pair(dm, b)),
            Format::Q4K { qs, sm, d } => unpack_q4(qs, r, nb, out, |b| kquant_dm(sm, d, b)),
            Format::Q5K { qs, sm, d } => unpack_q8(qs, r, nb, out, |b| kquant_dm(sm, d, b)),
            Format::Q8 { qs, dm } => unpack_q8(qs, r, nb, out, |b| (dm[2 * b], dm[2 * b + 1])),
            Format::Q8H { qs, dm } => unpack_q8(qs, r, nb, out, |b| half_pair(dm, b)),
            Format::Q8X16 { qs, sc, d } => {
                for b in 0..nb {
                    for h in 0..2 {
                        let at = (r * nb + b) * BLOCK + 16 * h;
                        // ggml's order: d·sc first, then times the value.
                        let scale = d[at / 256] * sc[at / 16] as f32;
                        for (o, &q) in out[b * BLOCK + 16 * h..][..16].iter_mut().zip(&qs[at..]) {
                            *o = scale * q as f32;
                        }
                    }
                }
            }
            Format::Q8Sub { qs, dm } => {
                for b in 0..nb {
                    for h in 0..2 {
                        let at = (r * nb + b) * BLOCK + 16 * h;
                        let (d, m) = (dm[at / 8], dm[at / 8 + 1]);
                        for (o, &q) in out[b * BLOCK + 16 * h..][..16].iter_mut().zip(&qs[at..]) {
                            *o = d * q as f32 + m;
                        }
                    }
                }
            }
        }
    }

    /// Row `r`'s scale and offset `(a, o)` per granule of a quantized format, so that `w = a·q + o` for its
    /// values `q` as stored, handed to `put(j, a, o)` for granule `j` of the row: granules are the blocks of 32, or
    /// with `per16` (`Q8X16`, `Q8Sub`) their halves. Dense formats give `(1, 0)`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn row_granules(&self, r: usize, per16: bool, mut put: impl FnMut(usize, f32, f32)) {
        let n = self.cols / BLOCK * if per16 { 2 } else { 1 };
        let g0 = r * n;
        let mut each = |f: &dyn Fn(usize) -> (f32, f32)| {
            for j in 0..n {
                let (a, o) = f(g0 + j);
                put(j, a, o);
            }
        };
        match &self.format {
            Format::Q4 { dm, .. } | Format::Q8 { dm, .. } => each(&|g| (dm[2 * g], dm[2 * g + 1])),
            Format::Q4H { dm, .. } | Format::Q8H { dm, .. } => each(&|g| half_pair(dm, g)),
            Format::Q4K { sm, d, .. } | Format::Q5K { sm, d, .. } => each(&|g| kquant_dm(sm, d, g)),
            // ggml's order: d·sc, then times the value.
            Format::Q8X16 { sc, d, .. } if per16 => each(&|g| (d[g / 16] * sc[g] as f32, 0.0)),
            Format::Q8Sub { dm, .. } if per16 => each(&|g| (dm[2 * g], dm[2 * g + 1])),
            Format::Q8X16 { .. } | Format::Q8Sub { .. } => {
                unreachable!("16-weight formats have two granules per block")
            }
            Format::F32(_) | Format::Bf16(_) | Format::F16(_) => each(&|_| (1.0, 0.0)),
        }
    }

    /// The weights as float32 (row-major), for tests and conversions.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_to_f32(r, row);
        }
        out
    }
}

/// Rows `r..r + n` of an array that holds `per_row` elements for each row of a matrix.
#[inline]
fn rows<T>(v: &[T], per_row: usize, r: usize, n: usize) -> &[T] {
    &v[r * per_row..(r + n) * per_row]
}

/// (d·sc, −dmin·mn) of block `b` of a K-quant with 6-bit scales and minimums per 32 weights (`Q4K`, `Q5K`),
/// formed in ggml's order.
pub(super) fn kquant_dm(sm: &[u8], d: &[f32], b: usize) -> (f32, f32) {
    let (sb, j) = (b / 8, b % 8);
    (
        d[2 * sb] * sm[16 * sb + j] as f32,
        -(d[2 * sb + 1] * sm[16 * sb + 8 + j] as f32),
    )
}

pub(super) fn f16_to_f32(v: u16) -> f32 {
    half::f16::from_bits(v).to_f32()
}

/// Block `b`'s (d, m) from float16 pairs (`Q4H`, `Q8H`).
pub(super) fn half_pair(dm: &[u16], b: usize) -> (f32, f32) {
    (f16_to_f32(dm[2 * b]), f16_to_f32(dm[2 * b + 1]))
}

/// Row `r` of a 4-bit format as float32; `dm(b)` is block `b`'s (d, m), `b` counted over the whole matrix.
fn unpack_q4(qs: &[u8], r: usize, nb: usize, out: &mut [f32], dm: impl Fn(usize) -> (f32, f32)) {
    for b in 0..nb {
        let (d, m) = dm(r * nb + b);
        let q = &qs[(r * nb + b) * 16..(r * nb + b + 1) * 16];
        for j in 0..16 {
            out[b * BLOCK + j] = d * (q[j] & 0x0F) as f32 + m;
            out[b * BLOCK + j + 16] = d * (q[j] >> 4) as f32 + m;
        }
    }
}

/// Row `r` of an 8-bit format with one (d, m) per block as float32.
fn unpack_q8(qs: &[i8], r: usize, nb: usize, out: &mut [f32], dm: impl Fn(usize) -> (f32, f32)) {
    for b in 0..nb {
        let (d, m) = dm(r * nb + b);
        let q = &qs[(r * nb + b) * BLOCK..(r * nb + b + 1) * BLOCK];
        for j in 0..BLOCK {
            out[b * BLOCK + j] = d * q[j] as f32 + m;
        }
    }
}

/// One input row rounded to 16-bit integers per block of 32, for the quantized formats.
#[derive(Debug, Clone)]
pub struct QuantizedInput {
    /// `x ≈ sx[b] · q` within block `b`.
    pub q: Vec<i16>,
    pub sx: Vec<f32>,
    /// Exact float32 sum of each block (the offset term of `d·q + m` needs only these).
    pub sum: Vec<f32>,
    /// Float32 sums of each block's two halves (weights 0–15, 16–31), for formats with an offset per 16.
    pub half_sum: Vec<f32>,
    /// (sx, sum) of each block side by side, for kernels that scale a block's (d, m) in one vector product.
    pub ss: Vec<f32>,
}

impl QuantizedInput {
    pub fn new(x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(q) = vnni::quantize_one(x) {
            return q;
        }
        Self::new_portable(x)
    }

    /// [`Self::new`] in plain Rust: the reference the vectorised rounding is tested against, and what CPUs
    /// without AVX-512 run.
    pub fn new_portable(x: &[f32]) -> Self {
        let nb = x.len() / BLOCK;
        let mut q = Vec::with_capacity(x.len());
        let mut sx = Vec::with_capacity(nb);
        let mut sum = Vec::with_capacity(nb);
        let mut half_sum = Vec::with_capacity(2 * nb);
        for block in x.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 32767.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            q.extend(block.iter().map(|v| (v * inv).round() as i16));
            sx.push(scale);
            sum.push(block.iter().sum());
            half_sum.extend(block.chunks_exact(16).map(|h| h.iter().sum::<f32>()));
        }
        let ss = sx.iter().zip(&sum).flat_map(|(&a, &b)| [a, b]).collect();
        Self {
            q,
            sx,
            sum,
            half_sum,
            ss,
        }
    }
}

/// Whether `VIBECHECK_PORTABLE_KERNELS` is set: the portable loops instead of any SIMD kernel (read once).
fn portable_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("VIBECHECK_PORTABLE_KERNELS").is_some())
}

/// The inner-product implementation chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    pub fn detect() -> Kernel {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            if portable_forced() {
                return Kernel::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
            // NEON is part of the base AArch64 architecture: no run-time check.
            #[cfg(target_arch = "aarch64")]
            return Kernel::Neon;
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::Portable
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => "neon",
        }
    }
}

/// `Kernel` methods that run the portable, AVX2 or NEON version of one inner product (same name in `scalar`, `x86`
/// and `neon`).
macro_rules! dispatch {
    ($($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        impl Kernel {
            $(
                $(#[$doc])*
                #[inline]
                $vis fn $name(self, $($arg: $ty),*) $(-> $ret)? {
                    match self {
                        Kernel::Portable => scalar::$name($($arg),*),
                        // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => unsafe { x86::$name($($arg),*) },
                        // SAFETY: NEON is part of AArch64; the arguments are what the portable version takes.
                        #[cfg(target_arch = "aarch64")]
                        Kernel::Neon => unsafe { neon::$name($($arg),*) },
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// Softmax in place (subtract the maximum, exponentiate, normalise).
    pub(crate) fn softmax(s: &mut [f32]);
    /// Attention scores of one query against consecutive keys: `out[j] = Σ_d k[j·stride + d] · q[d]`.
    pub(crate) fn scores_f32(k: &[f32], stride: usize, q: &[f32], out: &mut [f32]);
    /// [`Kernel::scores_f32`] for a float16 cache.
    pub(crate) fn scores_f16(k: &[u16], stride: usize, q: &[f32], out: &mut [f32]);
    /// Attention's weighted sum of consecutive values: `out[d] += Σ_j p[j] · v[j·stride + d]`.
    pub(crate) fn weighted_sum_f32(v: &[f32], stride: usize, p: &[f32], out: &mut [f32]);
    /// [`Kernel::weighted_sum_f32`] for a float16 cache.
    pub(crate) fn weighted_sum_f16(v: &[u16], stride: usize, p: &[f32], out: &mut [f32]);
    pub(crate) fn dot_f32(w: &[f32], x: &[f32]) -> f32;
    fn dot_bf16(w: &[u16], x: &[f32]) -> f32;
    pub(crate) fn dot_f16(w: &[u16], x: &[f32]) -> f32;
    fn dot_q4(qs: &[u8], dm: &[f32], x: &QuantizedInput) -> f32;
    fn dot_q4h(qs: &[u8], dm: &[u16], x: &QuantizedInput) -> f32;
    fn dot_q4k(qs: &[u8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32;
    fn dot_q5k(qs: &[i8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32;
    fn dot_q8(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32;
    fn dot_q8h(qs: &[i8], dm: &[u16], x: &QuantizedInput) -> f32;
    fn dot_q8sub(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32;
    fn dot_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: &QuantizedInput) -> f32;
}
