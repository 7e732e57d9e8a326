//! `vibecheck quant-eval`: what quantizing on load costs in quality and buys in size and speed, measured
//! against the same checkpoint unquantized.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use vibecheck_engine::kernels::Quantize;
use vibecheck_engine::{parse_device, ChatMessage, LoadOptions, Model, Prompt, SamplingParams};

/// The built-in text scored for perplexity (our own prose, with numbers and a little code).
const TEXT: &str = include_str!("quality_text.txt");

#[derive(Args)]
pub struct QuantEvalArgs {
    /// A safetensors checkpoint folder (or hub id).
    model: String,
    /// Formats to compare with the unquantized weights, comma-separated.
    #[arg(long, default_value = "q8_0,q4_1,q4_0", value_delimiter = ',')]
    kinds: Vec<Quantize>,
    /// Score this text file instead of the built-in passage.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Greedy tokens generated per suite prompt for the agreement measure.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

struct Row {
    name: String,
    bytes: usize,
    ppl: f64,
    top1_agree: f64,
    greedy_prefix: f64,
    greedy_exact: usize,
    decode_tok_s: f64,
}

pub fn quant_eval(a: QuantEvalArgs) -> Result<()> {
    let text = match &a.text {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => TEXT.to_string(),
    };
    let prompts: Vec<Prompt> = vibecheck_suite::Suite::builtin()
        .prompts
        .iter()
        .map(|p| {
            let mut m = Vec::new();
            if let Some(s) = &p.system {
                m.push(ChatMessage::new("system", s));
            }
            m.push(ChatMessage::new("user", &p.turns[0]));
            Prompt::Chat(m)
        })
        .collect();
    let load = |q: Option<Quantize>| -> Result<Model> {
        let opts = LoadOptions {
            device: parse_device("cpu")?,
            quantize: q,
            ..LoadOptions::default()
        };
        Model::load(&a.model, &opts).with_context(|| format!("loading {}", a.model))
    };
    let base = load(None)?;
    if base.source.kind == vibecheck_checkpoint::SourceKind::Gguf {
        bail!("{} is a GGUF file; quant-eval compares a safetensors checkpoint with quantized copies of it", a.model);
    }
    let ids = base.tokenizer.encode(&text, false)?;
    let reference = vibecheck_engine::generate::score_text(&base, &ids, 256)?;
    let greedy = |m: &Model| -> Result<Vec<Vec<u32>>> {
        let params = vec![SamplingParams::greedy(a.tokens); prompts.len()];
        Ok(m.generate_batch(&prompts, &params)?
            .into_iter()
            .map(|g| g.token_ids)
            .collect())
    };
    let base_answers = greedy(&base)?;
    let speed = |m: &Model| -> Result<f64> {
        Ok(vibecheck_engine::generate::bench(m, 32, 64)?.decode_tok_s)
    };
    let mut rows = vec![Row {
        name: "unquantized (as stored)".into(),
        bytes: base.packed_bytes,
        ppl: reference.perplexity(),
        top1_agree: 1.0,
        greedy_prefix: 1.0,
        greedy_exact: prompts.len(),
        decode_tok_s: speed(&base)?,
    }];
    let bar = indicatif::ProgressBar::new(a.kinds.len() as u64);
    for kind in &a.kinds {
        bar.set_message(kind.to_string());
        let m = load(Some(*kind))?;
        let score = vibecheck_engine::generate::score_text(&m, &ids, 256)?;
        let agree = score
            .top1
            .iter()
            .zip(&reference.top1)
            .filter(|(x, y)| x == y)
            .count() as f64
            / reference.top1.len() as f64;
        let answers = greedy(&m)?;
        let (mut prefix, mut exact) = (0f64, 0);
        for (x, y) in answers.iter().zip(&base_answers) {
            let same = x.iter().zip(y).take_while(|(p, q)| p == q).count();
            let longest = x.len().max(y.len()).max(1);
            prefix += same as f64 / longest as f64;
            exact += usize::from(x == y);
        }
        rows.push(Row {
            name: kind.to_string(),
            bytes: m.packed_bytes,
            ppl: score.perplexity(),
            top1_agree: agree,
            greedy_prefix: prefix / answers.len().max(1) as f64,
            greedy_exact: exact,
            decode_tok_s: speed(&m)?,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        for r in &rows {
            outln!(
                "{}",
                serde_json::json!({
                    "weights": r.name, "bytes": r.bytes, "perplexity": r.ppl, "top1_agreement": r.top1_agree,
                    "greedy_prefix_agreement": r.greedy_prefix, "greedy_identical": r.greedy_exact,
                    "prompts": prompts.len(), "decode_tok_s": r.decode_tok_s, "text_tokens": reference.tokens,
                })
            );
        }
        return Ok(());
    }
    outln!(
        "{} — perplexity over {} tokens of text; agreement with the unquantized model: teacher-forced top-1, and greedy answers to the {} built-in suite prompts ({} tokens)",
        a.model,
        reference.tokens,
        prompts.len(),
        a.tokens
    );
    outln!(
        "{:<36} {:>9} {:>10} {:>9} {:>13} {:>15} {:>11}",
        "weights",
        "MB",
        "perplexity",
        "Δ ppl",
        "top-1 agree",
        "greedy prefix",
        "decode tok/s"
    );
    for r in &rows {
        outln!(
            "{:<36} {:>9.1} {:>10.3} {:>+8.2}% {:>12.1}% {:>9.1}% ({}/{}) {:>11.1}",
            r.name,
            r.bytes as f64 / 1e6,
            r.ppl,
            (r.ppl / rows[0].ppl - 1.0) * 100.0,
            r.top1_agree * 100.0,
            r.greedy_prefix * 100.0,
            r.greedy_exact,
            prompts.len(),
            r.decode_tok_s
        );
    }
    Ok(())
}
