//! Portable inner products: the reference the SIMD versions are tested against, and the fallback on CPUs
//! without them.

use super::{half_pair, kquant_dm, QuantizedInput, BLOCK};

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise and keep rounding close to the SIMD version.
    let mut acc = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>()
}

pub fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    s.iter_mut().for_each(|v| *v /= sum);
}

pub fn scores_f32(k: &[f32], stride: usize, q: &[f32], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f32(&k[j * stride..j * stride + q.len()], q);
    }
}

pub fn scores_f16(k: &[u16], stride: usize, q: &[f32], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f16(&k[j * stride..j * stride + q.len()], q);
    }
}

pub fn weighted_sum_f32(v: &[f32], stride: usize, p: &[f32], out: &mut [f32]) {
    for (j, &pj) in p.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[j * stride..]) {
            *o += pj * x;
        }
    }
}

pub fn weighted_sum_f16(v: &[u16], stride: usize, p: &[f32], out: &mut [f32]) {
    for (j, &pj) in p.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[j * stride..]) {
            *o += pj * half::f16::from_bits(x).to_f32();
        }
    }
}

pub fn dot_bf16(w: &[u16], x: &[f32]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| f32::from_bits(u32::from(a) << 16) * b)
        .sum()
}

pub fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| half::f16::from_bits(a).to_f32() * b)
        .sum()
}

/// Σ q·x16 of 4-bit block `b` (byte `j` holds weights `j` and `j + 16`).
fn q4_sum(qs: &[u8], x: &QuantizedInput, b: usize) -> i32 {
    let (q, xb) = (&qs[b * 16..b * 16 + 16], &x.q[b * BLOCK..(b + 1) * BLOCK]);
    (0..16)
        .map(|j| {
            i32::from(q[j] & 0x0F) * i32::from(xb[j]) + i32::from(q[j] >> 4) * i32::from(xb[j + 16])
        })
        .sum()
}

/// Σ q·x16 of the `n` signed 8-bit weights from `at`.
fn q8_sum(qs: &[i8], x: &QuantizedInput, at: usize, n: usize) -> i32 {
    qs[at..at + n]
        .iter()
        .zip(&x.q[at..at + n])
        .map(|(&a, &v)| i32::from(a) * i32::from(v))
        .sum()
}

/// Σ_b d_b·sx_b·sum(b) + m_b·xsum_b, with `dm(b)` giving block `b`'s (d, m).
fn blocks(x: &QuantizedInput, sum: impl Fn(usize) -> i32, dm: impl Fn(usize) -> (f32, f32)) -> f32 {
    (0..x.sx.len())
        .map(|b| {
            let (d, m) = dm(b);
            d * x.sx[b] * sum(b) as f32 + m * x.sum[b]
        })
        .sum()
}

pub fn dot_q4(qs: &[u8], dm: &[f32], x: &QuantizedInput) -> f32 {
    blocks(x, |b| q4_sum(qs, x, b), |b| (dm[2 * b], dm[2 * b + 1]))
}

pub fn dot_q4h(qs: &[u8], dm: &[u16], x: &QuantizedInput) -> f32 {
    blocks(x, |b| q4_sum(qs, x, b), |b| half_pair(dm, b))
}

pub fn dot_q4k(qs: &[u8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
    blocks(x, |b| q4_sum(qs, x, b), |b| kquant_dm(sm, d, b))
}

pub fn dot_q8(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    blocks(
        x,
        |b| q8_sum(qs, x, b * BLOCK, BLOCK),
        |b| (dm[2 * b], dm[2 * b + 1]),
    )
}

pub fn dot_q8h(qs: &[i8], dm: &[u16], x: &QuantizedInput) -> f32 {
    blocks(x, |b| q8_sum(qs, x, b * BLOCK, BLOCK), |b| half_pair(dm, b))
}

pub fn dot_q5k(qs: &[i8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
    blocks(
        x,
        |b| q8_sum(qs, x, b * BLOCK, BLOCK),
        |b| kquant_dm(sm, d, b),
    )
}

/// The 8-bit formats with a scale per 16 weights: `dm(b, h)` gives half `h` of block `b`'s (d, m).
fn halves(qs: &[i8], x: &QuantizedInput, dm: impl Fn(usize, usize) -> (f32, f32)) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        for h in 0..2 {
            let (d, m) = dm(b, h);
            let s = q8_sum(qs, x, b * BLOCK + 16 * h, 16);
            total += d * x.sx[b] * s as f32 + m * x.half_sum[2 * b + h];
        }
    }
    total
}

pub fn dot_q8sub(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    halves(qs, x, |b, h| (dm[4 * b + 2 * h], dm[4 * b + 2 * h + 1]))
}

pub fn dot_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: &QuantizedInput) -> f32 {
    halves(qs, x, |b, h| (d[b / 8] * sc[2 * b + h] as f32, 0.0))
}
