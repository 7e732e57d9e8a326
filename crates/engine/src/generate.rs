//! What a generation is (prompts, finish reasons, usage, timings), the streaming entry point (a batch of one over
//! the decode loop in `batch.rs`), stop strings, and the speed and scoring measurements built on them.

use serde::Serialize;

use crate::loader::Model;
use crate::model::Cache;
use crate::sampling::SamplingParams;
use crate::template::ChatMessage;
use crate::EngineError;

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Rendered with the model's chat template, assistant turn opened.
    Chat(Vec<ChatMessage>),
    /// Used as is (the tokenizer may add its BOS token).
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// The caller asked to stop (for example, a client disconnected).
    Cancelled,
}

impl FinishReason {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Loading the model (from `Model::load_time`).
    pub load_ms: f64,
    /// Prompt processing (one forward pass over the prompt).
    pub prefill_ms: f64,
    /// From the call to the first generated token.
    pub first_token_ms: f64,
    /// Every token after the first.
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// The seed the sampler used (drawn when the request gave none).
    pub seed: u64,
}

impl Model {
    /// Renders chat messages with the model's template, opening the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let template = self.template.as_ref().ok_or_else(|| {
            EngineError::Template(format!(
                "{} has no chat template (tokenizer_config.json `chat_template`, chat_template.jinja, or GGUF \
                 `tokenizer.chat_template`); use a raw prompt instead",
                self.source.name
            ))
        })?;
        template.render(messages, true)
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        match prompt {
            Prompt::Chat(messages) => self.tokenizer.encode(&self.render_chat(messages)?, false),
            Prompt::Text(text) => self.tokenizer.encode(text, true),
            Prompt::Tokens(ids) => Ok(ids.clone()),
        }
    }

    /// Generates without streaming.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<Generation, EngineError> {
        self.generate_stream(prompt, params, &mut |_| true)
    }

    /// Generates, handing each new piece of text to `on_text` as soon as it is final (complete characters, not
    /// part of a possible stop string). `on_text` returns `false` to cancel. The pieces concatenate to exactly
    /// the returned text. This is a batch of one: the same loop as [`Model::generate_batch`].
    pub fn generate_stream(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        let mut out = self.decode_together(
            std::slice::from_ref(prompt),
            std::slice::from_ref(params),
            vec![Box::new(on_text)],
        )?;
        Ok(out.pop().expect("one prompt, one generation"))
    }
}

/// Holds back text that might be the start of a stop string, and cuts the output at the first stop string.
pub struct StopFilter {
    stops: Vec<String>,
    /// Everything released so far (the final output once generation ends).
    pub text: String,
    pending: String,
    pub hit: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            text: String::new(),
            pending: String::new(),
            hit: false,
        }
    }

    /// Adds generated text; returns what may be released now and whether a stop string was found.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..cut].to_string();
            self.text.push_str(&emit);
            self.pending.clear();
            self.hit = true;
            return (emit, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let keep = keep.min(self.pending.len());
        let split = self.pending.len() - keep;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        self.text.push_str(&emit);
        (emit, false)
    }

    /// Releases whatever is still held back (generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.text.push_str(&rest);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let mut f = StopFilter::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut streamed = String::new();
        let mut hit = false;
        for p in pieces {
            let (e, h) = f.push(p);
            streamed.push_str(&e);
            if h {
                hit = true;
                break;
            }
        }
        if !hit {
            streamed.push_str(&f.finish());
        }
        (streamed, f.text, hit)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut() {
        let (streamed, text, hit) = run(&["END"], &["Hello E", "N", "D more"]);
        assert!(hit);
        assert_eq!(streamed, "Hello ");
        assert_eq!(text, "Hello ");
    }

    #[test]
    fn near_miss_is_released() {
        let (streamed, text, hit) = run(&["END"], &["Hello EN", "x"]);
        assert!(!hit);
        assert_eq!(streamed, "Hello ENx");
        assert_eq!(text, streamed);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (streamed, _, hit) = run(&["zz", "b"], &["a b zz"]);
        assert!(hit);
        assert_eq!(streamed, "a ");
    }
}

/// Figures from [`bench`].
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Prefill plus the first sampled token, from a loaded model.
    pub first_token_s: f64,
}

fn bench_prompt(model: &Model, prompt_tokens: usize) -> Result<Vec<u32>, EngineError> {
    let text = "The quick brown fox jumps over the lazy dog while researchers watch their checkpoints train. ";
    let mut ids = model
        .tokenizer
        .encode(&text.repeat(prompt_tokens / 8 + 2), false)?;
    ids.truncate(prompt_tokens.max(1));
    Ok(ids)
}

/// Aggregate greedy decode speed (tokens per second, all sequences together) of `batch` sequences decoded in
/// one batch for `decode_tokens` steps after a `prompt_tokens` prompt each, after one warm-up pass.
pub fn bench_batch(
    model: &Model,
    prompt_tokens: usize,
    decode_tokens: usize,
    batch: usize,
) -> Result<f64, EngineError> {
    let ids = bench_prompt(model, prompt_tokens)?;
    let prompts = vec![Prompt::Tokens(ids); batch.max(1)];
    let params = |n| SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    };
    model.generate_batch(&prompts, &vec![params(4); prompts.len()])?;
    let gens =
        model.generate_batch(&prompts, &vec![params(decode_tokens.max(2)); prompts.len()])?;
    let decoded: usize = gens
        .iter()
        .map(|g| g.token_ids.len().saturating_sub(1))
        .sum();
    let seconds = gens.first().map_or(0.0, |g| g.timings.decode_ms / 1000.0);
    Ok(decoded as f64 / seconds.max(1e-9))
}

/// Measures prefill speed on a `prompt_tokens`-long prompt and greedy decode speed over `decode_tokens` steps
/// (end-of-sequence ignored), after one warm-up pass.
pub fn bench(
    model: &Model,
    prompt_tokens: usize,
    decode_tokens: usize,
) -> Result<BenchResult, EngineError> {
    let ids = bench_prompt(model, prompt_tokens)?;
    let warm = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    model.generate(&Prompt::Tokens(ids.clone()), &warm)?;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(decode_tokens.max(2))
    };
    let g = model.generate(&Prompt::Tokens(ids), &params)?;
    Ok(BenchResult {
        prefill_tok_s: g.timings.prefill_tokens_per_s,
        decode_tok_s: g.timings.decode_tokens_per_s,
        first_token_s: g.timings.first_token_ms / 1000.0,
    })
}

/// Teacher-forced scoring of a token sequence (see [`score_text`]).
#[derive(Debug, Clone)]
pub struct TextScore {
    /// Mean negative log-likelihood (nats) of each scored token given the ones before it in its window.
    pub mean_nll: f64,
    /// Tokens scored (every token but the first of each window).
    pub tokens: usize,
    /// The model's most likely next token at each scored position, in order.
    pub top1: Vec<u32>,
}

impl TextScore {
    pub fn perplexity(&self) -> f64 {
        self.mean_nll.exp()
    }
}

/// Scores `ids` in consecutive windows of `window` tokens (each window starts a fresh cache): the quality
/// measure for comparing a model with a quantized copy of itself (perplexity, and how often both pick the same
/// next token).
pub fn score_text(model: &Model, ids: &[u32], window: usize) -> Result<TextScore, EngineError> {
    let window = window.clamp(2, model.decoder.max_positions());
    let mut nll = 0f64;
    let mut top1 = Vec::new();
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let mut cache = Cache::new(&model.decoder.cfg, 1);
        let logits = model
            .decoder
            .forward(&[chunk[..chunk.len() - 1].to_vec()], &mut cache, true)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        for (row, &target) in logits.iter().zip(&chunk[1..]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64
                + row
                    .iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[target as usize] as f64;
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            top1.push(best.0 as u32);
        }
    }
    if top1.is_empty() {
        return Err(EngineError::Request(
            "the text is too short to score (it needs at least two tokens)".into(),
        ));
    }
    Ok(TextScore {
        mean_nll: nll / top1.len() as f64,
        tokens: top1.len(),
        top1,
    })
}
