//! An integer GEMM for prompts on CPUs with AVX-512 VNNI: quantized weights against the same 16-bit activations
//! the decoding kernels use, multiplied with `vpdpwssd` (16-bit pairs summed into 32-bit lanes: twice the
//! multiply-adds per instruction of a float32 FMA), so a prompt's products carry the accuracy of a decoding
//! step's (relative error about 2^-16 of each block's largest input) at twice the float32 GEMM's peak.
//!
//! Layout: the rows are taken sixteen at a time (one 32-bit lane per row). A group's weights are unpacked once
//! per product into a panel of 16-bit values, pairs of neighbouring columns side by side and the sixteen rows
//! across a vector (`[column pair][row]`), with each row's scale `a` and offset `o` per block of 32 (per 16 for
//! the formats with 16-weight blocks) beside it, so that `w = a·q + o` within a block. A tile of up to eight
//! inputs then sweeps the panel: per column pair one vector of weights, each input's pair broadcast from memory,
//! one `vpdpwssd` per input; at the end of each block the integer sums are turned into float32 and scaled by
//! `a·sx` (the input block's scale), and the offsets add `o·Σx` (the input block's exact float32 sum).
//!
//! Integer sums cannot overflow: |q| ≤ 128 and |x16| ≤ 32767, so a block's 32 products stay below 2^28.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::{Format, PackedMatrix, QuantizedInput, SendPtr, BLOCK};

/// Rows per group (one per 32-bit lane of a 512-bit vector).
const GROUP: usize = 16;
/// Inputs per tile.
const TILE: usize = 8;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the integer GEMM off (benchmarks measure the float32 GEMM beside it in one process).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether prompts on quantized weights take this path: the CPU has AVX-512 F/BW and VNNI, and neither
/// `VIBECHECK_PORTABLE_KERNELS` nor [`set_enabled`] switched it off.
pub fn available() -> bool {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ENABLED.load(Ordering::Relaxed)
        && *CPU.get_or_init(|| {
            !super::portable_forced()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
}

/// Whether the CPU has AVX-512 F and BW (the vectorised rounding of inputs), unless `VIBECHECK_PORTABLE_KERNELS`
/// is set.
fn avx512() -> bool {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        !super::portable_forced()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
    })
}

/// One input rounded as [`QuantizedInput::new_portable`] rounds it (the same integers and scales; block sums in
/// another order), with AVX-512: `None` where the CPU lacks it or the input is not whole blocks.
pub(super) fn quantize_one(x: &[f32]) -> Option<QuantizedInput> {
    if !avx512() || !x.len().is_multiple_of(BLOCK) {
        return None;
    }
    let nb = x.len() / BLOCK;
    let (mut q, mut sx, mut sum, mut half_sum) = (
        vec![0; x.len()],
        vec![0.0; nb],
        vec![0.0; nb],
        vec![0.0; 2 * nb],
    );
    // SAFETY: `avx512` checked the CPU features; the arrays hold `nb` whole blocks.
    unsafe { quantize(x, &mut q, &mut sx, &mut sum, &mut half_sum) };
    let ss = sx.iter().zip(&sum).flat_map(|(&a, &b)| [a, b]).collect();
    Some(QuantizedInput {
        q,
        sx,
        sum,
        half_sum,
        ss,
    })
}

/// Where a block's 32 values live in the packed matrix.
#[derive(Clone, Copy)]
enum Values<'a> {
    /// 16 bytes per block: low nibbles weights 0–15, high nibbles 16–31.
    Nibbles(&'a [u8]),
    /// 32 signed bytes per block.
    Bytes(&'a [i8]),
}

/// One group's weights: `q` holds `[block][column pair][row]` as pairs of 16-bit values (one `i32` each),
/// `a` and `o` hold `[granule][row]` (granule: a block, or half a block for the 16-weight formats).
struct Panel {
    q: Vec<i32>,
    a: Vec<f32>,
    o: Vec<f32>,
    /// Whether any offset is not zero.
    offsets: bool,
}

/// A block's 32 values as 16-bit lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_block(values: Values, block: usize) -> __m512i {
    match values {
        Values::Nibbles(qs) => {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                qs.as_ptr().add(block * 16) as *const __m128i
            ));
            let lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
            let hi = _mm256_srli_epi16(v, 4);
            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
        }
        Values::Bytes(qs) => _mm512_cvtepi8_epi16(_mm256_loadu_si256(
            qs.as_ptr().add(block * BLOCK) as *const __m256i,
        )),
    }
}

/// Transposes sixteen vectors of sixteen 32-bit lanes in place (`r[i]` lane `j` ↔ `r[j]` lane `i`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // Within each 128-bit lane: 4 × 4 transposes of four rows at a time.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a, c);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    // `u[4g + j]` holds, in 128-bit lane L, rows 4g..4g+3 of column 4L + j; gather the four groups' lane L.
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let s0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let s1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
        let s2 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let s3 = _mm512_shuffle_i32x4::<0xEE>(c, d);
        r[j] = _mm512_shuffle_i32x4::<0x88>(s0, s2);
        r[4 + j] = _mm512_shuffle_i32x4::<0xDD>(s0, s2);
        r[8 + j] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
        r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(s1, s3);
    }
}

/// Unpacks rows `r0..r0 + 16` (rows past the matrix as zeros) into `panel`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fill_panel(p: &PackedMatrix, values: Values, per16: bool, r0: usize, panel: &mut Panel) {
    let nb = p.cols / BLOCK;
    let n = GROUP.min(p.rows - r0);
    let granules = if per16 { 2 * nb } else { nb };
    panel.q.resize(nb * 16 * GROUP, 0);
    panel.a.resize(granules * GROUP, 0.0);
    panel.o.resize(granules * GROUP, 0.0);
    for b in 0..nb {
        let mut v = [_mm512_setzero_si512(); 16];
        for (i, v) in v.iter_mut().enumerate().take(n) {
            *v = load_block(values, (r0 + i) * nb + b);
        }
        transpose16(&mut v);
        let dst = panel.q.as_mut_ptr().add(b * 16 * GROUP);
        for (k, v) in v.iter().enumerate() {
            _mm512_storeu_si512(dst.add(k * GROUP) as *mut __m512i, *v);
        }
    }
    panel.a.fill(0.0);
    panel.o.fill(0.0);
    for i in 0..n {
        p.row_granules(r0 + i, per16, |g, a, o| {
            panel.a[g * GROUP + i] = a;
            panel.o[g * GROUP + i] = o;
        });
    }
    panel.offsets = panel.o.iter().any(|&o| o != 0.0);
}

/// Inputs rounded to 16-bit integers per block of 32, as [`QuantizedInput`] rounds one (the same values and
/// scales), for a whole prompt in four arrays.
struct Inputs {
    cols: usize,
    /// `x ≈ sx · q` within each block; `m × cols`.
    q: Vec<i16>,
    /// `m × cols/32`.
    sx: Vec<f32>,
    /// Each block's float32 sum; `m × cols/32`.
    sum: Vec<f32>,
    /// Each block's halves' float32 sums (weights 0–15, 16–31); `m × cols/16`.
    half_sum: Vec<f32>,
}

impl Inputs {
    fn new(x: &[f32], cols: usize) -> Self {
        let (m, nb) = (x.len() / cols, cols / BLOCK);
        let mut s = Inputs {
            cols,
            q: vec![0; m * cols],
            sx: vec![0.0; m * nb],
            sum: vec![0.0; m * nb],
            half_sum: vec![0.0; 2 * m * nb],
        };
        let rows = (32768 / cols).max(1);
        x.par_chunks(rows * cols)
            .zip(s.q.par_chunks_mut(rows * cols))
            .zip(s.sx.par_chunks_mut(rows * nb))
            .zip(s.sum.par_chunks_mut(rows * nb))
            .zip(s.half_sum.par_chunks_mut(2 * rows * nb))
            .for_each(|((((x, q), sx), sum), half_sum)| {
                // SAFETY: `available` checked AVX-512 F; the slices hold whole blocks.
                unsafe { quantize(x, q, sx, sum, half_sum) }
            });
        s
    }
}

/// Rounds blocks of 32 to 16-bit integers: `QuantizedInput::new`'s arithmetic, eight blocks' worth of lanes at a
/// time (the block maximum, `amax / 32767`, its reciprocal, and each value times it rounded half away from zero
/// are the same float32 operations, so the same integers).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize(
    x: &[f32],
    q: &mut [i16],
    sx: &mut [f32],
    sum: &mut [f32],
    half_sum: &mut [f32],
) {
    let below_half = _mm512_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
    let sign = _mm512_set1_epi32(i32::MIN);
    for (b, block) in x.chunks_exact(BLOCK).enumerate() {
        let v0 = _mm512_loadu_ps(block.as_ptr());
        let v1 = _mm512_loadu_ps(block.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let scale = amax / 32767.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let round = |v: __m512| {
            // Half away from zero: add just under ½ with the value's sign, then truncate.
            let t = _mm512_mul_ps(v, inv);
            let half = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(t), sign),
                _mm512_castps_si512(below_half),
            ));
            _mm512_cvttps_epi32(_mm512_add_ps(t, half))
        };
        let out = q.as_mut_ptr().add(b * BLOCK);
        _mm256_storeu_si256(out as *mut __m256i, _mm512_cvtsepi32_epi16(round(v0)));
        _mm256_storeu_si256(
            out.add(16) as *mut __m256i,
            _mm512_cvtsepi32_epi16(round(v1)),
        );
        sx[b] = scale;
        let (h0, h1) = (_mm512_reduce_add_ps(v0), _mm512_reduce_add_ps(v1));
        half_sum[2 * b] = h0;
        half_sum[2 * b + 1] = h1;
        sum[b] = h0 + h1;
    }
}

/// `acc += Σ pairs of w × the pair at x` (the pair broadcast to every lane), as `vpdpwssd` with the broadcast
/// folded into its memory operand. Assembly on purpose: seen as an intrinsic, LLVM splits the instruction into
/// `vpmaddwd` + `vpaddd` on CPUs it does not tune for (twice the instructions; measured 35 % slower here).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: __m512i, w: __m512i, x: *const i16) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {w}, dword ptr [{x}]{{1to16}}",
        acc = inout(zmm_reg) acc,
        w = in(zmm_reg) w,
        x = in(reg) x,
        options(pure, readonly, nostack, preserves_flags),
    );
    acc
}

/// The integer sums of one group's column pairs `k0..k1` of block `b` against `T` inputs (from zero).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn block_sums<const T: usize>(
    wq: *const i32,
    xq: *const i16,
    cols: usize,
    b: usize,
    k0: usize,
    k1: usize,
) -> [__m512i; T] {
    let mut s = [_mm512_setzero_si512(); T];
    for k in k0..k1 {
        let w = _mm512_loadu_si512(wq.add((b * 16 + k) * GROUP) as *const __m512i);
        for (t, s) in s.iter_mut().enumerate() {
            *s = dpwssd(*s, w, xq.add(t * cols + b * BLOCK + 2 * k));
        }
    }
    s
}

/// One group against inputs `t0..t0 + T`: writes `out[(t0 + t)·rows + r0..][..n]`. `PER16`: a scale and offset
/// per 16 weights; `OFFSET`: whether the offsets are not all zero (Q8_0, Q6_K and Q3_K have none).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const T: usize, const PER16: bool, const OFFSET: bool>(
    panel: &Panel,
    x: &Inputs,
    t0: usize,
    out: *mut f32,
    rows: usize,
    r0: usize,
    n: usize,
) {
    let (cols, nb) = (x.cols, x.cols / BLOCK);
    let xq = x.q.as_ptr().add(t0 * cols);
    let sx = x.sx.as_ptr().add(t0 * nb);
    let sum = x.sum.as_ptr().add(t0 * nb);
    let half_sum = x.half_sum.as_ptr().add(2 * t0 * nb);
    let mut acc = [_mm512_setzero_ps(); T];
    let (wq, pa, po) = (panel.q.as_ptr(), panel.a.as_ptr(), panel.o.as_ptr());
    for b in 0..nb {
        if PER16 {
            // (a₀·Σ₀ + a₁·Σ₁)·sx: the halves' scales differ, the input's does not.
            let s0 = block_sums::<T>(wq, xq, cols, b, 0, 8);
            let a0 = _mm512_loadu_ps(pa.add(2 * b * GROUP));
            let mut v: [__m512; T] =
                std::array::from_fn(|t| _mm512_mul_ps(_mm512_cvtepi32_ps(s0[t]), a0));
            let s1 = block_sums::<T>(wq, xq, cols, b, 8, 16);
            let a1 = _mm512_loadu_ps(pa.add((2 * b + 1) * GROUP));
            for t in 0..T {
                v[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), a1, v[t]);
                acc[t] = _mm512_fmadd_ps(v[t], _mm512_set1_ps(*sx.add(t * nb + b)), acc[t]);
            }
            if OFFSET {
                let o0 = _mm512_loadu_ps(po.add(2 * b * GROUP));
                let o1 = _mm512_loadu_ps(po.add((2 * b + 1) * GROUP));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let h = half_sum.add(2 * (t * nb + b));
                    *acc = _mm512_fmadd_ps(o0, _mm512_set1_ps(*h), *acc);
                    *acc = _mm512_fmadd_ps(o1, _mm512_set1_ps(*h.add(1)), *acc);
                }
            }
        } else {
            let s = block_sums::<T>(wq, xq, cols, b, 0, 16);
            let a = _mm512_loadu_ps(pa.add(b * GROUP));
            for t in 0..T {
                let scale = _mm512_mul_ps(a, _mm512_set1_ps(*sx.add(t * nb + b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), scale, acc[t]);
            }
            if OFFSET {
                let o = _mm512_loadu_ps(po.add(b * GROUP));
                for (t, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(o, _mm512_set1_ps(*sum.add(t * nb + b)), *acc);
                }
            }
        }
    }
    let mask: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
    for (t, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add((t0 + t) * rows + r0), mask, *acc);
    }
}

/// Inputs `t0..t0 + count` (up to [`TILE`]) against one group.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_any<const PER16: bool, const OFFSET: bool>(
    panel: &Panel,
    x: &Inputs,
    t0: usize,
    count: usize,
    out: *mut f32,
    rows: usize,
    r0: usize,
    n: usize,
) {
    macro_rules! go {
        ($t:literal) => {
            tile::<$t, PER16, OFFSET>(panel, x, t0, out, rows, r0, n)
        };
    }
    match count {
        8 => go!(8),
        7 => go!(7),
        6 => go!(6),
        5 => go!(5),
        4 => go!(4),
        3 => go!(3),
        2 => go!(2),
        1 => go!(1),
        _ => unreachable!("tiles hold 1 to {TILE} inputs"),
    }
}

/// One instance of [`tile_any`].
type TileFn = unsafe fn(&Panel, &Inputs, usize, usize, *mut f32, usize, usize, usize);

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for the quantized formats (`x`: `m × cols`, `out`: `m × rows`). Callers
/// check [`available`]; the dense formats return `false` (nothing written).
pub fn matmul(p: &PackedMatrix, x: &[f32], out: &mut [f32]) -> bool {
    let (values, per16) = match &p.format {
        Format::Q4 { qs, .. } | Format::Q4H { qs, .. } | Format::Q4K { qs, .. } => {
            (Values::Nibbles(qs), false)
        }
        Format::Q8 { qs, .. } | Format::Q8H { qs, .. } | Format::Q5K { qs, .. } => {
            (Values::Bytes(qs), false)
        }
        Format::Q8X16 { qs, .. } | Format::Q8Sub { qs, .. } => (Values::Bytes(qs), true),
        Format::F32 { .. } | Format::Bf16 { .. } | Format::F16 { .. } => return false,
    };
    assert!(available(), "the integer GEMM needs AVX-512 VNNI");
    let (rows, cols) = (p.rows, p.cols);
    let m = x.len() / cols;
    assert_eq!(x.len(), m * cols, "input is not m × cols");
    assert_eq!(out.len(), m * rows, "output is not m × rows");
    let inputs = Inputs::new(x, cols);
    debug_assert_eq!(inputs.q.len(), x.len());
    let dst = SendPtr(out.as_mut_ptr());
    (0..rows.div_ceil(GROUP)).into_par_iter().for_each_init(
        || Panel {
            q: Vec::new(),
            a: Vec::new(),
            o: Vec::new(),
            offsets: true,
        },
        |panel, gi| {
            let r0 = gi * GROUP;
            let n = GROUP.min(rows - r0);
            let out = dst.get();
            // SAFETY: `available` checked the CPU features; the panel covers rows r0..r0 + n, and the output
            // rows r0..r0 + n of every input belong to this group alone.
            unsafe {
                fill_panel(p, values, per16, r0, panel);
                for t0 in (0..m).step_by(TILE) {
                    let count = TILE.min(m - t0);
                    let f: TileFn = match (per16, panel.offsets) {
                        (true, true) => tile_any::<true, true>,
                        (true, false) => tile_any::<true, false>,
                        (false, true) => tile_any::<false, true>,
                        (false, false) => tile_any::<false, false>,
                    };
                    f(panel, &inputs, t0, count, out, rows, r0, n);
                }
            }
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::sampling::Rng::values(seed, n)
    }

    /// A prompt's rounding, and a lone input's with AVX-512, are the portable rounding's, value for value (ties
    /// at ½ included).
    #[test]
    fn a_prompt_is_rounded_as_each_input_alone() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        let cols = 96;
        let mut x = random(5 * cols, 1);
        // A block whose largest value makes the scale exactly 1, so values land on halves.
        x[..8].copy_from_slice(&[32767.0, 2.5, -3.5, 0.5, -0.5, 1.5, -32767.0, 0.49999997]);
        x[40] = 0.0; // and one block of zeros
        x[32..64].fill(0.0);
        let batch = Inputs::new(&x, cols);
        for (t, row) in x.chunks(cols).enumerate() {
            let one = QuantizedInput::new_portable(row);
            // A lone input (decoding) is rounded by the same vectorised code: the same values too.
            let lone = QuantizedInput::new(row);
            assert_eq!((&lone.q, &lone.sx), (&one.q, &one.sx), "input {t} alone");
            assert_eq!(batch.q[t * cols..(t + 1) * cols], one.q[..], "input {t}");
            assert_eq!(batch.sx[t * 3..(t + 1) * 3], one.sx[..], "input {t}");
            // Sums in another order: within float32 rounding of the block's magnitude.
            for ((a, b), block) in batch.sum[t * 3..(t + 1) * 3]
                .iter()
                .zip(&one.sum)
                .zip(row.chunks(32))
            {
                let magnitude: f32 = block.iter().map(|v| v.abs()).sum();
                assert!(
                    (a - b).abs() <= 1e-6 * magnitude,
                    "input {t}: sum {a} vs {b}"
                );
            }
        }
        for (t, row) in x.chunks(cols).enumerate() {
            let one = QuantizedInput::new_portable(row);
            let halves = batch.half_sum[t * 6..(t + 1) * 6].iter().zip(&one.half_sum);
            for ((a, b), half) in halves.zip(row.chunks(16)) {
                let magnitude: f32 = half.iter().map(|v| v.abs()).sum();
                assert!(
                    (a - b).abs() <= 1e-6 * magnitude,
                    "input {t}: half sum {a} vs {b}"
                );
            }
        }
        assert_eq!(batch.q[..8], [32767, 3, -4, 1, -1, 2, -32767, 0]);
    }

    /// Every quantized format (those of GGUF files and those `--quantize` makes) through the integer GEMM against
    /// the float32 GEMM on the same weights, for row counts that fill groups of 16 or not, input counts that fill
    /// tiles of 8 or not, and prompts whose rounding is split across threads (more than 32 768 values).
    #[test]
    fn the_integer_gemm_computes_what_the_float32_gemm_computes() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        for (m, rows, cols) in [
            (32, 16, 256),
            (37, 45, 512),
            (9, 3, 768),
            (64, 100, 256),
            (48, 5, 768),
        ] {
            let w = Tensor::from_vec(random(rows * cols, 2), (rows, cols), &Device::Cpu).unwrap();
            let x = random(m * cols, 3);
            let dense = PackedMatrix::from_dense(&w).unwrap();
            let rounded = crate::kernels::Quantize::ALL.map(|k| dense.quantized(k).unwrap());
            for p in rounded.into_iter().chain(
                [
                    GgmlDType::Q4_0,
                    GgmlDType::Q4_1,
                    GgmlDType::Q5_0,
                    GgmlDType::Q5_1,
                    GgmlDType::Q8_0,
                    GgmlDType::Q4K,
                    GgmlDType::Q5K,
                    GgmlDType::Q6K,
                    GgmlDType::Q3K,
                    GgmlDType::Q2K,
                ]
                .map(|dtype| {
                    PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap()
                }),
            ) {
                let name = p.format_name();
                let mut int = vec![f32::NAN; m * rows];
                assert!(matmul(&p, &x, &mut int), "{name} has no integer GEMM");
                let mut float = vec![0f32; m * rows];
                p.matmul_gemm(&x, m, &mut float);
                let wf = p.to_f32();
                for t in 0..m {
                    for r in 0..rows {
                        let magnitude: f32 = (0..cols)
                            .map(|c| (wf[r * cols + c] * x[t * cols + c]).abs())
                            .sum();
                        let (a, b) = (int[t * rows + r], float[t * rows + r]);
                        assert!(
                            (a - b).abs() <= 5e-5 * magnitude,
                            "{name} m={m} rows={rows} cols={cols} [{t}][{r}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
