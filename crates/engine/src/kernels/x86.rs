//! AVX2 + FMA + F16C inner products. Callers must have checked the CPU features (`Kernel::detect`).
//! Every function here is `unsafe` only because of its CPU-feature contract; the bodies are plain intrinsics.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::{QuantizedInput, BLOCK};

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
        a1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(wp.add(i + 8)),
            _mm256_loadu_ps(xp.add(i + 8)),
            a1,
        );
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(a0, a1));
    while i < n {
        s += w[i] * x[i];
        i += 1;
    }
    s
}

/// Eight float32 lanes from a float32 cache.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// Eight float32 lanes from a float16 cache.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Attention over a cache of `$t`: `$scores` (a query against consecutive keys, four keys per pass and one
/// horizontal reduction for the four) and `$wsum` (the probability-weighted sum of consecutive values, the sum
/// kept in registers across all the keys instead of loaded and stored per key).
macro_rules! attention_kernels {
    ($scores:ident, $wsum:ident, $t:ty, $load:ident, $widen:expr) => {
        #[doc = concat!("`out[j] = Σ_d k[j·stride + d] · q[d]` for a `", stringify!($t), "` cache.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $scores(k: &[$t], stride: usize, q: &[f32], out: &mut [f32]) {
            let (hd, n) = (q.len(), out.len());
            assert!(n == 0 || k.len() >= (n - 1) * stride + hd, "keys past the cache");
            let (kp, qp) = (k.as_ptr(), q.as_ptr());
            let body = hd - hd % 8;
            let tail = |j: usize| -> f32 { (body..hd).map(|d| $widen(k[j * stride + d]) * q[d]).sum() };
            let mut j = 0;
            while j + 4 <= n {
                let mut a = [_mm256_setzero_ps(); 4];
                let mut d = 0;
                while d < body {
                    let qv = _mm256_loadu_ps(qp.add(d));
                    for (i, a) in a.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps($load(kp.add((j + i) * stride + d)), qv, *a);
                    }
                    d += 8;
                }
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                _mm_storeu_ps(out.as_mut_ptr().add(j), sums);
                if body < hd {
                    for i in 0..4 {
                        out[j + i] += tail(j + i);
                    }
                }
                j += 4;
            }
            while j < n {
                let mut a = _mm256_setzero_ps();
                let mut d = 0;
                while d < body {
                    a = _mm256_fmadd_ps($load(kp.add(j * stride + d)), _mm256_loadu_ps(qp.add(d)), a);
                    d += 8;
                }
                out[j] = hsum(a) + tail(j);
                j += 1;
            }
        }

        #[doc = concat!("`out[d] += Σ_j p[j] · v[j·stride + d]` for a `", stringify!($t), "` cache.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $wsum(v: &[$t], stride: usize, p: &[f32], out: &mut [f32]) {
            let (hd, n) = (out.len(), p.len());
            assert!(n == 0 || v.len() >= (n - 1) * stride + hd, "values past the cache");
            let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
            let mut c = 0;
            while c + 64 <= hd {
                let mut a: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(op.add(c + 8 * i)));
                for (j, &pj) in p.iter().enumerate() {
                    let w = _mm256_set1_ps(pj);
                    for (i, a) in a.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps($load(vp.add(j * stride + c + 8 * i)), w, *a);
                    }
                }
                for (i, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(op.add(c + 8 * i), *a);
                }
                c += 64;
            }
            while c + 8 <= hd {
                let mut a = _mm256_loadu_ps(op.add(c));
                for (j, &pj) in p.iter().enumerate() {
                    a = _mm256_fmadd_ps($load(vp.add(j * stride + c)), _mm256_set1_ps(pj), a);
                }
                _mm256_storeu_ps(op.add(c), a);
                c += 8;
            }
            for d in c..hd {
                for (j, &pj) in p.iter().enumerate() {
                    out[d] = pj.mul_add($widen(v[j * stride + d]), out[d]);
                }
            }
        }
    };
}

/// `e^x` in eight lanes for `x ≤ 0` (softmax's shifted scores): `2^n · p(r)` with `x = n·ln 2 + r`, `|r| ≤ ½ ln 2`
/// (ln 2 split in two parts so `r` is exact), `p` Cephes' degree-7 polynomial for `expf` (about 1 ulp); lanes
/// below −87.3 (where float32 `e^x` underflows) give 0, NaN lanes stay NaN (as the scalar `exp` keeps them).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let floor = _mm256_set1_ps(-87.33);
    // `max_ps` returns its second operand when either is NaN: the NaN goes on.
    let x = _mm256_max_ps(floor, x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
    // Zero where x ≤ −87.33 (after the clamp: exactly there); NaN compares unordered and is kept.
    _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_NLE_UQ>(x, floor))
}

/// Softmax in place: subtract the maximum, exponentiate ([`exp8`]), scale by the sum's reciprocal.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(s: &mut [f32]) {
    let n = s.len();
    let p = s.as_mut_ptr();
    let body = n - n % 8;
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < body {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
    let max = lanes
        .iter()
        .chain(&s[body..])
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let (m, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    i = 0;
    while i < body {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
        _mm256_storeu_ps(p.add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut sum = hsum(acc);
    for v in &mut s[body..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    let iv = _mm256_set1_ps(inv);
    i = 0;
    while i < body {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
        i += 8;
    }
    for v in &mut s[body..] {
        *v *= inv;
    }
}

attention_kernels!(scores_f32, weighted_sum_f32, f32, load8_f32, |x: f32| x);
attention_kernels!(scores_f16, weighted_sum_f16, u16, load8_f16, |x: u16| {
    half::f16::from_bits(x).to_f32()
});

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16(p: *const u16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16(w: &[u16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        a0 = _mm256_fmadd_ps(load_bf16(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
        a1 = _mm256_fmadd_ps(load_bf16(wp.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), a1);
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(a0, a1));
    while i < n {
        s += f32::from_bits(u32::from(w[i]) << 16) * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(wp.add(i) as *const __m128i);
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), a0);
        i += 8;
    }
    let mut s = hsum(a0);
    while i < n {
        s += half::f16::from_bits(w[i]).to_f32() * x[i];
        i += 1;
    }
    s
}

/// The 32 weights of a 4-bit block as 16-bit lanes: weights 0–15 (low nibbles) and 16–31 (high nibbles).
/// Widening the bytes first lets one shift give the high nibbles without a second mask, and one widening serve
/// both halves. `mask` is `0x0F` in every 16-bit lane.
///
/// The widening is written as assembly on purpose: seen as an intrinsic, LLVM narrows the mask and shift back to
/// bytes and widens twice (five operations instead of three; measured slower).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles(q: *const u8, mask: __m256i) -> (__m256i, __m256i) {
    let q16: __m256i;
    std::arch::asm!(
        "vpmovzxbw {out}, xmmword ptr [{src}]",
        out = out(ymm_reg) q16,
        src = in(reg) q,
        options(pure, readonly, nostack, preserves_flags),
    );
    (_mm256_and_si256(q16, mask), _mm256_srli_epi16(q16, 4))
}

/// A 4-bit block's weights as two vectors of 16-bit lanes (weights 0–15 and 16–31).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_q4(q: *const u8) -> (__m256i, __m256i) {
    nibbles(q, _mm256_set1_epi16(0x0F))
}

/// A signed 8-bit block's weights as two vectors of 16-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_q8(q: *const i8) -> (__m256i, __m256i) {
    (
        _mm256_cvtepi8_epi16(_mm_loadu_si128(q as *const __m128i)),
        _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(16) as *const __m128i)),
    )
}

/// Lane 0: `d·sx`, lane 1: `m·sum` of one block of a format with float16 scales (`dm`: the block's (d, m) as
/// float16) against one input (`xs`: its (sx, sum)). Both products are the float32 ones the float32-scaled
/// kernels form, so the block's arithmetic is theirs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_scales(dm: *const u16, xs: *const f32) -> __m128 {
    let h = _mm_cvtsi32_si128((dm as *const i32).read_unaligned());
    let xs = _mm_castpd_ps(_mm_load_sd(xs as *const f64));
    _mm_mul_ps(_mm_cvtph_ps(h), xs)
}

/// A block's `d·sx` across a vector and its `m·sum`, for (d, m) as float32 (`Q4`, `Q8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_scales(dm: *const f32, x: &QuantizedInput, b: usize) -> (__m256, f32) {
    let (sx, sum) = (*x.sx.get_unchecked(b), *x.sum.get_unchecked(b));
    (_mm256_set1_ps(*dm * sx), *dm.add(1) * sum)
}

/// A block's `d·sx` across a vector and its `m·sum`, for (d, m) as float16 (`Q4H`, `Q8H`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_scales(dm: *const u16, x: &QuantizedInput, b: usize) -> (__m256, f32) {
    let p = half_scales(dm, x.ss.as_ptr().add(2 * b));
    (_mm256_broadcastss_ps(p), _mm_cvtss_f32(_mm_movehdup_ps(p)))
}

/// The one-row, four-row and four-input kernels of a quantized format with one (d, m) per 32 weights (`Q4`,
/// `Q8`, `Q4H`, `Q8H`): Σ_b d_b·sx_b·(Σ q·x16) + m_b·sum_b. The four-row kernel loads each input block once for
/// four rows (four independent sums) and prefetches the next four rows; the four-input kernel unpacks each block
/// once for four inputs; each row's arithmetic is the one-row kernel's in all three. A macro, not a generic
/// function, so each format's loop is compiled as if written out (generic versions measured 2–9 % slower).
macro_rules! block_kernels {
    ($dot:ident, $rows4:ident, $dot4:ident, $elem:ty, $bytes:expr, $pair:ident, $dm:ty, $scales:ident) => {
        #[doc = concat!("One row of `", stringify!($elem), "` weights (see `block_kernels!`).")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(qs: &[$elem], dm: &[$dm], x: &QuantizedInput) -> f32 {
            let nb = x.sx.len();
            debug_assert!(qs.len() >= nb * $bytes && dm.len() >= nb * 2 && x.q.len() >= nb * BLOCK);
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            let (qp, dp, xp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr());
            for b in 0..nb {
                let (wa, wb) = $pair(qp.add(b * $bytes));
                let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
                let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
                let s = _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wb, xb));
                let (scale, off) = $scales(dp.add(2 * b), x, b);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
                offset += off;
            }
            hsum(acc) + offset
        }

        #[doc = concat!("[`", stringify!($dot), "`] for four weight rows (`row_q`/`row_dm` apart) against one input.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $rows4(
            qs: &[$elem],
            dm: &[$dm],
            row_q: usize,
            row_dm: usize,
            x: &QuantizedInput,
        ) -> [f32; 4] {
            let nb = x.sx.len();
            debug_assert!(qs.len() >= 3 * row_q + nb * $bytes && dm.len() >= 3 * row_dm + nb * 2);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offset = [0f32; 4];
            let (qp, dp, xp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr());
            for b in 0..nb {
                // The four rows are contiguous but read at four places at once, which the hardware prefetcher
                // does not follow: fetch the next four rows ahead, the lines this block's four rows take (four
                // rows of a block are `4 · $bytes` bytes of `qs`).
                for line in 0..(4 * $bytes) / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        qp.wrapping_add(4 * row_q + b * 4 * $bytes + 64 * line) as *const i8
                    );
                }
                _mm_prefetch::<_MM_HINT_T0>(dp.wrapping_add(4 * row_dm + b * 8) as *const i8);
                let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
                let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
                for r in 0..4 {
                    let (wa, wb) = $pair(qp.add(r * row_q + b * $bytes));
                    let s = _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wb, xb));
                    let (scale, off) = $scales(dp.add(r * row_dm + 2 * b), x, b);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[r]);
                    offset[r] += off;
                }
            }
            [0, 1, 2, 3].map(|r| hsum(acc[r]) + offset[r])
        }

        #[doc = concat!("[`", stringify!($dot), "`] of one weight row with four inputs, the weights unpacked once per block.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot4(qs: &[$elem], dm: &[$dm], x: [&QuantizedInput; 4]) -> [f32; 4] {
            let nb = x[0].sx.len();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offset = [0f32; 4];
            let (qp, dp) = (qs.as_ptr(), dm.as_ptr());
            for b in 0..nb {
                let (wa, wb) = $pair(qp.add(b * $bytes));
                for k in 0..4 {
                    let xp = x[k].q.as_ptr().add(b * BLOCK);
                    let xa = _mm256_loadu_si256(xp as *const __m256i);
                    let xb = _mm256_loadu_si256(xp.add(16) as *const __m256i);
                    let s = _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wb, xb));
                    let (scale, off) = $scales(dp.add(2 * b), x[k], b);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
                    offset[k] += off;
                }
            }
            [0, 1, 2, 3].map(|k| hsum(acc[k]) + offset[k])
        }
    };
}

block_kernels!(
    dot_q4,
    dot_q4_rows4,
    dot4_q4,
    u8,
    16,
    pair_q4,
    f32,
    f32_scales
);
block_kernels!(
    dot_q8,
    dot_q8_rows4,
    dot4_q8,
    i8,
    BLOCK,
    pair_q8,
    f32,
    f32_scales
);
block_kernels!(
    dot_q4h,
    dot_q4h_rows4,
    dot4_q4h,
    u8,
    16,
    pair_q4,
    u16,
    f16_scales
);
block_kernels!(
    dot_q8h,
    dot_q8h_rows4,
    dot4_q8h,
    i8,
    BLOCK,
    pair_q8,
    u16,
    f16_scales
);

/// One Q4_K superblock's eight block scales `d·sc·sx` and offset terms `dmin·mn·sum` against one input (`sm`: the
/// superblock's eight 6-bit scales then eight 6-bit minimums, `d`: its (d, dmin), `sx`/`sum`: the input's eight
/// blocks). `d·sc` and `dmin·mn` are the float32 products ggml's dequantization forms.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4k_scales(
    sm: *const u8,
    d: *const f32,
    sx: *const f32,
    sum: *const f32,
) -> (__m256, __m256) {
    let widen = |p: *const u8| {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    };
    let d1 = _mm256_mul_ps(_mm256_set1_ps(*d), widen(sm));
    let m1 = _mm256_mul_ps(_mm256_set1_ps(*d.add(1)), widen(sm.add(8)));
    (
        _mm256_mul_ps(d1, _mm256_loadu_ps(sx)),
        _mm256_mul_ps(m1, _mm256_loadu_ps(sum)),
    )
}

/// The one-row, four-row and four-input kernels of a K-quant kept with its 6-bit scales and minimums per 32 weights
/// and (d, dmin) per 256 (`Q4K`: 4-bit values; `Q5K`: 5-bit values in bytes). A macro for the reason given at
/// `block_kernels!`.
macro_rules! kquant_kernels {
    ($dot:ident, $rows4:ident, $dot4:ident, $elem:ty, $bytes:expr, $pair:ident, $what:literal) => {
        #[doc = concat!("Σ over ", $what, " superblocks kept compact (values, the 6-bit scales and minimums, (d, dmin)): eight blocks' scales formed in one vector per superblock, each block as in the one-row kernels.")]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $dot(qs: &[$elem], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
    let ns = x.sx.len() / 8;
    debug_assert!(qs.len() >= ns * 8 * $bytes && sm.len() >= ns * 16 && d.len() >= ns * 2);
    let (mut acc, mut off) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
    let mut scale = [0f32; 8];
    for sb in 0..ns {
        let (sc, mn) = q4k_scales(
            sm.as_ptr().add(16 * sb),
            d.as_ptr().add(2 * sb),
            x.sx.as_ptr().add(8 * sb),
            x.sum.as_ptr().add(8 * sb),
        );
        off = _mm256_sub_ps(off, mn);
        _mm256_storeu_ps(scale.as_mut_ptr(), sc);
        for (i, scale) in scale.iter().enumerate() {
            let b = 8 * sb + i;
            let (lo, hi) = $pair(qp.add(b * $bytes));
            let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
            let s = _mm256_add_epi32(_mm256_madd_epi16(lo, xa), _mm256_madd_epi16(hi, xb));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcast_ss(scale), acc);
        }
    }
    hsum(acc) + hsum(off)
}

        #[doc = concat!("[`", stringify!($dot), "`] for four weight rows (`row_q`, `row_sm`, `row_d` apart) against one input, the next four rows prefetched; each row's arithmetic is the one-row kernel's.")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
        pub unsafe fn $rows4(
    qs: &[$elem],
    sm: &[u8],
    d: &[f32],
    row_q: usize,
    row_sm: usize,
    row_d: usize,
    x: &QuantizedInput,
) -> [f32; 4] {
    let ns = x.sx.len() / 8;
    debug_assert!(qs.len() >= 3 * row_q + ns * 8 * $bytes && sm.len() >= 3 * row_sm + ns * 16);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut off = [_mm256_setzero_ps(); 4];
    let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
    let mut scale = [[0f32; 8]; 4];
    for sb in 0..ns {
        for r in 0..4 {
            let (sc, mn) = q4k_scales(
                sm.as_ptr().add(r * row_sm + 16 * sb),
                d.as_ptr().add(r * row_d + 2 * sb),
                x.sx.as_ptr().add(8 * sb),
                x.sum.as_ptr().add(8 * sb),
            );
            off[r] = _mm256_sub_ps(off[r], mn);
            _mm256_storeu_ps(scale[r].as_mut_ptr(), sc);
        }
        for i in 0..8 {
            let b = 8 * sb + i;
            // The next four rows' lines for this block (four rows of a block are `4 · $bytes` bytes).
            for line in 0..(4 * $bytes) / 64 {
                _mm_prefetch::<_MM_HINT_T0>(qp.wrapping_add(4 * row_q + b * 4 * $bytes + 64 * line) as *const i8);
            }
            let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
            for r in 0..4 {
                let (lo, hi) = $pair(qp.add(r * row_q + b * $bytes));
                let s = _mm256_add_epi32(_mm256_madd_epi16(lo, xa), _mm256_madd_epi16(hi, xb));
                acc[r] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s),
                    _mm256_broadcast_ss(&scale[r][i]),
                    acc[r],
                );
            }
        }
    }
    [0, 1, 2, 3].map(|r| hsum(acc[r]) + hsum(off[r]))
}

        #[doc = concat!("[`", stringify!($dot), "`] of one weight row with four inputs, the weights unpacked once per block.")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::needless_range_loop)]
        pub unsafe fn $dot4(qs: &[$elem], sm: &[u8], d: &[f32], x: [&QuantizedInput; 4]) -> [f32; 4] {
    let ns = x[0].sx.len() / 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut off = [_mm256_setzero_ps(); 4];
    let qp = qs.as_ptr();
    let mut scale = [[0f32; 8]; 4];
    for sb in 0..ns {
        for k in 0..4 {
            let (sc, mn) = q4k_scales(
                sm.as_ptr().add(16 * sb),
                d.as_ptr().add(2 * sb),
                x[k].sx.as_ptr().add(8 * sb),
                x[k].sum.as_ptr().add(8 * sb),
            );
            off[k] = _mm256_sub_ps(off[k], mn);
            _mm256_storeu_ps(scale[k].as_mut_ptr(), sc);
        }
        for i in 0..8 {
            let b = 8 * sb + i;
            let (lo, hi) = $pair(qp.add(b * $bytes));
            for k in 0..4 {
                let xp = x[k].q.as_ptr().add(b * BLOCK);
                let xa = _mm256_loadu_si256(xp as *const __m256i);
                let xb = _mm256_loadu_si256(xp.add(16) as *const __m256i);
                let s = _mm256_add_epi32(_mm256_madd_epi16(lo, xa), _mm256_madd_epi16(hi, xb));
                acc[k] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s),
                    _mm256_broadcast_ss(&scale[k][i]),
                    acc[k],
                );
            }
        }
    }
    [0, 1, 2, 3].map(|k| hsum(acc[k]) + hsum(off[k]))
}

    };
}

kquant_kernels!(dot_q4k, dot_q4k_rows4, dot4_q4k, u8, 16, pair_q4, "Q4_K");
kquant_kernels!(dot_q5k, dot_q5k_rows4, dot4_q5k, i8, BLOCK, pair_q8, "Q5_K");

/// The sixteen 16-weight scales `d·sc·sx` of one superblock of `Format::Q8X16` against one input, into `out`
/// (`sc`: the sixteen 8-bit scales, `d`: the superblock's scale, `sx`: the input's eight block scales). `d·sc`
/// is the float32 product ggml's dequantization forms.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8x16_scales(sc: *const i8, d: f32, sx: *const f32, out: &mut [f32; 16]) {
    let widen = |p: *const i8| {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    };
    let sx = _mm256_loadu_ps(sx);
    let dv = _mm256_set1_ps(d);
    let lo = _mm256_permutevar8x32_ps(sx, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    let hi = _mm256_permutevar8x32_ps(sx, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        _mm256_mul_ps(_mm256_mul_ps(dv, widen(sc)), lo),
    );
    _mm256_storeu_ps(
        out.as_mut_ptr().add(8),
        _mm256_mul_ps(_mm256_mul_ps(dv, widen(sc.add(8))), hi),
    );
}

/// One 32-weight block of `Format::Q8X16`: each half's integer sum scaled by its own scale (`s`: the two).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8x16_block(
    (wa, wb): (__m256i, __m256i),
    xa: __m256i,
    xb: __m256i,
    s: &[f32],
    acc: __m256,
) -> __m256 {
    let lo = _mm256_cvtepi32_ps(_mm256_madd_epi16(wa, xa));
    let hi = _mm256_cvtepi32_ps(_mm256_madd_epi16(wb, xb));
    let acc = _mm256_fmadd_ps(lo, _mm256_broadcast_ss(&s[0]), acc);
    _mm256_fmadd_ps(hi, _mm256_broadcast_ss(&s[1]), acc)
}

/// Σ over superblocks of `Format::Q8X16` (Q6_K, Q3_K): 8-bit values, an 8-bit scale per 16 weights and a
/// float32 scale per 256.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn dot_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: &QuantizedInput) -> f32 {
    let ns = x.sx.len() / 8;
    debug_assert!(qs.len() >= ns * 256 && sc.len() >= ns * 16 && d.len() >= ns);
    let mut acc = _mm256_setzero_ps();
    let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
    let mut scale = [0f32; 16];
    for sb in 0..ns {
        q8x16_scales(
            sc.as_ptr().add(16 * sb),
            d[sb],
            x.sx.as_ptr().add(8 * sb),
            &mut scale,
        );
        for (i, s) in scale.chunks_exact(2).enumerate() {
            let b = 8 * sb + i;
            let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
            acc = q8x16_block(pair_q8(qp.add(b * BLOCK)), xa, xb, s, acc);
        }
    }
    hsum(acc)
}

/// [`dot_q8x16`] for four weight rows against one input, the next four rows prefetched; each row's arithmetic is
/// the one-row kernel's.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub unsafe fn dot_q8x16_rows4(
    qs: &[i8],
    sc: &[i8],
    d: &[f32],
    row_q: usize,
    row_sc: usize,
    row_d: usize,
    x: &QuantizedInput,
) -> [f32; 4] {
    let ns = x.sx.len() / 8;
    debug_assert!(qs.len() >= 3 * row_q + ns * 256 && sc.len() >= 3 * row_sc + ns * 16);
    let mut acc = [_mm256_setzero_ps(); 4];
    let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
    let mut scale = [[0f32; 16]; 4];
    for sb in 0..ns {
        for (r, scale) in scale.iter_mut().enumerate() {
            let (sc, d) = (sc.as_ptr().add(r * row_sc + 16 * sb), d[r * row_d + sb]);
            q8x16_scales(sc, d, x.sx.as_ptr().add(8 * sb), scale);
        }
        for i in 0..8 {
            let b = 8 * sb + i;
            // The next four rows' lines for this block (four rows of a block are 128 bytes of `qs`).
            for line in 0..2 {
                _mm_prefetch::<_MM_HINT_T0>(qp.wrapping_add(4 * row_q + b * 128 + 64 * line));
            }
            let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
            for r in 0..4 {
                let w = pair_q8(qp.add(r * row_q + b * BLOCK));
                acc[r] = q8x16_block(w, xa, xb, &scale[r][2 * i..], acc[r]);
            }
        }
    }
    acc.map(|a| hsum(a))
}

/// [`dot_q8x16`] of one weight row with four inputs, the weights widened once per block.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn dot4_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: [&QuantizedInput; 4]) -> [f32; 4] {
    let ns = x[0].sx.len() / 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let qp = qs.as_ptr();
    let mut scale = [[0f32; 16]; 4];
    for sb in 0..ns {
        for (k, scale) in scale.iter_mut().enumerate() {
            q8x16_scales(
                sc.as_ptr().add(16 * sb),
                d[sb],
                x[k].sx.as_ptr().add(8 * sb),
                scale,
            );
        }
        for i in 0..8 {
            let b = 8 * sb + i;
            let w = pair_q8(qp.add(b * BLOCK));
            for k in 0..4 {
                let xp = x[k].q.as_ptr().add(b * BLOCK);
                let xa = _mm256_loadu_si256(xp as *const __m256i);
                let xb = _mm256_loadu_si256(xp.add(16) as *const __m256i);
                acc[k] = q8x16_block(w, xa, xb, &scale[k][2 * i..], acc[k]);
            }
        }
    }
    acc.map(|a| hsum(a))
}

/// One block of the 16-weight-scaled format: each half's integer sum scaled on its own (`d` points at the
/// block's (d, m, d, m), `hs` at the input block's two half sums).
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8sub_block(
    (wa, wb): (__m256i, __m256i),
    xa: __m256i,
    xb: __m256i,
    d: *const f32,
    sx: f32,
    hs: *const f32,
    acc: __m256,
    offset: f32,
) -> (__m256, f32) {
    let lo = _mm256_cvtepi32_ps(_mm256_madd_epi16(wa, xa));
    let hi = _mm256_cvtepi32_ps(_mm256_madd_epi16(wb, xb));
    let acc = _mm256_fmadd_ps(lo, _mm256_set1_ps(*d * sx), acc);
    let acc = _mm256_fmadd_ps(hi, _mm256_set1_ps(*d.add(2) * sx), acc);
    (acc, offset + (*d.add(1) * *hs + *d.add(3) * *hs.add(1)))
}

/// As [`dot_q8`] with a scale and offset per 16 weights (`dm`: four floats per block).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8sub(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    let nb = x.sx.len();
    debug_assert!(qs.len() >= nb * BLOCK && dm.len() >= nb * 4 && x.q.len() >= nb * BLOCK);
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    let (qp, dp, xp, hp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr(), x.half_sum.as_ptr());
    for b in 0..nb {
        let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
        let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
        (acc, offset) = q8sub_block(
            pair_q8(qp.add(b * BLOCK)),
            xa,
            xb,
            dp.add(4 * b),
            *x.sx.get_unchecked(b),
            hp.add(2 * b),
            acc,
            offset,
        );
    }
    hsum(acc) + offset
}

/// [`dot_q8sub`] for four weight rows against one input (see `block_kernels!`: shared input loads, the next
/// rows prefetched, each row's arithmetic exactly the one-row kernel's).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8sub_rows4(
    qs: &[i8],
    dm: &[f32],
    row_q: usize,
    row_dm: usize,
    x: &QuantizedInput,
) -> [f32; 4] {
    let nb = x.sx.len();
    debug_assert!(qs.len() >= 3 * row_q + nb * BLOCK && dm.len() >= 3 * row_dm + nb * 4);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offset = [0f32; 4];
    let (qp, dp, xp, hp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr(), x.half_sum.as_ptr());
    for b in 0..nb {
        for line in 0..2 {
            _mm_prefetch::<_MM_HINT_T0>(qp.wrapping_add(4 * row_q + b * 4 * BLOCK + 64 * line));
        }
        _mm_prefetch::<_MM_HINT_T0>(dp.wrapping_add(4 * row_dm + b * 16) as *const i8);
        let xa = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
        let xb = _mm256_loadu_si256(xp.add(b * BLOCK + 16) as *const __m256i);
        let sx = *x.sx.get_unchecked(b);
        for r in 0..4 {
            (acc[r], offset[r]) = q8sub_block(
                pair_q8(qp.add(r * row_q + b * BLOCK)),
                xa,
                xb,
                dp.add(r * row_dm + 4 * b),
                sx,
                hp.add(2 * b),
                acc[r],
                offset[r],
            );
        }
    }
    [0, 1, 2, 3].map(|r| hsum(acc[r]) + offset[r])
}

/// [`dot_q8sub`] of one weight row with four inputs, the weights widened once per block.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot4_q8sub(qs: &[i8], dm: &[f32], x: [&QuantizedInput; 4]) -> [f32; 4] {
    let nb = x[0].sx.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offset = [0f32; 4];
    let (qp, dp) = (qs.as_ptr(), dm.as_ptr());
    for b in 0..nb {
        let w = pair_q8(qp.add(b * BLOCK));
        for k in 0..4 {
            let xp = x[k].q.as_ptr().add(b * BLOCK);
            let xa = _mm256_loadu_si256(xp as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(16) as *const __m256i);
            (acc[k], offset[k]) = q8sub_block(
                w,
                xa,
                xb,
                dp.add(4 * b),
                *x[k].sx.get_unchecked(b),
                x[k].half_sum.as_ptr().add(2 * b),
                acc[k],
                offset[k],
            );
        }
    }
    [0, 1, 2, 3].map(|k| hsum(acc[k]) + offset[k])
}

/// The dense batch kernels of a weight type `$t`: `$dot4` (one weight row with four inputs, each weight loaded and
/// widened once) and `$dot2x4` (two weight rows with four inputs: each input vector loaded once for both rows,
/// which halves the loads that bound the four-input kernel, for a batch decoding together). Each (row, input)
/// pair is summed exactly as the one-row kernel sums it (`dot_f32`, `dot_bf16`: columns in 16s, the first eight
/// into one accumulator and the next eight into another, the two added before the horizontal sum, the columns
/// past the last 16 added one by one), so an answer does not depend on the batch it was decoded in. That takes
/// two accumulators per pair: sixteen for `$dot2x4`, which is therefore compiled for AVX-512VL (32 vector
/// registers, the same 256-bit arithmetic) and chosen only where the CPU has it.
macro_rules! dense_batch_kernels {
    ($dot4:ident, $dot2x4:ident, $t:ty, $load:ident, $widen:expr) => {
        #[doc = concat!("One `", stringify!($t), "` weight row with four inputs (see `dense_batch_kernels!`).")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot4(w: &[$t], x: [&[f32]; 4]) -> [f32; 4] {
            let n = w.len();
            let wp = w.as_ptr();
            let xp = x.map(|v| v.as_ptr());
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 16 <= n {
                let (v0, v1) = ($load(wp.add(i)), $load(wp.add(i + 8)));
                for k in 0..4 {
                    a0[k] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(xp[k].add(i)), a0[k]);
                    a1[k] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xp[k].add(i + 8)), a1[k]);
                }
                i += 16;
            }
            let mut out: [f32; 4] = std::array::from_fn(|k| hsum(_mm256_add_ps(a0[k], a1[k])));
            while i < n {
                for k in 0..4 {
                    out[k] += $widen(w[i]) * x[k][i];
                }
                i += 1;
            }
            out
        }

        #[doc = concat!("Two `", stringify!($t), "` weight rows with four inputs (see `dense_batch_kernels!`).")]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
        pub unsafe fn $dot2x4(w0: &[$t], w1: &[$t], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
            let n = w0.len();
            let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
            let xp = x.map(|v| v.as_ptr());
            // [row][half of the 16 columns][input]
            let mut acc = [[[_mm256_setzero_ps(); 4]; 2]; 2];
            let mut i = 0;
            // Two rows read at once are two streams the hardware prefetcher follows poorly (memory-resident
            // matrices ran at a fifth of the bandwidth): fetch the next two rows' lines ahead, as the quantized
            // four-row kernels do.
            let line = 64 / std::mem::size_of::<$t>();
            while i + 16 <= n {
                if i % line < 16 {
                    _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(2 * n + i) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(2 * n + i) as *const i8);
                }
                for h in 0..2 {
                    let (v0, v1) = ($load(p0.add(i + 8 * h)), $load(p1.add(i + 8 * h)));
                    for k in 0..4 {
                        let xv = _mm256_loadu_ps(xp[k].add(i + 8 * h));
                        acc[0][h][k] = _mm256_fmadd_ps(v0, xv, acc[0][h][k]);
                        acc[1][h][k] = _mm256_fmadd_ps(v1, xv, acc[1][h][k]);
                    }
                }
                i += 16;
            }
            let mut out: [[f32; 4]; 2] = std::array::from_fn(|r| {
                std::array::from_fn(|k| hsum(_mm256_add_ps(acc[r][0][k], acc[r][1][k])))
            });
            while i < n {
                for k in 0..4 {
                    out[0][k] += $widen(w0[i]) * x[k][i];
                    out[1][k] += $widen(w1[i]) * x[k][i];
                }
                i += 1;
            }
            out
        }
    };
}

dense_batch_kernels!(dot4_f32, dot2x4_f32, f32, load8_f32, |v: f32| v);
dense_batch_kernels!(dot4_bf16, dot2x4_bf16, u16, load_bf16, |v: u16| {
    f32::from_bits(u32::from(v) << 16)
});
