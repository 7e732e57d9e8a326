//! Continuous batching on the real SmolLM2 GGUF: requests that join a running batch (and leave it) answer what
//! they answer alone, a long prompt is prefilled in chunks while running streams keep producing tokens, a
//! cancelled request leaves without disturbing the others, and bad requests fail alone.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vibecheck_engine::{
    BatchEvent, Batcher, BatcherSettings, ChatMessage, FinishReason, Generation, LoadOptions,
    Model, Prompt, SamplingParams,
};

use crate::fixtures::smollm_gguf;

fn model() -> Arc<Model> {
    Arc::new(Model::load(smollm_gguf().to_str().unwrap(), &LoadOptions::default()).unwrap())
}

fn chat(model: &Model, text: &str) -> Vec<u32> {
    model
        .prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", text)]))
        .unwrap()
}

/// What one request heard: text pieces with their arrival times, then the outcome.
struct Heard {
    pieces: Vec<(Instant, String)>,
    outcome: Result<Generation, String>,
}

/// Submits a request whose events go to a channel; `cancel_after` pieces makes the listener hang up.
fn submit(
    b: &Batcher,
    prompt: Vec<u32>,
    params: SamplingParams,
    cancel_after: Option<usize>,
) -> Receiver<(Instant, BatchEvent)> {
    let (tx, rx) = channel();
    let mut seen = 0;
    b.submit(
        prompt,
        params,
        Box::new(move |ev| {
            if matches!(ev, BatchEvent::Prefilling { .. }) {
                return cancel_after.is_none_or(|n| seen < n);
            }
            let text = matches!(ev, BatchEvent::Text(_));
            let _ = tx.send((Instant::now(), ev));
            if text {
                seen += 1;
            }
            cancel_after.is_none_or(|n| seen < n)
        }),
    );
    rx
}

fn collect(rx: Receiver<(Instant, BatchEvent)>) -> Heard {
    let mut pieces = Vec::new();
    loop {
        let (at, ev) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the batch thread answers");
        match ev {
            BatchEvent::Prefilling { .. } => {}
            BatchEvent::Text(t) => pieces.push((at, t)),
            BatchEvent::Done(g) => {
                return Heard {
                    pieces,
                    outcome: Ok(g),
                }
            }
            BatchEvent::Failed(e) => {
                return Heard {
                    pieces,
                    outcome: Err(e.to_string()),
                }
            }
        }
    }
}

/// A batched answer against the same request run alone: identical, or — because a batch sums in another order
/// and a greedy near-tie can flip — the same tokens for at least the first 12 (a batching bug, such as sequences
/// mixing or wrong positions, diverges at once). Returns whether they are identical.
fn agrees_with_alone(name: &str, batched: &Generation, alone: &Generation) -> bool {
    if batched.token_ids == alone.token_ids {
        assert_eq!(batched.text, alone.text, "{name}");
        assert_eq!(batched.finish_reason, alone.finish_reason, "{name}");
        assert_eq!(batched.usage, alone.usage, "{name}");
        return true;
    }
    let same = batched
        .token_ids
        .iter()
        .zip(&alone.token_ids)
        .take_while(|(x, y)| x == y)
        .count();
    assert!(
        same >= 12,
        "{name}: batched and alone part after {same} tokens: {:?} vs {:?}",
        batched.text,
        alone.text
    );
    false
}

#[test]
fn requests_joining_a_running_batch_answer_what_they_answer_alone() {
    let model = model();
    let batcher = Batcher::new(
        model.clone(),
        BatcherSettings {
            max_batch: 4,
            prefill_chunk: 16,
        },
    )
    .unwrap();
    let long = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(80)
    };
    let a_prompt = chat(&model, "Tell me a long story about a lighthouse keeper.");
    let a = submit(&batcher, a_prompt.clone(), long.clone(), None);
    // Wait until A is decoding, then send the others: they join A's running batch.
    let (first_at, first) = a.recv_timeout(Duration::from_secs(60)).unwrap();
    let BatchEvent::Text(first) = first else {
        panic!("expected text first, got {first:?}")
    };
    let b_prompt = chat(&model, "What is the capital of France?");
    let b_params = SamplingParams::greedy(24);
    let mut c_params = SamplingParams::greedy(16);
    c_params.temperature = 0.8;
    c_params.seed = Some(7);
    c_params.stop = vec!["precious".into()];
    let c_prompt = chat(&model, "Name a colour.");
    // A prompt of a few hundred tokens: prefilled 16 tokens per step while A goes on decoding.
    let d_text = "Summarise this: ".to_string()
        + &"The keeper climbed the stairs every night to light the lamp. ".repeat(20);
    let d_prompt = chat(&model, &d_text);
    assert!(d_prompt.len() > 200, "{}", d_prompt.len());
    let d_params = SamplingParams::greedy(12);
    let b = submit(&batcher, b_prompt.clone(), b_params.clone(), None);
    let c = submit(&batcher, c_prompt.clone(), c_params.clone(), None);
    let d_sent = Instant::now();
    let d = submit(&batcher, d_prompt.clone(), d_params.clone(), None);
    let (a, b, c, d) = (collect(a), collect(b), collect(c), collect(d));

    let alone =
        |p: &[u32], sp: &SamplingParams| model.generate(&Prompt::Tokens(p.to_vec()), sp).unwrap();
    let mut identical = 0;
    for (name, heard, prompt, params) in [
        ("A", &a, &a_prompt, &long),
        ("B", &b, &b_prompt, &b_params),
        ("C", &c, &c_prompt, &c_params),
        ("D", &d, &d_prompt, &d_params),
    ] {
        let g = heard.outcome.as_ref().unwrap();
        let single = alone(prompt, params);
        identical += usize::from(agrees_with_alone(name, g, &single));
        if name == "C" {
            assert_eq!(
                single.finish_reason,
                FinishReason::Stop,
                "{:?}",
                single.text
            );
        }
        let streamed: String = heard.pieces.iter().map(|(_, t)| t.as_str()).collect();
        let streamed = if name == "A" {
            first.clone() + &streamed
        } else {
            streamed
        };
        assert_eq!(streamed, g.text, "{name}: the pieces make up the text");
    }
    assert!(
        identical >= 3,
        "only {identical} of 4 answers identical to their lone runs"
    );
    assert!(b.outcome.as_ref().unwrap().text.contains("Paris"));
    // B and C ran while A was running: their first text came before A finished.
    let a_last = a.pieces.last().unwrap().0;
    assert!(
        b.pieces[0].0 < a_last && c.pieces[0].0 < a_last,
        "B and C joined A's batch"
    );
    assert!(first_at < b.pieces[0].0);
    // D's long prompt did not stall A: A produced text while D was still being prefilled.
    let d_first = d.pieces[0].0;
    let a_during = a
        .pieces
        .iter()
        .filter(|(t, _)| *t > d_sent && *t < d_first)
        .count();
    assert!(
        a_during >= 5,
        "A streamed {a_during} pieces while D's prompt of {} tokens was prefilled",
        d_prompt.len()
    );
}

#[test]
fn a_cancelled_request_leaves_and_bad_requests_fail_alone() {
    let model = model();
    let batcher = Batcher::new(model.clone(), BatcherSettings::default()).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    };
    let p1 = chat(&model, "Write a poem about rain.");
    let p2 = chat(&model, "Write a poem about snow.");
    let quitter = submit(&batcher, p1, params.clone(), Some(3));
    let stayer = submit(&batcher, p2.clone(), params.clone(), None);
    let too_long = submit(&batcher, vec![1; 9000], SamplingParams::greedy(4), None);
    let empty = submit(&batcher, vec![], SamplingParams::greedy(4), None);
    let mut bad_params = SamplingParams::greedy(4);
    bad_params.top_p = 7.0;
    let bad = submit(&batcher, p2.clone(), bad_params, None);

    let quitter = collect(quitter);
    let g = quitter.outcome.unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(quitter.pieces.len(), 3);
    assert!(
        g.usage.completion_tokens < 40,
        "{}",
        g.usage.completion_tokens
    );
    let stayer = collect(stayer).outcome.unwrap();
    let alone = model
        .generate(&Prompt::Tokens(p2.clone()), &params)
        .unwrap();
    agrees_with_alone("the request beside the cancelled one", &stayer, &alone);
    assert_eq!(stayer.usage.completion_tokens, 40);
    let err = collect(too_long).outcome.unwrap_err();
    assert!(err.contains("positions"), "{err}");
    let err = collect(empty).outcome.unwrap_err();
    assert!(err.contains("empty"), "{err}");
    let err = collect(bad).outcome.unwrap_err();
    assert!(err.contains("top_p"), "{err}");
    // Still serving.
    let after = collect(submit(&batcher, p2, SamplingParams::greedy(5), None));
    assert_eq!(after.outcome.unwrap().usage.completion_tokens, 5);
}

/// A prompt of about `tokens` tokens for the real model.
fn long_prompt(model: &Model, tokens: usize) -> Vec<u32> {
    let text = "The keeper climbed the stairs every night to light the lamp. ".repeat(tokens / 12);
    let ids = chat(model, &format!("Summarise this: {text}"));
    assert!(ids.len() >= tokens * 3 / 4, "{} tokens", ids.len());
    ids
}

#[test]
fn regression_a_client_leaving_mid_prefill_stops_its_prompt() {
    // Hostile probe: a client that disconnected 0.5 s into a 3 800-token prefill kept the model busy ~23 s.
    let model = model();
    let batcher = Batcher::new(model.clone(), BatcherSettings::default()).unwrap();
    let prompt = long_prompt(&model, 1400);
    let (tx, rx) = channel();
    let mut probes = 0;
    batcher.submit(
        prompt.clone(),
        SamplingParams::greedy(4),
        Box::new(move |ev| {
            if let BatchEvent::Prefilling { done, total } = ev {
                probes += 1;
                let _ = tx.send((done, total));
                // Still there for the first chunk, gone before the second.
                return probes < 2;
            }
            true
        }),
    );
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(first, (0, prompt.len()));
    let second = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(second.0 > 0 && second.0 < prompt.len(), "{second:?}");
    // The batch thread is free again: a short request is answered, and the long prompt ran one chunk only.
    let after = collect(submit(
        &batcher,
        chat(&model, "Name a colour."),
        SamplingParams::greedy(3),
        None,
    ));
    assert!(after.outcome.is_ok());
    assert!(rx.try_recv().is_err(), "no probe after the client left");
    let chunks = batcher.counts().prefill_chunks;
    assert!(
        chunks <= 2,
        "{chunks} prefill passes: the cancelled {}-token prompt went on",
        prompt.len()
    );
}

#[test]
fn regression_a_short_request_is_not_held_behind_a_long_prefill() {
    // Hostile probe: a short request arriving during a 3 800-token prefill waited 26 s for it to finish.
    let model = model();
    let batcher = Batcher::new(model.clone(), BatcherSettings::default()).unwrap();
    let long = submit(
        &batcher,
        long_prompt(&model, 1400),
        SamplingParams::greedy(2),
        None,
    );
    let short = submit(
        &batcher,
        chat(&model, "What is the capital of France?"),
        SamplingParams::greedy(6),
        None,
    );
    let short = collect(short).outcome.unwrap();
    let long = collect(long).outcome.unwrap();
    assert!(short.usage.completion_tokens > 0);
    // Both were submitted together: the short one's whole answer was out before the long prompt was in.
    let short_end = short.timings.first_token_ms + short.timings.decode_ms;
    assert!(
        short_end < long.timings.first_token_ms,
        "the short request ended at {short_end:.0} ms, the long prompt's first token came at {:.0} ms",
        long.timings.first_token_ms
    );
}
