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

mod format;
mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
mod pack;
mod quantize;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use format::Format;
pub(crate) use format::{half_pair, kquant_dm};
pub use matmul::{integer_gemm, set_integer_gemm, set_row_groups, GEMM_MIN_INPUTS};
pub use pack::PackError;
pub use quantize::Quantize;

/// A `rows × cols` weight matrix ready for [`PackedMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub format: Format,
}

/// A pointer to an output handed to the threads of one operation, each of which writes a disjoint part of it
/// (the GEMMs' panels and groups of rows, the attention's units); the users say why their parts are disjoint.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only written through, by threads writing disjoint parts (see each user).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared between threads only to write disjoint parts.
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
        self.format.name()
    }

    /// Whether any weight or scale is NaN or infinite (what a diverged training step saves). One pass over the
    /// floats: every value of a dense matrix, only the scales of a quantized one (its integers are always finite).
    pub fn has_non_finite(&self) -> bool {
        self.format.has_non_finite()
    }

    /// Whether products round the inputs to 16-bit integers (the quantized formats).
    pub fn is_quantized(&self) -> bool {
        self.format.is_quantized()
    }

    /// Bytes of weight data read by one matrix–vector product.
    pub fn bytes(&self) -> usize {
        self.format.bytes()
    }

    /// The matrices' rows one after another in one matrix, when they all have the same format and width.
    pub fn stack_rows(parts: Vec<PackedMatrix>) -> Option<PackedMatrix> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let extra = (rows - parts[0].rows) * cols;
        let format = Format::stack(parts.into_iter().map(|p| p.format).collect(), extra)?;
        Some(PackedMatrix { rows, cols, format })
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
