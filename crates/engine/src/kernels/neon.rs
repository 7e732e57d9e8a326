//! NEON inner products for AArch64 (Apple silicon, Graviton, Ampere, Raspberry Pi 4/5): NEON is part of the
//! base architecture there, so these run on every 64-bit ARM CPU without a run-time check.
//!
//! They mirror the x86 kernels: dense rows widened to float32 lanes and multiplied with fused multiply-adds;
//! quantized blocks widened to 16-bit lanes and multiplied with the input's 16-bit integers (`smlal`, exact
//! 32-bit sums), each block's sum then scaled by `d·sx` into float32 lanes. The four-row and four-input kernels of
//! a format do each row's arithmetic exactly as its one-row kernel does (same operations in the same order), so an
//! answer does not depend on which of them computed it.
//!
//! Every function is `unsafe` because it reads through raw pointers within the lengths its assertions check;
//! callers pass the slices the one-row contract of [`super::Kernel`] describes.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::aarch64::*;

use super::{kquant_dm, QuantizedInput, BLOCK};

/// Four float16 values widened to float32 (`fcvtl`, base ARMv8-A; the intrinsic's `float16x4_t` type is not
/// stable Rust).
#[inline(always)]
unsafe fn widen_f16(v: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    std::arch::asm!(
        "fcvtl {o:v}.4s, {i:v}.4h",
        i = in(vreg) v,
        o = out(vreg) out,
        options(pure, nomem, nostack),
    );
    out
}

/// Four float32 lanes from a float32 row.
#[inline(always)]
unsafe fn load4_f32(p: *const f32) -> float32x4_t {
    vld1q_f32(p)
}

/// Four float32 lanes from a bfloat16 row (the bits shifted into the high half).
#[inline(always)]
unsafe fn load4_bf16(p: *const u16) -> float32x4_t {
    vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
}

/// Four float32 lanes from a float16 row or cache.
#[inline(always)]
unsafe fn load4_f16(p: *const u16) -> float32x4_t {
    widen_f16(vld1_u16(p))
}

/// The dense one-row kernel and its four-input twin for one element type: sixteen columns per pass in four
/// float32 accumulators, then four at a time into the first, the lanes added, the last columns one by one. The
/// four-input kernel loads each weight once for the four inputs and keeps each input's arithmetic exactly the
/// one-row kernel's.
macro_rules! dense_kernels {
    ($dot:ident, $dot4:ident, $t:ty, $load:ident, $widen:expr) => {
        #[doc = concat!("`Σ w·x` for a `", stringify!($t), "` row.")]
        pub unsafe fn $dot(w: &[$t], x: &[f32]) -> f32 {
            let n = w.len().min(x.len());
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut a = [vdupq_n_f32(0.0); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (k, a) in a.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, $load(wp.add(i + 4 * k)), vld1q_f32(xp.add(i + 4 * k)));
                }
                i += 16;
            }
            while i + 4 <= n {
                a[0] = vfmaq_f32(a[0], $load(wp.add(i)), vld1q_f32(xp.add(i)));
                i += 4;
            }
            let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
            while i < n {
                s += $widen(w[i]) * x[i];
                i += 1;
            }
            s
        }

        #[doc = concat!("[`", stringify!($dot), "`] of one row with four inputs.")]
        pub unsafe fn $dot4(w: &[$t], x: [&[f32]; 4]) -> [f32; 4] {
            let n = x.iter().fold(w.len(), |n, x| n.min(x.len()));
            let wp = w.as_ptr();
            let xp = x.map(|x| x.as_ptr());
            let mut a = [[vdupq_n_f32(0.0); 4]; 4];
            let mut i = 0;
            while i + 16 <= n {
                for k in 0..4 {
                    let wv = $load(wp.add(i + 4 * k));
                    for (a, xp) in a.iter_mut().zip(xp) {
                        a[k] = vfmaq_f32(a[k], wv, vld1q_f32(xp.add(i + 4 * k)));
                    }
                }
                i += 16;
            }
            while i + 4 <= n {
                let wv = $load(wp.add(i));
                for (a, xp) in a.iter_mut().zip(xp) {
                    a[0] = vfmaq_f32(a[0], wv, vld1q_f32(xp.add(i)));
                }
                i += 4;
            }
            let mut s =
                a.map(|a| vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]))));
            while i < n {
                let wi = $widen(w[i]);
                for (s, x) in s.iter_mut().zip(x) {
                    *s += wi * x[i];
                }
                i += 1;
            }
            s
        }
    };
}

dense_kernels!(dot_f32, dot4_f32, f32, load4_f32, |v: f32| v);
dense_kernels!(dot_bf16, dot4_bf16, u16, load4_bf16, |v: u16| {
    f32::from_bits(u32::from(v) << 16)
});
dense_kernels!(dot_f16, dot4_f16, u16, load4_f16, |v: u16| {
    half::f16::from_bits(v).to_f32()
});

/// Attention over a cache of `$t`: `$scores` (a query against consecutive keys) and `$wsum` (the
/// probability-weighted sum of consecutive values, sixteen columns of the sum kept in registers across all keys).
macro_rules! attention_kernels {
    ($scores:ident, $wsum:ident, $t:ty, $dot:ident, $load:ident, $widen:expr) => {
        #[doc = concat!("`out[j] = Σ_d k[j·stride + d] · q[d]` for a `", stringify!($t), "` cache.")]
        pub unsafe fn $scores(k: &[$t], stride: usize, q: &[f32], out: &mut [f32]) {
            let (hd, n) = (q.len(), out.len());
            assert!(n == 0 || k.len() >= (n - 1) * stride + hd, "keys past the cache");
            for (j, o) in out.iter_mut().enumerate() {
                *o = $dot(k.get_unchecked(j * stride..j * stride + hd), q);
            }
        }

        #[doc = concat!("`out[d] += Σ_j p[j] · v[j·stride + d]` for a `", stringify!($t), "` cache.")]
        pub unsafe fn $wsum(v: &[$t], stride: usize, p: &[f32], out: &mut [f32]) {
            let (hd, n) = (out.len(), p.len());
            assert!(n == 0 || v.len() >= (n - 1) * stride + hd, "values past the cache");
            let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
            /// Columns `c..c + 4·R` of the sum, kept in `R` registers across all the keys.
            #[inline(always)]
            unsafe fn tile<const R: usize>(vp: *const $t, stride: usize, p: &[f32], op: *mut f32, c: usize) {
                let mut a: [float32x4_t; R] = std::array::from_fn(|i| vld1q_f32(op.add(c + 4 * i)));
                for (j, &pj) in p.iter().enumerate() {
                    for (i, a) in a.iter_mut().enumerate() {
                        *a = vfmaq_n_f32(*a, $load(vp.add(j * stride + c + 4 * i)), pj);
                    }
                }
                for (i, a) in a.iter().enumerate() {
                    vst1q_f32(op.add(c + 4 * i), *a);
                }
            }
            // Sixty-four columns (sixteen registers) per pass over the keys, then sixteen, then four: each
            // column's multiply-adds fall in the same order whichever pass takes it.
            let mut c = 0;
            while c + 64 <= hd {
                tile::<16>(vp, stride, p, op, c);
                c += 64;
            }
            while c + 16 <= hd {
                tile::<4>(vp, stride, p, op, c);
                c += 16;
            }
            while c + 4 <= hd {
                tile::<1>(vp, stride, p, op, c);
                c += 4;
            }
            for d in c..hd {
                for (j, &pj) in p.iter().enumerate() {
                    out[d] = pj.mul_add($widen(v[j * stride + d]), out[d]);
                }
            }
        }
    };
}

attention_kernels!(
    scores_f32,
    weighted_sum_f32,
    f32,
    dot_f32,
    load4_f32,
    |x: f32| x
);
attention_kernels!(
    scores_f16,
    weighted_sum_f16,
    u16,
    dot_f16,
    load4_f16,
    |x: u16| half::f16::from_bits(x).to_f32()
);

/// `e^x` in four lanes for `x ≤ 0` (softmax's shifted scores), as the x86 `exp8`: `2^n · p(r)` with
/// `x = n·ln 2 + r` (ln 2 in two parts so `r` is exact) and Cephes' degree-7 polynomial for `expf`; lanes at or
/// below −87.33 give 0, NaN lanes stay NaN.
#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let floor = vdupq_n_f32(-87.33);
    // `fmax` returns NaN when either operand is NaN: the NaN goes on.
    let x = vmaxq_f32(floor, x);
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let r = vfmsq_n_f32(x, n, 0.693_359_4);
    let r = vfmsq_n_f32(r, n, -2.121_944_4e-4);
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), vmulq_f32(p, r), r);
    let scale = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let e = vmulq_f32(p, vreinterpretq_f32_s32(scale));
    // Zero where x ≤ −87.33 (after the clamp: exactly there); NaN compares false and is kept.
    let keep = vmvnq_u32(vcleq_f32(x, floor));
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), keep))
}

/// Softmax in place: subtract the maximum, exponentiate ([`exp4`]), scale by the sum's reciprocal.
pub unsafe fn softmax(s: &mut [f32]) {
    let n = s.len();
    let p = s.as_mut_ptr();
    let body = n - n % 4;
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i < body {
        mv = vmaxq_f32(mv, vld1q_f32(p.add(i)));
        i += 4;
    }
    // A NaN score (a broken model) makes the sum NaN below, and so every probability, as in the portable loop.
    let max = s[body..].iter().fold(vmaxvq_f32(mv), |m, &v| m.max(v));
    let (m, mut acc) = (vdupq_n_f32(max), vdupq_n_f32(0.0));
    i = 0;
    while i < body {
        let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), m));
        vst1q_f32(p.add(i), e);
        acc = vaddq_f32(acc, e);
        i += 4;
    }
    let mut sum = vaddvq_f32(acc);
    for v in &mut s[body..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    i = 0;
    while i < body {
        vst1q_f32(p.add(i), vmulq_n_f32(vld1q_f32(p.add(i)), inv));
        i += 4;
    }
    for v in &mut s[body..] {
        *v *= inv;
    }
}

/// One input block of 32 as four vectors of 16-bit lanes.
#[inline(always)]
unsafe fn load_x(x: *const i16) -> [int16x8_t; 4] {
    [
        vld1q_s16(x),
        vld1q_s16(x.add(8)),
        vld1q_s16(x.add(16)),
        vld1q_s16(x.add(24)),
    ]
}

/// Sixteen signed 8-bit weights as two vectors of 16-bit lanes.
#[inline(always)]
unsafe fn widen8(w: int8x16_t) -> [int16x8_t; 2] {
    [vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w)]
}

/// A 4-bit block (byte `j` holds weights `j` and `j + 16`) as four vectors of 16-bit lanes, weights 0–31 in order.
#[inline(always)]
unsafe fn unpack_q4(q: *const u8) -> [int16x8_t; 4] {
    let v = vld1q_u8(q);
    let [a, b] = widen8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))));
    let [c, d] = widen8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
    [a, b, c, d]
}

/// A signed 8-bit block of 32 as four vectors of 16-bit lanes.
#[inline(always)]
unsafe fn unpack_q8(q: *const i8) -> [int16x8_t; 4] {
    let [a, b] = widen8(vld1q_s8(q));
    let [c, d] = widen8(vld1q_s8(q.add(16)));
    [a, b, c, d]
}

/// `Σ w·x` over sixteen 16-bit weights and inputs in four 32-bit lanes (exact): a chain of four multiply-adds.
#[inline(always)]
unsafe fn dot16(w0: int16x8_t, w1: int16x8_t, x0: int16x8_t, x1: int16x8_t) -> int32x4_t {
    let acc = vmull_s16(vget_low_s16(w0), vget_low_s16(x0));
    let acc = vmlal_high_s16(acc, w0, x0);
    let acc = vmlal_s16(acc, vget_low_s16(w1), vget_low_s16(x1));
    vmlal_high_s16(acc, w1, x1)
}

/// `Σ w·x` over a block of 32 in four 32-bit lanes (exact): its two halves in independent chains.
#[inline(always)]
unsafe fn dot32(w: &[int16x8_t; 4], x: &[int16x8_t; 4]) -> int32x4_t {
    vaddq_s32(dot16(w[0], w[1], x[0], x[1]), dot16(w[2], w[3], x[2], x[3]))
}

/// A block's `(d·sx, m·sum)` for (d, m) as float32 (`Q4`, `Q8`; `ss`: the input's (sx, sum) of the block): the
/// products the portable kernel forms.
#[inline(always)]
unsafe fn f32_scales(dm: *const f32, ss: *const f32) -> float32x2_t {
    vmul_f32(vld1_f32(dm), vld1_f32(ss))
}

/// A block's `(d·sx, m·sum)` for (d, m) as float16 (`Q4H`, `Q8H`).
#[inline(always)]
unsafe fn f16_scales(dm: *const u16, ss: *const f32) -> float32x2_t {
    let bits = (dm as *const u32).read_unaligned();
    let dm = widen_f16(vreinterpret_u16_u32(vdup_n_u32(bits)));
    vmul_f32(vget_low_f32(dm), vld1_f32(ss))
}

/// The one-row, four-row and four-input kernels of a format with one (d, m) per 32 weights (`Q4`, `Q8`, `Q4H`,
/// `Q8H`): Σ_b d_b·sx_b·(Σ q·x16) + m_b·sum_b, the block's integer sum scaled by lane 0 of its scales and lane 1
/// added to the offsets (lane 0 of `off` gathers nothing used). The four-row kernel loads each input block once
/// for four rows; the four-input kernel unpacks each weight block once for four inputs; each row's arithmetic is
/// the one-row kernel's in all three.
macro_rules! block_kernels {
    ($dot:ident, $rows4:ident, $dot4:ident, $elem:ty, $bytes:expr, $unpack:ident, $dm:ty, $scales:ident) => {
        #[doc = concat!("One row of `", stringify!($elem), "` weights (see `block_kernels!`).")]
        pub unsafe fn $dot(qs: &[$elem], dm: &[$dm], x: &QuantizedInput) -> f32 {
            let nb = x.sx.len();
            assert!(qs.len() >= nb * $bytes && dm.len() >= nb * 2);
            assert!(x.q.len() >= nb * BLOCK && x.ss.len() >= nb * 2);
            let (qp, dp, xp, sp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr(), x.ss.as_ptr());
            let (mut acc, mut off) = (vdupq_n_f32(0.0), vdup_n_f32(0.0));
            for b in 0..nb {
                let s = dot32(&$unpack(qp.add(b * $bytes)), &load_x(xp.add(b * BLOCK)));
                let sc = $scales(dp.add(2 * b), sp.add(2 * b));
                acc = vfmaq_lane_f32::<0>(acc, vcvtq_f32_s32(s), sc);
                off = vadd_f32(off, sc);
            }
            vaddvq_f32(acc) + vget_lane_f32::<1>(off)
        }

        #[doc = concat!("[`", stringify!($dot), "`] for four weight rows (`row_q`/`row_dm` apart) against one input.")]
        pub unsafe fn $rows4(
            qs: &[$elem],
            dm: &[$dm],
            row_q: usize,
            row_dm: usize,
            x: &QuantizedInput,
        ) -> [f32; 4] {
            let nb = x.sx.len();
            assert!(qs.len() >= 3 * row_q + nb * $bytes && dm.len() >= 3 * row_dm + nb * 2);
            assert!(x.q.len() >= nb * BLOCK && x.ss.len() >= nb * 2);
            let (qp, dp, xp, sp) = (qs.as_ptr(), dm.as_ptr(), x.q.as_ptr(), x.ss.as_ptr());
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut off = [vdup_n_f32(0.0); 4];
            for b in 0..nb {
                let xv = load_x(xp.add(b * BLOCK));
                for r in 0..4 {
                    let s = dot32(&$unpack(qp.add(r * row_q + b * $bytes)), &xv);
                    let sc = $scales(dp.add(r * row_dm + 2 * b), sp.add(2 * b));
                    acc[r] = vfmaq_lane_f32::<0>(acc[r], vcvtq_f32_s32(s), sc);
                    off[r] = vadd_f32(off[r], sc);
                }
            }
            [0, 1, 2, 3].map(|r| vaddvq_f32(acc[r]) + vget_lane_f32::<1>(off[r]))
        }

        #[doc = concat!("[`", stringify!($dot), "`] of one weight row with four inputs.")]
        pub unsafe fn $dot4(qs: &[$elem], dm: &[$dm], x: [&QuantizedInput; 4]) -> [f32; 4] {
            let nb = x[0].sx.len();
            assert!(qs.len() >= nb * $bytes && dm.len() >= nb * 2);
            assert!(x.iter().all(|x| x.q.len() >= nb * BLOCK && x.ss.len() >= nb * 2));
            let (qp, dp) = (qs.as_ptr(), dm.as_ptr());
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut off = [vdup_n_f32(0.0); 4];
            for b in 0..nb {
                let w = $unpack(qp.add(b * $bytes));
                for k in 0..4 {
                    let s = dot32(&w, &load_x(x[k].q.as_ptr().add(b * BLOCK)));
                    let sc = $scales(dp.add(2 * b), x[k].ss.as_ptr().add(2 * b));
                    acc[k] = vfmaq_lane_f32::<0>(acc[k], vcvtq_f32_s32(s), sc);
                    off[k] = vadd_f32(off[k], sc);
                }
            }
            [0, 1, 2, 3].map(|k| vaddvq_f32(acc[k]) + vget_lane_f32::<1>(off[k]))
        }
    };
}

block_kernels!(
    dot_q4,
    dot_q4_rows4,
    dot4_q4,
    u8,
    16,
    unpack_q4,
    f32,
    f32_scales
);
block_kernels!(
    dot_q8,
    dot_q8_rows4,
    dot4_q8,
    i8,
    BLOCK,
    unpack_q8,
    f32,
    f32_scales
);
block_kernels!(
    dot_q4h,
    dot_q4h_rows4,
    dot4_q4h,
    u8,
    16,
    unpack_q4,
    u16,
    f16_scales
);
block_kernels!(
    dot_q8h,
    dot_q8h_rows4,
    dot4_q8h,
    i8,
    BLOCK,
    unpack_q8,
    u16,
    f16_scales
);

/// A K-quant with 6-bit scales and minimums per 32 weights and (d, dmin) per 256: each block's `(d·sc, −dmin·mn)`
/// formed as ggml forms it ([`kquant_dm`]), then as in the one-(d, m)-per-block kernels.
macro_rules! kquant_kernel {
    ($dot:ident, $elem:ty, $bytes:expr, $unpack:ident) => {
        #[doc = concat!("One row of `", stringify!($elem), "` K-quant superblocks.")]
        pub unsafe fn $dot(qs: &[$elem], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
            let nb = x.sx.len();
            assert!(qs.len() >= nb * $bytes && sm.len() >= nb * 2 && d.len() >= nb / 4);
            assert!(x.q.len() >= nb * BLOCK && x.sum.len() >= nb && nb % 8 == 0);
            let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
            let mut acc = vdupq_n_f32(0.0);
            let mut offset = 0f32;
            for b in 0..nb {
                let s = dot32(&$unpack(qp.add(b * $bytes)), &load_x(xp.add(b * BLOCK)));
                let (a, o) = kquant_dm(sm, d, b);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), a * x.sx[b]);
                offset += o * x.sum[b];
            }
            vaddvq_f32(acc) + offset
        }
    };
}

kquant_kernel!(dot_q4k, u8, 16, unpack_q4);
kquant_kernel!(dot_q5k, i8, BLOCK, unpack_q8);

/// The 8-bit formats with a scale per 16 weights: `dm(b, h)` gives half `h` of block `b`'s (d, m).
#[inline(always)]
unsafe fn halves(qs: &[i8], x: &QuantizedInput, dm: impl Fn(usize, usize) -> (f32, f32)) -> f32 {
    let nb = x.sx.len();
    assert!(qs.len() >= nb * BLOCK && x.q.len() >= nb * BLOCK && x.half_sum.len() >= 2 * nb);
    let (qp, xp) = (qs.as_ptr(), x.q.as_ptr());
    let mut acc = vdupq_n_f32(0.0);
    let mut offset = 0f32;
    for b in 0..nb {
        let (w, xv) = (unpack_q8(qp.add(b * BLOCK)), load_x(xp.add(b * BLOCK)));
        for h in 0..2 {
            let s = dot16(w[2 * h], w[2 * h + 1], xv[2 * h], xv[2 * h + 1]);
            let (d, m) = dm(b, h);
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d * x.sx[b]);
            offset += m * x.half_sum[2 * b + h];
        }
    }
    vaddvq_f32(acc) + offset
}

/// Q2_K kept as 8-bit values with a float32 (d, m) per 16 weights.
pub unsafe fn dot_q8sub(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    assert!(dm.len() >= 4 * x.sx.len());
    halves(qs, x, |b, h| (dm[4 * b + 2 * h], dm[4 * b + 2 * h + 1]))
}

/// Q6_K and Q3_K kept as 8-bit values, an 8-bit scale per 16 and a float32 scale per 256 (ggml's order: d·sc).
pub unsafe fn dot_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: &QuantizedInput) -> f32 {
    assert!(sc.len() >= 2 * x.sx.len() && d.len() >= x.sx.len() / 8);
    halves(qs, x, |b, h| (d[b / 8] * sc[2 * b + h] as f32, 0.0))
}
