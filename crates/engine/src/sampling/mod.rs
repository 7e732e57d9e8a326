//! Choosing the next token: penalties, temperature, top-k, top-p, min-p, and a seeded generator so that the
//! same seed gives the same text.
//!
//! The order follows transformers' logits processors: repetition penalty, then the OpenAI-style frequency and
//! presence penalties, then temperature, top-k, top-p and min-p. A temperature of 0 means greedy decoding.

use serde::{Deserialize, Serialize};

/// Sampling settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables it; >1 discourages tokens already in the prompt or the output (transformers' definition).
    pub repetition_penalty: f32,
    /// Subtracted once per earlier occurrence in the output (OpenAI's definition).
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurred in the output (OpenAI's definition).
    pub presence_penalty: f32,
    /// Seed of the sampler; `None` draws one (and the generation reports it).
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (for benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks every setting against [`limits`], with `max_tokens` at most [`limits::MAX_TOKENS`].
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_within(limits::MAX_TOKENS)
    }

    /// Checks every setting against [`limits`], with `max_tokens` at most `max_tokens_cap` (a server's
    /// `--max-tokens-cap`; never above [`limits::MAX_TOKENS`]). The one table of what a generation may ask for:
    /// the server, suites, the judge and the CLI all come through here.
    pub fn validate_within(&self, max_tokens_cap: usize) -> Result<(), ParamError> {
        use limits::*;
        let in_range = |field: &'static str, v: f32, (lo, hi): (f32, f32)| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ParamError::new(
                    field,
                    v,
                    format!("a number between {lo} and {hi}"),
                ))
            }
        };
        in_range("temperature", self.temperature, TEMPERATURE)?;
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError::new(
                "top_p",
                self.top_p,
                "greater than 0 and at most 1",
            ));
        }
        in_range("min_p", self.min_p, MIN_P)?;
        if !(self.repetition_penalty.is_finite()
            && self.repetition_penalty > 0.0
            && self.repetition_penalty <= REPETITION_PENALTY_MAX)
        {
            return Err(ParamError::new(
                "repetition_penalty",
                self.repetition_penalty,
                format!("greater than 0 and at most {REPETITION_PENALTY_MAX}"),
            ));
        }
        in_range("frequency_penalty", self.frequency_penalty, PENALTY)?;
        in_range("presence_penalty", self.presence_penalty, PENALTY)?;
        let cap = max_tokens_cap.clamp(1, MAX_TOKENS);
        if !(1..=cap).contains(&self.max_tokens) {
            return Err(ParamError::new(
                "max_tokens",
                self.max_tokens,
                format!("between 1 and {cap}"),
            ));
        }
        if self.stop.len() > MAX_STOP
            || self
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(ParamError::new(
                "stop",
                format!("{:?}", self.stop),
                format!("at most {MAX_STOP} non-empty strings of at most {MAX_STOP_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

/// `max_tokens` when nobody sets it (the server, suites, the judge and the CLI all start from this).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The one table of limits on what a generation may ask for, applied by [`SamplingParams::validate_within`].
/// The README's API section lists them.
pub mod limits {
    /// The largest `max_tokens` anyone may ask for; a server may cap lower (`--max-tokens-cap`).
    pub const MAX_TOKENS: usize = 32_768;
    /// Inclusive range of `temperature` (0 is greedy), as OpenAI's.
    pub const TEMPERATURE: (f32, f32) = (0.0, 2.0);
    /// Inclusive range of `min_p` (0 turns it off).
    pub const MIN_P: (f32, f32) = (0.0, 1.0);
    /// `repetition_penalty` must be above 0 and at most this (1 turns it off).
    pub const REPETITION_PENALTY_MAX: f32 = 10.0;
    /// Inclusive range of `frequency_penalty` and `presence_penalty`, as OpenAI's.
    pub const PENALTY: (f32, f32) = (-2.0, 2.0);
    /// Stop strings per request, as OpenAI's.
    pub const MAX_STOP: usize = 4;
    /// Bytes per stop string.
    pub const MAX_STOP_BYTES: usize = 256;
}

/// A sampling setting out of [`limits`]: the field, the value it had, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be {rule}")]
pub struct ParamError {
    pub field: &'static str,
    /// The value as given.
    pub value: String,
    /// What it must be, such as "a number between 0 and 2".
    pub rule: String,
}

impl ParamError {
    fn new(field: &'static str, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            field,
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// Sampling settings that may each be left unset: what a request body, a suite file (`[defaults]` and each
/// prompt), the CLI's flags and a checkpoint's `generation_config.json` say. Layers combine with
/// [`SamplingOverrides::or`] and land on full parameters with [`SamplingOverrides::apply`]; a new sampling knob is
/// a field here and in [`SamplingParams`], and each source's names stay a thin adapter over this.
///
/// Serialized fields keep this order and skip what is unset, so a suite's canonical body (and its version hash)
/// only changes when a setting is actually used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
}

impl SamplingOverrides {
    /// `self`'s settings where present, else `base`'s.
    pub fn or(&self, base: &SamplingOverrides) -> SamplingOverrides {
        SamplingOverrides {
            max_tokens: self.max_tokens.or(base.max_tokens),
            temperature: self.temperature.or(base.temperature),
            top_p: self.top_p.or(base.top_p),
            top_k: self.top_k.or(base.top_k),
            min_p: self.min_p.or(base.min_p),
            repetition_penalty: self.repetition_penalty.or(base.repetition_penalty),
            frequency_penalty: self.frequency_penalty.or(base.frequency_penalty),
            presence_penalty: self.presence_penalty.or(base.presence_penalty),
            seed: self.seed.or(base.seed),
            stop: self.stop.clone().or_else(|| base.stop.clone()),
        }
    }

    /// `params` with every setting present here replaced.
    pub fn apply(&self, params: SamplingParams) -> SamplingParams {
        let p = params;
        SamplingParams {
            max_tokens: self.max_tokens.unwrap_or(p.max_tokens),
            temperature: self.temperature.unwrap_or(p.temperature),
            top_p: self.top_p.unwrap_or(p.top_p),
            top_k: self.top_k.unwrap_or(p.top_k),
            min_p: self.min_p.unwrap_or(p.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(p.repetition_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(p.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(p.presence_penalty),
            seed: self.seed.or(p.seed),
            stop: self.stop.clone().unwrap_or(p.stop),
            ignore_eos: p.ignore_eos,
        }
    }

    /// Only the settings that shape a greedy answer too (length, penalties, stop strings): what a suite's greedy
    /// answer takes from its prompt, whose temperature and top-p are for the seeded samples.
    pub fn for_greedy(&self) -> SamplingOverrides {
        SamplingOverrides {
            max_tokens: self.max_tokens,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            stop: self.stop.clone(),
            ..SamplingOverrides::default()
        }
    }

    /// The sampling defaults of a checkpoint's `generation_config.json` (transformers' keys): greedy unless it
    /// sets `do_sample`, then its temperature, top-p and top-k with transformers' defaults (1, 1, 50) for the
    /// ones it leaves out; its repetition penalty either way.
    pub fn from_generation_config(json: &serde_json::Value) -> SamplingOverrides {
        let f = |k: &str| json.get(k).and_then(|v| v.as_f64()).map(|x| x as f32);
        let sample = json
            .get("do_sample")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let top_k = json
            .get("top_k")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        SamplingOverrides {
            temperature: sample.then(|| f("temperature").unwrap_or(1.0)),
            top_p: sample.then(|| f("top_p").unwrap_or(1.0)),
            top_k: sample.then(|| top_k.unwrap_or(50)),
            repetition_penalty: f("repetition_penalty"),
            ..SamplingOverrides::default()
        }
    }
}

/// SplitMix64: tiny, fast, and stable across versions, so a stored seed reproduces its text forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// `n` values drawn uniformly from [-2, 2) (the kernel and attention tests' data).
    #[cfg(test)]
    pub(crate) fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = Self::new(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
            .collect()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws a seed from the clock, for requests that did not give one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ u64::from(std::process::id())).next_u64()
}

/// Per-sequence sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Occurrences of each token in the output so far.
    counts: std::collections::HashMap<u32, u32>,
    /// Tokens seen in prompt or output (for the repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64, prompt: &[u32]) -> Self {
        Self {
            params,
            rng: Rng::new(seed),
            counts: Default::default(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Records a generated token.
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_default() += 1;
        self.seen.insert(token);
    }

    /// Picks the next token from float32 logits.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if p.top_k > 0 {
            p.top_k.min(idx.len())
        } else {
            idx.len()
        };
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);
        let max = logits[idx[0] as usize] / p.temperature;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i as usize] / p.temperature - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() * mass;
        for (i, &q) in probs[..keep].iter().enumerate() {
            if r < q {
                return idx[i];
            }
            r -= q;
        }
        idx[keep - 1]
    }
}

/// Index of the largest logit (the first one on ties, as `torch.argmax` does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
