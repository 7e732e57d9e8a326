//! Portable inner products: the reference the SIMD versions are tested against, and the fallback on CPUs
//! without them.

use super::{QuantizedInput, BLOCK};

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

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

pub fn axpy_f16(a: f32, x: &[u16], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * half::f16::from_bits(x).to_f32();
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

pub fn dot_q4(qs: &[u8], dm: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let q = &qs[b * 16..b * 16 + 16];
        let xb = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let mut s = 0i32;
        for j in 0..16 {
            s += i32::from(q[j] & 0x0F) * i32::from(xb[j])
                + i32::from(q[j] >> 4) * i32::from(xb[j + 16]);
        }
        total += dm[2 * b] * x.sx[b] * s as f32 + dm[2 * b + 1] * x.sum[b];
    }
    total
}

pub fn dot_q8(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let q = &qs[b * BLOCK..(b + 1) * BLOCK];
        let xb = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let s: i32 = q
            .iter()
            .zip(xb)
            .map(|(&a, &v)| i32::from(a) * i32::from(v))
            .sum();
        total += dm[2 * b] * x.sx[b] * s as f32 + dm[2 * b + 1] * x.sum[b];
    }
    total
}

pub fn dot_q8sub(qs: &[i8], dm: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        for h in 0..2 {
            let at = b * BLOCK + 16 * h;
            let s: i32 = qs[at..at + 16]
                .iter()
                .zip(&x.q[at..at + 16])
                .map(|(&a, &v)| i32::from(a) * i32::from(v))
                .sum();
            let (d, m) = (dm[4 * b + 2 * h], dm[4 * b + 2 * h + 1]);
            total += d * x.sx[b] * s as f32 + m * x.half_sum[2 * b + h];
        }
    }
    total
}

fn half(v: u16) -> f32 {
    half::f16::from_bits(v).to_f32()
}

pub fn dot_q4h(qs: &[u8], dm: &[u16], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let q = &qs[b * 16..b * 16 + 16];
        let xb = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let mut s = 0i32;
        for j in 0..16 {
            s += i32::from(q[j] & 0x0F) * i32::from(xb[j])
                + i32::from(q[j] >> 4) * i32::from(xb[j + 16]);
        }
        total += half(dm[2 * b]) * x.sx[b] * s as f32 + half(dm[2 * b + 1]) * x.sum[b];
    }
    total
}

pub fn dot_q8h(qs: &[i8], dm: &[u16], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let s: i32 = qs[b * BLOCK..(b + 1) * BLOCK]
            .iter()
            .zip(&x.q[b * BLOCK..(b + 1) * BLOCK])
            .map(|(&a, &v)| i32::from(a) * i32::from(v))
            .sum();
        total += half(dm[2 * b]) * x.sx[b] * s as f32 + half(dm[2 * b + 1]) * x.sum[b];
    }
    total
}

pub fn dot_q4k(qs: &[u8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let (sb, i) = (b / 8, b % 8);
        let d1 = d[2 * sb] * sm[16 * sb + i] as f32;
        let m1 = d[2 * sb + 1] * sm[16 * sb + 8 + i] as f32;
        let q = &qs[b * 16..b * 16 + 16];
        let xb = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let mut s = 0i32;
        for j in 0..16 {
            s += i32::from(q[j] & 0x0F) * i32::from(xb[j])
                + i32::from(q[j] >> 4) * i32::from(xb[j + 16]);
        }
        total += d1 * x.sx[b] * s as f32 - m1 * x.sum[b];
    }
    total
}

pub fn dot_q8x16(qs: &[i8], sc: &[i8], d: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        for h in 0..2 {
            let at = b * BLOCK + 16 * h;
            let s: i32 = qs[at..at + 16]
                .iter()
                .zip(&x.q[at..at + 16])
                .map(|(&a, &v)| i32::from(a) * i32::from(v))
                .sum();
            total += d[b / 8] * sc[2 * b + h] as f32 * x.sx[b] * s as f32;
        }
    }
    total
}

pub fn dot_q5k(qs: &[i8], sm: &[u8], d: &[f32], x: &QuantizedInput) -> f32 {
    let mut total = 0f32;
    for b in 0..x.sx.len() {
        let (sb, i) = (b / 8, b % 8);
        let d1 = d[2 * sb] * sm[16 * sb + i] as f32;
        let m1 = d[2 * sb + 1] * sm[16 * sb + 8 + i] as f32;
        let s: i32 = qs[b * BLOCK..(b + 1) * BLOCK]
            .iter()
            .zip(&x.q[b * BLOCK..(b + 1) * BLOCK])
            .map(|(&a, &v)| i32::from(a) * i32::from(v))
            .sum();
        total += d1 * x.sx[b] * s as f32 - m1 * x.sum[b];
    }
    total
}
