//! Several prompts decoded together: the prompts are left-padded to one length and every step runs all sequences
//! through one forward pass, so the weights are read once per step for the whole batch. Each sequence keeps its
//! own sampler (parameters and seed), stop strings, end-of-sequence check and token budget; a sequence that is done
//! leaves the batch (its rows of the KV cache are dropped), so the remaining steps compute only for the ones still
//! running. This is what the prompt-suite runner uses.

use std::time::Instant;

use crate::generate::{FinishReason, Generation, Prompt, StopFilter, Timings, Usage};
use crate::loader::Model;
use crate::model::Cache;
use crate::sampling::{fresh_seed, Sampler, SamplingParams};
use crate::tokenizer::DecodeStream;
use crate::EngineError;

struct Seq {
    sampler: Sampler,
    stream: DecodeStream,
    stops: StopFilter,
    out: Vec<u32>,
    finish: Option<FinishReason>,
    max_tokens: usize,
    ignore_eos: bool,
    seed: u64,
    prompt_len: usize,
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
        let pad = self.eos_ids.first().copied().unwrap_or(0);
        let mut seqs = Vec::with_capacity(ids.len());
        for (row, p) in ids.iter().zip(params) {
            p.validate().map_err(EngineError::Request)?;
            let seed = p.seed.unwrap_or_else(fresh_seed);
            seqs.push(Seq {
                sampler: Sampler::new(p.clone(), seed, row),
                stream: DecodeStream::new(true),
                stops: StopFilter::new(&p.stop),
                out: Vec::new(),
                finish: None,
                max_tokens: p.max_tokens,
                ignore_eos: p.ignore_eos,
                seed,
                prompt_len: row.len(),
            });
        }
        let rows: Vec<Vec<u32>> = ids
            .iter()
            .map(|r| {
                let mut padded = vec![pad; longest - r.len()];
                padded.extend_from_slice(r);
                padded
            })
            .collect();
        let mut cache = Cache::with_padding(
            &self.decoder.cfg,
            ids.iter().map(|r| longest - r.len()).collect(),
        );
        let prefill_start = Instant::now();
        let mut logits = self.decoder.forward(&rows, &mut cache, false)?;
        let prefill_ms = prefill_start.elapsed().as_secs_f64() * 1000.0;
        let decode_start = Instant::now();
        // Which sequence each row of the batch (and of the cache) is.
        let mut rows_of: Vec<usize> = (0..seqs.len()).collect();
        loop {
            let all: Vec<Vec<f32>> = logits.to_vec2::<f32>()?;
            let mut next = Vec::with_capacity(rows_of.len());
            for (&si, mut row) in rows_of.iter().zip(all) {
                let s = &mut seqs[si];
                let tok = s.sampler.sample(&mut row);
                if !s.ignore_eos && self.eos_ids.contains(&tok) {
                    s.finish = Some(FinishReason::Stop);
                    next.push(pad);
                    continue;
                }
                s.sampler.accept(tok);
                s.out.push(tok);
                if let Some(piece) = s.stream.step(&self.tokenizer, tok)? {
                    let (_, hit) = s.stops.push(&piece);
                    if hit {
                        s.finish = Some(FinishReason::Stop);
                    }
                }
                if s.finish.is_none() && s.out.len() >= s.max_tokens {
                    s.finish = Some(FinishReason::Length);
                }
                next.push(tok);
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
            logits = self.decoder.forward(&step, &mut cache, false)?;
        }
        let decode_ms = decode_start.elapsed().as_secs_f64() * 1000.0;
        let mut out = Vec::with_capacity(seqs.len());
        for mut s in seqs {
            let finish = s.finish.unwrap_or(FinishReason::Length);
            if !s.stops.hit {
                let tail = s.stream.flush(&self.tokenizer)?.unwrap_or_default();
                s.stops.push(&tail);
                if !s.stops.hit {
                    s.stops.finish();
                }
            }
            let finish = if s.stops.hit {
                FinishReason::Stop
            } else {
                finish
            };
            let decoded = s.out.len().saturating_sub(1) as f64;
            out.push(Generation {
                text: s.stops.text,
                usage: Usage {
                    prompt_tokens: s.prompt_len,
                    completion_tokens: s.out.len(),
                },
                token_ids: s.out,
                finish_reason: finish,
                timings: Timings {
                    load_ms: self.load_time.as_secs_f64() * 1000.0,
                    prefill_ms,
                    first_token_ms: prefill_ms + (prefill_start - started).as_secs_f64() * 1000.0,
                    decode_ms,
                    prefill_tokens_per_s: longest as f64 / (prefill_ms / 1000.0).max(1e-9),
                    decode_tokens_per_s: decoded / (decode_ms / 1000.0).max(1e-9),
                },
                seed: s.seed,
            });
        }
        Ok(out)
    }
}
