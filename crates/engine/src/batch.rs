//! Several prompts decoded together: the prompts are left-padded to one length and every step runs all sequences
//! through one forward pass, so the weights are read once per step for the whole batch. Each sequence keeps its
//! own sampler (parameters and seed), stop strings, end-of-sequence check and token budget; a sequence that is done
//! leaves the batch (its rows of the KV cache are dropped), so the remaining steps compute only for the ones still
//! running. This is what the prompt-suite runner uses, a lone generation is a batch of one, and the server's
//! continuous batching (`scheduler.rs`) runs its sequences through the same per-sequence rule ([`Seq`]).

use std::time::Instant;

use crate::generate::{FinishReason, Generation, Prompt, StopFilter, Timings, Usage};
use crate::loader::Model;
use crate::model::Cache;
use crate::sampling::{fresh_seed, Sampler, SamplingParams};
use crate::tokenizer::DecodeStream;
use crate::EngineError;

/// One sequence: its sampler, detokenizer, stop strings, token budget, context limit and clock. Every decode
/// loop (a lone [`Model::generate_stream`], [`Model::generate_batch`] and the server's scheduler) runs its
/// sequences through this, so they all follow one rule for what a sequence does after each token.
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
    /// The model's context: the sequence ends when its next token would not fit.
    max_positions: usize,
    /// When the request arrived (first-token latency counts from here).
    started: Instant,
    /// Time spent running this sequence's prompt.
    pub(crate) prefill_ms: f64,
    first_token: Option<Instant>,
}

impl Seq {
    /// A sequence for `prompt` (token ids), after checking the parameters ([`SamplingParams::validate`]) and
    /// that the prompt leaves room in the context ([`Model::check_prompt`]).
    pub(crate) fn new(
        model: &Model,
        prompt: &[u32],
        params: &SamplingParams,
        started: Instant,
    ) -> Result<Self, EngineError> {
        params.validate()?;
        model.check_prompt(prompt)?;
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
            max_positions: model.decoder.max_positions(),
            started,
            prefill_ms: 0.0,
            first_token: None,
        })
    }

    /// Samples the next token from `logits` and takes it. Returns the token to feed next (`None` when the
    /// sequence ended on an end-of-sequence id) and the text that may be released now. The sequence ends (its
    /// `finish` is set) on an end-of-sequence id, a stop string, its token budget, or when the token it would
    /// feed next has no room left in the context.
    pub(crate) fn step(
        &mut self,
        model: &Model,
        logits: &mut [f32],
    ) -> Result<(Option<u32>, String), EngineError> {
        let tok = self.sampler.sample(logits);
        self.first_token.get_or_insert_with(Instant::now);
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
        if self.finish.is_none()
            && (self.out.len() >= self.max_tokens
                || self.prompt_len + self.out.len() > self.max_positions)
        {
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

    /// The finished generation (after [`Seq::close`]), timed by the sequence's own clock: first token from the
    /// request's arrival, decoding from the first token to now.
    pub(crate) fn generation(&mut self, model: &Model, finish: FinishReason) -> Generation {
        let first = self.first_token.unwrap_or_else(Instant::now);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let decode_ms = ms(first.elapsed());
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
                load_ms: ms(model.load_time),
                prefill_ms: self.prefill_ms,
                first_token_ms: ms(first.saturating_duration_since(self.started)),
                decode_ms,
                prefill_tokens_per_s: self.prompt_len as f64 / (self.prefill_ms / 1000.0).max(1e-9),
                decode_tokens_per_s: if decoded > 0.0 {
                    decoded / (decode_ms / 1000.0).max(1e-9)
                } else {
                    0.0
                },
            },
            seed: self.seed,
        }
    }
}

/// Where a sequence's text goes as it becomes final; returning `false` cancels the sequence.
pub(crate) type Sink<'a> = Box<dyn FnMut(&str) -> bool + 'a>;

impl Model {
    /// The one check of a prompt against the model: not empty, and short enough to leave room for at least one
    /// generated token. Returns the positions left for generated tokens.
    pub fn check_prompt(&self, ids: &[u32]) -> Result<usize, EngineError> {
        let max = self.decoder.max_positions();
        if ids.is_empty() {
            return Err(EngineError::Request("the prompt is empty".into()));
        }
        if ids.len() >= max {
            return Err(EngineError::ContextFull {
                needed: ids.len() + 1,
                max,
            });
        }
        Ok(max - ids.len())
    }

    /// Generates an answer for each prompt with its own parameters, all in one batch. The answers equal those of
    /// [`Model::generate`] up to float rounding in the batched matrix products.
    pub fn generate_batch(
        &self,
        prompts: &[Prompt],
        params: &[SamplingParams],
    ) -> Result<Vec<Generation>, EngineError> {
        let sinks = prompts
            .iter()
            .map(|_| Box::new(|_: &str| true) as Sink)
            .collect();
        self.decode_together(prompts, params, sinks)
    }

    /// The decode loop of [`Model::generate_stream`] and [`Model::generate_batch`]: each prompt is prefilled on
    /// its own (no work spent on padding), then the caches are stacked into one left-padded batch and every step
    /// decodes one token for each sequence still running; one that ends leaves the batch at once (its rows of the
    /// cache dropped, and padding nobody needs trimmed), flushed and timed by its [`Seq`].
    pub(crate) fn decode_together(
        &self,
        prompts: &[Prompt],
        params: &[SamplingParams],
        mut sinks: Vec<Sink<'_>>,
    ) -> Result<Vec<Generation>, EngineError> {
        if prompts.len() != params.len() || prompts.len() != sinks.len() {
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
        let pad = self.pad_id();
        let mut seqs = ids
            .iter()
            .zip(params)
            .map(|(row, p)| Seq::new(self, row, p, started))
            .collect::<Result<Vec<_>, _>>()?;
        let mut caches = Vec::with_capacity(ids.len());
        let mut all = Vec::with_capacity(ids.len());
        for (row, seq) in ids.iter().zip(&mut seqs) {
            let prefill = Instant::now();
            let mut c = Cache::new(&self.decoder.cfg, 1);
            let l = self
                .decoder
                .forward(std::slice::from_ref(row), &mut c, false)?;
            all.push(l.squeeze(0)?.to_vec1::<f32>()?);
            seq.prefill_ms = prefill.elapsed().as_secs_f64() * 1000.0;
            caches.push(c);
        }
        let mut cache = Cache::stack(caches)?;
        let mut results: Vec<Option<Generation>> = seqs.iter().map(|_| None).collect();
        // Which sequence each row of the batch (and of the cache) is.
        let mut rows_of: Vec<usize> = (0..seqs.len()).collect();
        loop {
            let mut next = Vec::with_capacity(rows_of.len());
            for (&si, mut row) in rows_of.iter().zip(all) {
                let seq = &mut seqs[si];
                let (tok, text) = seq.step(self, &mut row)?;
                if !text.is_empty() && !(sinks[si])(&text) {
                    seq.finish = Some(FinishReason::Cancelled);
                }
                if seq.finish.is_some() {
                    let (tail, finish) = seq.close(self)?;
                    if !tail.is_empty() {
                        (sinks[si])(&tail);
                    }
                    results[si] = Some(seq.generation(self, finish));
                }
                next.push(tok.unwrap_or(pad));
            }
            let keep: Vec<usize> = (0..rows_of.len())
                .filter(|&r| seqs[rows_of[r]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < rows_of.len() {
                cache.retain(&keep)?;
                cache.trim()?;
                rows_of = keep.iter().map(|&r| rows_of[r]).collect();
            }
            let step: Vec<Vec<u32>> = keep.iter().map(|&r| vec![next[r]]).collect();
            all = self
                .decoder
                .forward(&step, &mut cache, false)?
                .to_vec2::<f32>()?;
        }
        Ok(results
            .into_iter()
            .map(|g| g.expect("every sequence ends before the loop does"))
            .collect())
    }

    /// The token that fills left padding (never attended to).
    pub(crate) fn pad_id(&self) -> u32 {
        self.eos_ids.first().copied().unwrap_or(0)
    }
}
