//! The KV cache of a batch: every layer's keys and values plus each sequence's left padding, and the operations
//! continuous batching needs on it (dropping finished sequences, stacking newly prefilled ones into a running
//! batch, trimming padding nobody needs).

use candle_core::Tensor;
use candle_nn::kv_cache::KvCache;

use crate::config::ModelConfig;
use crate::EngineError;

/// Per-sequence decoding state: the KV cache of every layer plus each sequence's left padding.
pub struct Cache {
    pub(crate) layers: Vec<KvCache>,
    /// Tokens seen so far, padding included (the same for every sequence of the batch).
    pub(crate) len: usize,
    /// Left padding of each sequence; padded positions are masked out.
    pub(crate) pads: Vec<usize>,
}

impl Cache {
    pub fn new(cfg: &ModelConfig, batch: usize) -> Self {
        Self::with_padding(cfg, vec![0; batch])
    }

    /// A cache for a batch whose sequence `b` is left-padded by `pads[b]` tokens.
    pub fn with_padding(cfg: &ModelConfig, pads: Vec<usize>) -> Self {
        Self {
            layers: (0..cfg.num_layers).map(|_| KvCache::new(2, 256)).collect(),
            len: 0,
            pads,
        }
    }

    pub fn batch(&self) -> usize {
        self.pads.len()
    }

    /// Tokens in the cache, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the cached keys and values of the tokens so far take (room reserved ahead not counted).
    pub fn bytes(&self) -> usize {
        let size = |t: candle_core::Result<Option<Tensor>>| {
            t.ok()
                .flatten()
                .map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes())
        };
        self.layers.iter().map(|l| size(l.k()) + size(l.v())).sum()
    }

    /// Keeps only the sequences at `keep` (indices into the batch, in order): a batch drops sequences that are
    /// done so the next steps compute only for the ones still running.
    pub fn retain(&mut self, keep: &[usize]) -> Result<(), EngineError> {
        if keep.len() == self.pads.len() {
            return Ok(());
        }
        let ids: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
        for layer in &mut self.layers {
            let (k, v) = (layer.k()?, layer.v()?);
            layer.reset();
            if let (Some(k), Some(v)) = (k, v) {
                let idx = Tensor::from_vec(ids.clone(), ids.len(), k.device())?;
                let k = k.contiguous()?.index_select(&idx, 0)?;
                let v = v.contiguous()?.index_select(&idx, 0)?;
                layer.append(&k, &v)?;
            }
        }
        self.pads = keep.iter().map(|&i| self.pads[i]).collect();
        Ok(())
    }

    /// Left padding of each sequence of the batch.
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }

    /// Adds the sequences of `other` after this batch's own (a running batch taking in newly prefilled
    /// sequences). The shorter of the two is left-padded to the longer one's length; padding is masked, and
    /// positions are counted from each sequence's own start, so every sequence continues exactly where it was.
    pub fn merge(&mut self, other: Cache) -> Result<(), EngineError> {
        let this = std::mem::replace(
            self,
            Cache {
                layers: Vec::new(),
                len: 0,
                pads: Vec::new(),
            },
        );
        *self = Cache::stack(vec![this, other])?;
        Ok(())
    }

    /// One batch of all the caches' sequences, in order, each left-padded to the longest (see [`Cache::merge`]).
    /// Prompts prefilled one by one and stacked waste no work on padding in the prefill.
    pub fn stack(caches: Vec<Cache>) -> Result<Cache, EngineError> {
        let mut caches: Vec<Cache> = caches.into_iter().filter(|c| !c.pads.is_empty()).collect();
        if caches.len() <= 1 {
            return caches
                .pop()
                .ok_or_else(|| EngineError::Config("stacking no caches".into()));
        }
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let n_layers = caches[0].layers.len();
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for c in &caches {
                let (Some(k), Some(v)) = (c.layers[l].k()?, c.layers[l].v()?) else {
                    return Err(EngineError::Config("stacking caches that are empty".into()));
                };
                ks.push(front_pad(&k, len - c.len)?);
                vs.push(front_pad(&v, len - c.len)?);
            }
            let mut kv = KvCache::new(2, len.max(1).next_multiple_of(256));
            kv.append(&Tensor::cat(&ks, 0)?, &Tensor::cat(&vs, 0)?)?;
            layers.push(kv);
            for c in &mut caches {
                c.layers[l].reset();
            }
        }
        let pads = caches
            .iter()
            .flat_map(|c| c.pads.iter().map(move |p| p + len - c.len))
            .collect();
        Ok(Cache { layers, len, pads })
    }

    /// Drops the leading positions that are padding for every sequence (after the longest one left the batch),
    /// so attention no longer spans them.
    pub fn trim(&mut self) -> Result<(), EngineError> {
        let cut = self.pads.iter().copied().min().unwrap_or(0);
        if cut == 0 {
            return Ok(());
        }
        for layer in &mut self.layers {
            let (k, v) = (layer.k()?, layer.v()?);
            layer.reset();
            if let (Some(k), Some(v)) = (k, v) {
                let k = k.narrow(2, cut, k.dim(2)? - cut)?.contiguous()?;
                let v = v.narrow(2, cut, v.dim(2)? - cut)?.contiguous()?;
                layer.append(&k, &v)?;
            }
        }
        self.pads.iter_mut().for_each(|p| *p -= cut);
        self.len -= cut;
        Ok(())
    }

    /// Drops everything; the next forward starts at position 0.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(KvCache::reset);
        self.len = 0;
    }
}

/// `t` (`[batch, heads, steps, head_dim]`) with `n` zero steps in front.
fn front_pad(t: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 0 {
        return t.contiguous();
    }
    let (b, h, _, d) = t.dims4()?;
    let zeros = Tensor::zeros((b, h, n, d), t.dtype(), t.device())?;
    Tensor::cat(&[&zeros, t], 2)
}
