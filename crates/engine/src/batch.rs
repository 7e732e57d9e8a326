//! Several prompts decoded together: the prompts are left-padded to one length and every step runs all sequences
//! through one forward pass, so the weights are read once per step for the whole batch. Each sequence keeps its
//! own sampler (parameters and seed), stop strings, end-of-sequence check and token budget; a sequence that is done
//! leaves the batch (its rows of the KV cache are dropped), so the remaining steps compute only for the ones still
//! running. This is what the prompt-suite runner uses; the server's continuous batching (`scheduler.rs`) shares
//! the per-sequence bookkeeping ([`Seq`]).

use std::time::Instant;

use crate::generate::{FinishReason, Generation, Prompt, StopFilter, Timings, Usage};
use crate::loader::Model;
use crate::model::Cache;
use crate::sampling::{fresh_seed, Sampler, SamplingParams};
use crate::tokenizer::DecodeStream;
use crate::EngineError;

/// One sequence of a batch: its sampler, detokenizer, stop strings and budget.
pub(crate) struct Seq {
    sampler: Sampler,
    stream: DecodeStream,
    stops: StopFilter,
    pub(crate) out: Vec<u32>,
    pub(crate) finish: Option<FinishReason>,
    max_tokens: usize,
    ignore_eos: bool,
    pub(crate) seed: u64,
    pub(crate) prompt_len: usize,
}

impl Seq {
    pub(crate) fn new(prompt: &[u32], params: &SamplingParams) -> Result<Self, EngineError> {
        params.validate().map_err(EngineError::Request)?;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        Ok(Self {
            sampler: Sampler::new(params.clone(), seed, prompt),
            stream: DecodeStream::new(true),
            stops: StopFilter::new(&params.stop),
            out: Vec::new(),
            finish: None,
            max_tokens: params.max_tokens,
            ignore_eos: params.ignore_eos,
            seed,
            prompt_len: prompt.len(),
        })
    }

    /// Samples the next token from `logits` and takes it. Returns the token to feed next (`None` when the
    /// sequence ended on an end-of-sequence id) and the text that may be released now.
    pub(crate) fn step(
        &mut self,
        model: &Model,
        logits: &mut [f32],
    ) -> Result<(Option<u32>, String), EngineError> {
        let tok = self.sampler.sample(logits);
        if !self.ignore_eos && model.eos_ids.contains(&tok) {
            self.finish = Some(FinishReason::Stop);
            return Ok((None, String::new()));
        }
        self.sampler.accept(tok);
        self.out.push(tok);
        let mut emit = String::new();
        if let Some(piece) = self.stream.step(&model.tokenizer, tok)? {
            let (e, hit) = self.stops.push(&piece);
            emit = e;
            if hit {
                self.finish = Some(FinishReason::Stop);
            }
        }
        if self.finish.is_none() && self.out.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        Ok((Some(tok), emit))
    }

    /// Ends the sequence: flushes held-back text (unless cancelled). Returns the text released by the flush and
    /// the finish reason.
    pub(crate) fn close(&mut self, model: &Model) -> Result<(String, FinishReason), EngineError> {
        let finish = self.finish.unwrap_or(FinishReason::Length);
        if finish == FinishReason::Cancelled || self.stops.hit {
            let finish = if self.stops.hit && finish != FinishReason::Cancelled {
                FinishReason::Stop
            } else {
                finish
            };
            return Ok((String::new(), finish));
        }
        let tail = self.stream.flush(&model.tokenizer)?.unwrap_or_default();
        let (mut emit, hit) = self.stops.push(&tail);
        if !hit {
            emit.push_str(&self.stops.finish());
        }
        Ok((emit, if hit { FinishReason::Stop } else { finish }))
    }

    /// The finished generation (after [`Seq::close`]), its rates derived from the caller's clock readings.
    pub(crate) fn generation(
        &mut self,
        model: &Model,
        finish: FinishReason,
        t: SeqTimes,
    ) -> Generation {
        let decoded = self.out.len().saturating_sub(1) as f64;
        Generation {
            text: std::mem::take(&mut self.stops.text),
            usage: Usage {
                prompt_tokens: self.prompt_len,
                completion_tokens: self.out.len(),
            },
            token_ids: std::mem::take(&mut self.out),
            finish_reason: finish,
            timings: Timings {
                load_ms: model.load_time.as_secs_f64() * 1000.0,
                prefill_ms: t.prefill_ms,
                first_token_ms: t.first_token_ms,
                decode_ms: t.decode_ms,
                prefill_tokens_per_s: t.prefill_tokens as f64 / (t.prefill_ms / 1000.0).max(1e-9),
                decode_tokens_per_s: decoded / (t.decode_ms / 1000.0).max(1e-9),
            },
            seed: self.seed,
        }
    }
}

/// Clock readings of one sequence, for [`Seq::generation`].
pub(crate) struct SeqTimes {
    pub prefill_ms: f64,
    pub first_token_ms: f64,
    pub decode_ms: f64,
    /// Prompt tokens the prefill time covers.
    pub prefill_tokens: usize,
}

impl Model {
    /// Generates an answer for each prompt with its own parameters, all in one batch. The answers equal those of
    /// [`Model::generate`] up to float rounding in the batched matrix products.
    pub fn generate_batch(
        &self,
        prompts: &[Prompt],
        params: &[SamplingParams],
    ) -> Result<Vec<Generation>, EngineError> {
        if prompts.len() != params.len() {
            return Err(EngineError::Request(format!(
                "{} prompts but {} parameter sets",
                prompts.len(),
                params.len()
            )));
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.prompt_ids(p))
            .collect::<Result<_, _>>()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let max_pos = self.decoder.max_positions();
        if ids.iter().any(Vec::is_empty) {
            return Err(EngineError::Request("a prompt is empty".into()));
        }
        if longest >= max_pos {
            return Err(EngineError::ContextFull {
                needed: longest + 1,
                max: max_pos,
            });
        }
        let pad = self.pad_id();
        let mut seqs = ids
            .iter()
            .zip(params)
            .map(|(row, p)| Seq::new(row, p))
            .collect::<Result<Vec<_>, _>>()?;
        // Each prompt is prefilled on its own (no work spent on padding), then the caches are stacked into one
        // left-padded batch for decoding.
        let prefill_start = Instant::now();
        let mut caches = Vec::with_capacity(ids.len());
        let mut first = Vec::with_capacity(ids.len());
        for row in &ids {
            let mut c = Cache::new(&self.decoder.cfg, 1);
            let l = self
                .decoder
                .forward(std::slice::from_ref(row), &mut c, false)?;
            first.push(l.squeeze(0)?.to_vec1::<f32>()?);
            caches.push(c);
        }
        let mut cache = Cache::stack(caches)?;
        let prefill_ms = prefill_start.elapsed().as_secs_f64() * 1000.0;
        let decode_start = Instant::now();
        // Which sequence each row of the batch (and of the cache) is.
        let mut rows_of: Vec<usize> = (0..seqs.len()).collect();
        let mut all: Vec<Vec<f32>> = first;
        loop {
            let mut next = Vec::with_capacity(rows_of.len());
            for (&si, mut row) in rows_of.iter().zip(all) {
                let (tok, _) = seqs[si].step(self, &mut row)?;
                next.push(tok.unwrap_or(pad));
            }
            let keep: Vec<usize> = (0..rows_of.len())
                .filter(|&r| seqs[rows_of[r]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if cache.len() + 1 > max_pos {
                for s in seqs.iter_mut().filter(|s| s.finish.is_none()) {
                    s.finish = Some(FinishReason::Length);
                }
                break;
            }
            if keep.len() < rows_of.len() {
                cache.retain(&keep)?;
                rows_of = keep.iter().map(|&r| rows_of[r]).collect();
            }
            let step: Vec<Vec<u32>> = keep.iter().map(|&r| vec![next[r]]).collect();
            all = self
                .decoder
                .forward(&step, &mut cache, false)?
                .to_vec2::<f32>()?;
        }
        let decode_ms = decode_start.elapsed().as_secs_f64() * 1000.0;
        let mut out = Vec::with_capacity(seqs.len());
        let prefill_tokens = ids.iter().map(Vec::len).sum();
        for mut s in seqs {
            let (_, finish) = s.close(self)?;
            out.push(s.generation(
                self,
                finish,
                SeqTimes {
                    prefill_ms,
                    first_token_ms: prefill_ms + (prefill_start - started).as_secs_f64() * 1000.0,
                    decode_ms,
                    prefill_tokens,
                },
            ));
        }
        Ok(out)
    }

    /// The token that fills left padding (never attended to).
    pub(crate) fn pad_id(&self) -> u32 {
        self.eos_ids.first().copied().unwrap_or(0)
    }
}
