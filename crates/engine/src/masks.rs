//! Additive attention masks for one forward pass (causal, left padding, sliding windows), built lazily per
//! window size, and the key ranges the in-place attention reads instead of a mask.

use candle_core::{Device, Tensor};

/// Additive attention masks for one forward pass: causal, left padding and sliding windows.
pub(crate) struct Masks {
    pads: Vec<usize>,
    start: usize,
    pub(crate) t: usize,
    device: Device,
    full: std::cell::RefCell<Option<(usize, Option<Tensor>)>>,
    windowed: std::cell::RefCell<Vec<(usize, usize, Option<Tensor>)>>,
}

impl Masks {
    pub(crate) fn new(
        pads: &[usize],
        start: usize,
        t: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            pads: pads.to_vec(),
            start,
            t,
            device: device.clone(),
            full: Default::default(),
            windowed: Default::default(),
        })
    }

    /// The keys each step may attend to, as ranges indexed `[sequence · T + step]`: exactly the keys
    /// [`Self::build`]'s mask leaves at zero (from the sequence's first real token, or the start of the sliding
    /// window, up to the step itself; a padding position sees only itself).
    pub(crate) fn visible(&self, window: Option<usize>) -> Vec<std::ops::Range<usize>> {
        let steps = self.start..self.start + self.t;
        self.pads
            .iter()
            .flat_map(|&pad| {
                steps.clone().map(move |qpos| {
                    if qpos < pad {
                        return qpos..qpos + 1;
                    }
                    let window_start = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
                    pad.max(window_start)..qpos + 1
                })
            })
            .collect()
    }

    /// The mask for `s` keys, shaped `[B, 1, 1, T, S]`, or `None` when nothing is masked.
    pub(crate) fn get(
        &self,
        window: Option<usize>,
        s: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        match window {
            None => {
                if let Some((cs, m)) = self.full.borrow().as_ref() {
                    if *cs == s {
                        return Ok(m.clone());
                    }
                }
                let m = self.build(None, s)?;
                *self.full.borrow_mut() = Some((s, m.clone()));
                Ok(m)
            }
            Some(w) => {
                if let Some((_, _, m)) = self
                    .windowed
                    .borrow()
                    .iter()
                    .find(|(ws, ss, _)| *ws == w && *ss == s)
                {
                    return Ok(m.clone());
                }
                let m = self.build(Some(w), s)?;
                self.windowed.borrow_mut().push((w, s, m.clone()));
                Ok(m)
            }
        }
    }

    pub(crate) fn build(
        &self,
        window: Option<usize>,
        s: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, t, start) = (self.pads.len(), self.t, self.start);
        let mut data = vec![0f32; b * t * s];
        let mut any = false;
        for (bi, &pad) in self.pads.iter().enumerate() {
            for i in 0..t {
                let qpos = start + i;
                for j in 0..s {
                    // A padding position attends only to itself: a row of nothing but -inf would turn the
                    // softmax, and through the cache every later layer, into NaN.
                    let blocked = if qpos < pad {
                        j != qpos
                    } else {
                        j > qpos || j < pad || window.is_some_and(|w| qpos - j.min(qpos) >= w)
                    };
                    if blocked {
                        data[(bi * t + i) * s + j] = f32::NEG_INFINITY;
                        any = true;
                    }
                }
            }
        }
        if !any {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(data, (b, 1, 1, t, s), &self.device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place attention's key ranges are exactly the keys the general path's mask leaves open, for
    /// padded sequences, prompts that start after earlier steps, and sliding windows shorter than the prompt.
    #[test]
    fn visible_ranges_are_the_keys_the_mask_leaves_open() {
        for (pads, start, t, window) in [
            (vec![0, 3, 6], 0, 9, None),
            (vec![0, 2], 4, 5, None),
            (vec![0, 3, 6], 0, 9, Some(4)),
            (vec![1, 0], 7, 1, Some(3)),
            (vec![0], 0, 12, Some(1)),
        ] {
            let masks = Masks::new(&pads, start, t, &Device::Cpu).unwrap();
            let s = start + t;
            let visible = masks.visible(window);
            assert_eq!(visible.len(), pads.len() * t);
            let mask: Option<Vec<f32>> = masks
                .build(window, s)
                .unwrap()
                .map(|m| m.flatten_all().unwrap().to_vec1().unwrap());
            for (k, range) in visible.iter().enumerate() {
                for j in 0..s {
                    let open = mask.as_ref().is_none_or(|m| m[k * s + j] == 0.0);
                    assert_eq!(
                        range.contains(&j),
                        open,
                        "pads {pads:?} start {start} window {window:?}: sequence {} step {} key {j}",
                        k / t,
                        k % t
                    );
                }
            }
        }
    }
}
