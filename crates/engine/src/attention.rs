//! Attention on the CPU read in place from the KV cache, for decoding steps and prompts.
//!
//! The general path (any device, any dtype) asks candle to make the cache contiguous, multiply, mask and take
//! the softmax: a copy of the whole cache per layer, GEMM calls over every (query, key) pair including the half a
//! causal mask then blanks out, and a mask tensor. Here every query step needs only a dot product with each key
//! it may see and a weighted sum of their values, computed straight from the cache's storage (float32 or
//! float16): a prompt's step `i` reads keys up to itself and no further. Each (sequence, step, head) is computed
//! the same way whatever the batch around it, so a sequence decoded in a batch gets the numbers it gets alone.

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use crate::kernels::{Kernel, SendPtr};

/// What one decoding step's attention needs besides the tensors.
pub(crate) struct DecodeAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the queries before the dot products (as the general path does).
    pub scale: f32,
    /// Gemma 2's `tanh(s / cap) · cap` on the scores.
    pub softcap: Option<f32>,
}

/// A KV cache's storage as this module reads it: float32, or float16 (`--kv-cache f16`) as bits.
#[derive(Clone, Copy)]
enum Cached<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl<'a> Cached<'a> {
    fn of(storage: &'a candle_core::CpuStorage) -> Option<Self> {
        use half::slice::HalfFloatSliceExt;
        match storage {
            candle_core::CpuStorage::F32(v) => Some(Cached::F32(v)),
            candle_core::CpuStorage::F16(v) => Some(Cached::F16(v.reinterpret_cast())),
            _ => None,
        }
    }
}

/// Keys per block of the in-place attention: a block of float32 keys (or values) of 64 dimensions is 16 KB,
/// read from memory once and from the core's first-level cache by the other query heads of the group. A
/// multiple of four, so the score kernel's four-key groups fall as in one call over the whole range.
const KEY_BLOCK: usize = 64;

/// Work (multiply-adds) below which one thread does all the heads: splitting costs more than it saves.
const PARALLEL_WORK: usize = 1 << 15;

impl DecodeAttention {
    /// `q`: `[batch, heads, steps, head_dim]` (flat), already rotated; one step when decoding, a prompt's
    /// tokens when prefilling. `k`, `v`: the cache views `[batch, kv_heads, keys, head_dim]` (any strides with a
    /// contiguous last dimension). `visible[b · steps + i]`: the key range step `i` of sequence `b` may attend to.
    /// Returns `[batch, steps, heads, head_dim]` (flat), or `None` when the cache is not float32 or float16 CPU
    /// storage laid out as expected (the caller then takes the general path).
    pub fn run(
        &self,
        q: &[f32],
        k: &Tensor,
        v: &Tensor,
        visible: &[std::ops::Range<usize>],
        steps: usize,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (kst, kl) = k.storage_and_layout();
        let (vst, vl) = v.storage_and_layout();
        let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*kst, &*vst) else {
            return Ok(None);
        };
        let (Some(ks), Some(vs)) = (Cached::of(kc), Cached::of(vc)) else {
            return Ok(None);
        };
        let (b, hd) = (visible.len() / steps.max(1), self.head_dim);
        let dims = [b, self.kv_heads, 0, hd];
        let shape_ok = |l: &candle_core::Layout| {
            let d = l.dims();
            d.len() == 4
                && d[0] == dims[0]
                && d[1] == dims[1]
                && d[3] == dims[3]
                && l.stride()[3] == 1
        };
        if steps == 0
            || visible.len() != b * steps
            || !shape_ok(kl)
            || !shape_ok(vl)
            || q.len() != b * self.heads * steps * hd
        {
            return Ok(None);
        }
        let keys = kl.dims()[2];
        if keys != vl.dims()[2] || visible.iter().any(|r| r.is_empty() || r.end > keys) {
            return Ok(None);
        }
        let (ko, kstr) = (kl.start_offset(), kl.stride());
        let (vo, vstr) = (vl.start_offset(), vl.stride());
        let rep = self.heads / self.kv_heads;
        let kernel = Kernel::detect();
        let mut out = vec![0f32; q.len()];
        // One unit per (sequence, KV head, step) for prompts: the query heads that share the KV head see the same
        // keys, and take them a block at a time, each block's keys and values read from memory once for all of
        // them (every query's arithmetic unchanged: the kernels' four-key groups and per-lane sums fall as in one
        // call). Units are ordered by sequence, KV head, then step, so each thread's consecutive units read the
        // same cached rows. A decoding step has few units: there each query head is its own unit, so the threads
        // share the work.
        let per = if b * steps * self.kv_heads >= 16 {
            rep
        } else {
            1
        };
        let groups = self.heads / per;
        let locate = |unit: usize| {
            let (bi, rest) = (unit / (steps * groups), unit % (steps * groups));
            (bi, rest / steps * per, rest % steps)
        };
        let group = |unit: usize, o: &mut [f32]| {
            let (bi, h0, i) = locate(unit);
            let g = h0 / rep;
            let kbase = ko + bi * kstr[0] + g * kstr[1];
            let vbase = vo + bi * vstr[0] + g * vstr[1];
            let mut qs = vec![0f32; per * hd];
            for (r, qh) in qs.chunks_mut(hd).enumerate() {
                let qi = (bi * self.heads + h0 + r) * steps + i;
                for (d, x) in qh.iter_mut().zip(&q[qi * hd..(qi + 1) * hd]) {
                    *d = x * self.scale;
                }
            }
            let range = visible[bi * steps + i].clone();
            let n = range.len();
            let mut scores = vec![0f32; per * n];
            for j0 in (0..n).step_by(KEY_BLOCK) {
                let at = kbase + (range.start + j0) * kstr[2];
                let len = KEY_BLOCK.min(n - j0);
                for (qh, sc) in qs.chunks(hd).zip(scores.chunks_mut(n)) {
                    let sc = &mut sc[j0..j0 + len];
                    match ks {
                        Cached::F32(ks) => kernel.scores_f32(&ks[at..], kstr[2], qh, sc),
                        Cached::F16(ks) => kernel.scores_f16(&ks[at..], kstr[2], qh, sc),
                    }
                }
            }
            for sc in scores.chunks_mut(n) {
                if let Some(cap) = self.softcap {
                    sc.iter_mut().for_each(|s| *s = (*s / cap).tanh() * cap);
                }
                kernel.softmax(sc);
            }
            for j0 in (0..n).step_by(KEY_BLOCK) {
                let at = vbase + (range.start + j0) * vstr[2];
                let len = KEY_BLOCK.min(n - j0);
                for (p, o) in scores.chunks(n).zip(o.chunks_mut(hd)) {
                    let p = &p[j0..j0 + len];
                    match vs {
                        Cached::F32(vs) => kernel.weighted_sum_f32(&vs[at..], vstr[2], p, o),
                        Cached::F16(vs) => kernel.weighted_sum_f16(&vs[at..], vstr[2], p, o),
                    }
                }
            }
        };
        let units = b * steps * groups;
        let work: usize = visible.iter().map(|r| r.len()).sum::<usize>() * self.heads * hd;
        let dst = SendPtr(out.as_mut_ptr());
        let one = |u: usize| {
            let mut o = vec![0f32; per * hd];
            group(u, &mut o);
            let (bi, h0, i) = locate(u);
            let at = ((bi * steps + i) * self.heads + h0) * hd;
            // SAFETY: the query heads h0..h0 + per of this (sequence, step) are consecutive in `out` and belong
            // to this unit alone; `out` outlives the loop.
            unsafe { std::ptr::copy_nonoverlapping(o.as_ptr(), dst.get().add(at), per * hd) };
        };
        if work >= PARALLEL_WORK {
            (0..units).into_par_iter().for_each(one);
        } else {
            (0..units).for_each(one);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::sampling::Rng::values(seed, n)
    }

    /// Against a float64 softmax-attention over each sequence's visible keys: grouped heads, ranges that skip
    /// padding or fall outside a window, soft-capping, and cache views whose rows are strided (a cache with room
    /// to spare, as the real one has); float32 and float16 caches (the reference reads the same rounded values);
    /// one step (decoding) and several (a prompt: each step sees keys up to itself).
    #[test]
    fn decode_attention_matches_a_plain_softmax_over_the_visible_keys() {
        // Head sizes of 32, 40, 64, 80 and 128 and one not a multiple of 8 (36: the kernels' scalar tails);
        // three and four query heads per KV head; key ranges of one key to 150 (whole groups of four keys or not,
        // several blocks of keys); decoding steps take a unit per query head, prompts one per KV head.
        for (nh, hd, keys) in [
            (6, 40, 11),
            (6, 64, 11),
            (8, 64, 29),
            (6, 32, 3),
            (6, 36, 13),
            (8, 80, 9),
            (6, 128, 17),
            // Past one block of keys (KEY_BLOCK), the last block partial.
            (6, 64, 150),
        ] {
            for dtype in [DType::F32, DType::F16] {
                for steps in [1, 3] {
                    check_decode_attention(nh, hd, keys, dtype, steps);
                }
            }
        }
    }

    fn check_decode_attention(nh: usize, hd: usize, keys: usize, dtype: DType, steps: usize) {
        let (b, nkv, cap) = (3usize, 2usize, keys + 5);
        let q = random(b * nh * steps * hd, 1);
        let kfull = Tensor::from_vec(
            random(b * nkv * cap * hd, 2),
            (b, nkv, cap, hd),
            &Device::Cpu,
        )
        .unwrap();
        let vfull = Tensor::from_vec(
            random(b * nkv * cap * hd, 3),
            (b, nkv, cap, hd),
            &Device::Cpu,
        )
        .unwrap();
        let (kfull, vfull) = (
            kfull.to_dtype(dtype).unwrap(),
            vfull.to_dtype(dtype).unwrap(),
        );
        let (k, v) = (
            kfull.narrow(2, 0, keys).unwrap(),
            vfull.narrow(2, 0, keys).unwrap(),
        );
        let widened = |t: &Tensor| {
            let t = t.to_dtype(DType::F32).unwrap();
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (kd, vd) = (widened(&k), widened(&v));
        // Step i of a prompt sees keys up to its own position (the last step sees them all).
        let visible: Vec<_> = (0..b)
            .flat_map(|bi| {
                (0..steps).map(move |i| {
                    let end = keys + 1 + i - steps.min(keys);
                    [0, end / 3, end - 1][bi]..end
                })
            })
            .collect();
        for softcap in [None, Some(5.0f32)] {
            let attn = DecodeAttention {
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                scale: 0.125,
                softcap,
            };
            let got = attn
                .run(&q, &k, &v, &visible, steps)
                .unwrap()
                .expect("f32 or f16 CPU cache");
            for (bi, i, h) in
                (0..b).flat_map(|bi| (0..steps).flat_map(move |i| (0..nh).map(move |h| (bi, i, h))))
            {
                let g = h / (nh / nkv);
                let at = |j: usize, d: usize| ((bi * nkv + g) * keys + j) * hd + d;
                let qi = (bi * nh + h) * steps + i;
                let qh = &q[qi * hd..(qi + 1) * hd];
                let range = visible[bi * steps + i].clone();
                let scores: Vec<f64> = range
                    .clone()
                    .map(|j| {
                        let s: f64 = (0..hd)
                            .map(|d| (qh[d] * 0.125) as f64 * kd[at(j, d)] as f64)
                            .sum();
                        softcap.map_or(s, |c| (s / c as f64).tanh() * c as f64)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for d in 0..hd {
                    let want: f64 = range
                        .clone()
                        .zip(&scores)
                        .map(|(j, s)| (s - max).exp() / total * vd[at(j, d)] as f64)
                        .sum();
                    let have = got[((bi * steps + i) * nh + h) * hd + d] as f64;
                    assert!(
                            (have - want).abs() < 1e-5,
                            "nh={nh} hd={hd} keys={keys} steps={steps} b={bi} i={i} h={h} d={d} cap={softcap:?}: {have} vs {want}"
                        );
                }
            }
        }
        // bfloat16, or a range past the cache: the general path takes over.
        let attn = DecodeAttention {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: 1.0,
            softcap: None,
        };
        let kb = k.to_dtype(DType::BF16).unwrap();
        assert!(attn.run(&q, &kb, &v, &visible, 1).unwrap().is_none());
        assert!(attn
            .run(&q, &k, &v, &[0..keys, 0..keys + 1, 0..1], 1)
            .unwrap()
            .is_none());
    }
}
