//! Judging a watched run: plan the questions (single grading, or pairs against the previous checkpoint, a baseline,
//! or each other, every pair in both orders), skip those already answered by this judge with this prompt version,
//! ask the rest with bounded concurrency, and store every verdict, parse failure and error.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Mutex;

use vibecheck_store::{Answer, NewAnswer, NewJudgment, Store, StoreError};
use vibecheck_suite::timeline::{timeline, Cell, Timeline, TimelineError};

use crate::client::{CallError, Endpoint};
use crate::prompts::{wants_reference, JudgePrompt, JudgePrompts, Kind, PromptError};
use crate::verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each answer graded 1–10.
    Single,
    /// Each checkpoint against the one before it.
    Previous,
    /// Each checkpoint against the baseline.
    Baseline,
    /// Every pair of checkpoints.
    All,
}

/// What the checkpoints are compared with in `Mode::Baseline`.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// `checkpoint-N` of this run, or `other-run/checkpoint-N`.
    Checkpoint(String),
    /// Any OpenAI-compatible endpoint: it answers the suite first (stored as run `baseline:<model>`).
    Endpoint(Endpoint),
}

#[derive(Debug, Clone)]
pub struct JudgeOptions {
    pub run: String,
    /// A suite version (hash prefix); default the newest.
    pub suite: Option<String>,
    pub mode: Mode,
    pub baseline: Option<Baseline>,
    pub judge: Endpoint,
    pub prompts: JudgePrompts,
    /// Judge calls in flight at once.
    pub concurrency: usize,
    /// Longest judge reply asked for.
    pub max_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Timeline(String),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("{0}")]
    Options(String),
    #[error("the baseline endpoint failed: {0}")]
    Baseline(CallError),
}

impl From<TimelineError> for JudgeError {
    fn from(e: TimelineError) -> Self {
        match e {
            TimelineError::Store(s) => Self::Store(s),
            TimelineError::NotFound(m) => Self::Timeline(m),
        }
    }
}

/// One question to the judge.
#[derive(Debug, Clone)]
pub struct Question {
    pub kind: Kind,
    pub prompt: JudgePrompt,
    pub answer_a: i64,
    pub answer_b: i64,
    pub swapped: bool,
    pub turn: u32,
    pub text: String,
    /// The texts the judge is shown as answers (the graded one, both turns of a second-turn question, both answers
    /// of a pair): a verdict token of the reply that also occurs in one of them cannot decide (see `verdict`).
    pub answers: Vec<String>,
    /// For progress lines: `checkpoint-200 · games`.
    pub label: String,
}

/// What a judging pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JudgeReport {
    pub asked: usize,
    pub cached: usize,
    pub ok: usize,
    pub parse_failures: usize,
    pub errors: usize,
}

/// Turn texts of one cell, by turn.
fn turn_text(cell: &Cell, turn: usize) -> Option<&Answer> {
    cell.answers.iter().find(|a| a.turn as usize == turn)
}

/// The question's placeholders (`question`, `question_1`, `question_2` for a second turn) and its reference answers.
fn question_vars(
    p: &vibecheck_suite::timeline::PromptRow,
    refs: &[String],
    turn: usize,
) -> Option<HashMap<&'static str, String>> {
    let mut v = HashMap::new();
    v.insert("question", p.turns[0].clone());
    v.insert("question_1", p.turns[0].clone());
    if turn == 1 {
        v.insert("question_2", p.turns.get(1)?.clone());
    }
    for (key, r) in ["ref_answer_1", "ref_answer_2"].into_iter().zip(refs) {
        v.insert(key, r.clone());
    }
    Some(v)
}

fn vars_single(
    p: &vibecheck_suite::timeline::PromptRow,
    refs: &[String],
    cell: &Cell,
    turn: usize,
) -> Option<HashMap<&'static str, String>> {
    let mut v = question_vars(p, refs, turn)?;
    let a0 = turn_text(cell, 0)?;
    v.insert("answer", a0.text.clone());
    v.insert("answer_1", a0.text.clone());
    if turn == 1 {
        v.insert("answer_2", turn_text(cell, 1)?.text.clone());
    }
    Some(v)
}

fn vars_pair(
    p: &vibecheck_suite::timeline::PromptRow,
    refs: &[String],
    shown_a: &Cell,
    shown_b: &Cell,
    turn: usize,
) -> Option<HashMap<&'static str, String>> {
    let mut v = question_vars(p, refs, turn)?;
    let (a0, b0) = (turn_text(shown_a, 0)?, turn_text(shown_b, 0)?);
    v.insert("answer_a", a0.text.clone());
    v.insert("answer_b", b0.text.clone());
    v.insert("answer_a_1", a0.text.clone());
    v.insert("answer_b_1", b0.text.clone());
    if turn == 1 {
        v.insert("answer_a_2", turn_text(shown_a, 1)?.text.clone());
        v.insert("answer_b_2", turn_text(shown_b, 1)?.text.clone());
    }
    Some(v)
}

/// Reference answers of a suite prompt, by id.
fn references(t: &Timeline) -> HashMap<String, Vec<String>> {
    serde_json::from_str::<vibecheck_suite::Suite>(&t.suite.body)
        .map(|s| s.prompts.into_iter().map(|p| (p.id, p.reference)).collect())
        .unwrap_or_default()
}

/// The baseline's answers to the same suite version: a column of another timeline.
fn baseline_cells(
    store: &mut Store,
    t: &Timeline,
    opts: &JudgeOptions,
) -> Result<(String, Vec<Option<Cell>>), JudgeError> {
    let Some(baseline) = &opts.baseline else {
        return Err(JudgeError::Options(
            "--mode baseline needs --baseline CHECKPOINT or --baseline-url URL".into(),
        ));
    };
    let (run, name) = match baseline {
        Baseline::Checkpoint(spec) => match spec.rsplit_once('/') {
            Some((run, ck)) => (run.to_string(), ck.to_string()),
            None => (t.run.name.clone(), spec.clone()),
        },
        Baseline::Endpoint(ep) => {
            answer_with_endpoint(store, t, ep)?;
            (format!("baseline:{}", ep.model), ep.model.clone())
        }
    };
    let bt = timeline(store, &run, Some(&t.suite.hash), 0)?;
    let col = bt
        .checkpoints
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| {
            JudgeError::Options(format!(
            "baseline {run}/{name} has no answers to suite {}; its checkpoints with answers: {}",
            &t.suite.hash[..12],
            bt.checkpoints.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
        })?;
    let by_prompt: HashMap<&str, Option<Cell>> = bt
        .prompts
        .iter()
        .map(|p| (p.id.as_str(), p.cells[col].clone()))
        .collect();
    let cells = t
        .prompts
        .iter()
        .map(|p| by_prompt.get(p.id.as_str()).cloned().flatten())
        .collect();
    Ok((format!("{run}/{name}"), cells))
}

/// The settings of a suite prompt that OpenAI's API has names for and that shape a greedy answer (stop strings and
/// the penalties), as request fields; an endpoint baseline is asked with them so it answers under the suite's rules.
/// (`repetition_penalty`, `top_k` and `min_p` are not OpenAI fields; hosted APIs refuse them.)
fn openai_fields(
    o: &vibecheck_suite::suite::Overrides,
) -> serde_json::Map<String, serde_json::Value> {
    // The shortest decimal that reads back as the f32 (0.3, not 0.30000001192092896).
    let short = |x: f32| serde_json::json!(x.to_string().parse::<f64>().unwrap_or(f64::from(x)));
    let mut m = serde_json::Map::new();
    if let Some(stop) = &o.stop {
        m.insert("stop".into(), serde_json::json!(stop));
    }
    if let Some(v) = o.frequency_penalty {
        m.insert("frequency_penalty".into(), short(v));
    }
    if let Some(v) = o.presence_penalty {
        m.insert("presence_penalty".into(), short(v));
    }
    m
}

/// Has an endpoint answer the suite (greedy, multi-turn fed back) and stores it as run `baseline:<model>`.
fn answer_with_endpoint(store: &mut Store, t: &Timeline, ep: &Endpoint) -> Result<(), JudgeError> {
    let suite: vibecheck_suite::Suite = serde_json::from_str(&t.suite.body)
        .map_err(|e| JudgeError::Options(format!("suite {} cannot be read: {e}", t.suite.hash)))?;
    let run = store.upsert_run(&format!("baseline:{}", ep.model), &ep.base_url, false)?;
    let ck = store.upsert_checkpoint(
        run.id,
        &ep.model,
        &ep.base_url,
        None,
        &format!("endpoint:{}", ep.id()),
    )?;
    let done = store.done(ck.id, &t.suite.hash)?;
    for p in &suite.prompts {
        if done.contains(&(p.id.clone(), 0)) {
            continue;
        }
        let mut messages: Vec<(String, String)> = Vec::new();
        if let Some(s) = &p.system {
            messages.push(("system".into(), s.clone()));
        }
        let settings = p.params.or(&suite.defaults);
        let max_tokens = settings
            .max_tokens
            .unwrap_or(vibecheck_suite::DEFAULT_MAX_TOKENS);
        let extra = openai_fields(&settings);
        let mut turns = Vec::new();
        for (i, user) in p.turns.iter().enumerate() {
            messages.push(("user".into(), user.clone()));
            let text = ep
                .chat_with(&messages, max_tokens, &extra)
                .map_err(JudgeError::Baseline)?;
            messages.push(("assistant".into(), text.clone()));
            turns.push(NewAnswer {
                turn: i as u32,
                text,
                params: {
                    let mut p = serde_json::json!({"temperature": 0, "max_tokens": max_tokens, "endpoint": ep.id()});
                    for (k, v) in &extra {
                        p[k] = v.clone();
                    }
                    p.to_string()
                },
                template_hash: "endpoint".into(),
                vibecheck_version: env!("CARGO_PKG_VERSION").into(),
                finish_reason: "stop".into(),
                ..Default::default()
            });
        }
        store.insert_conversation(ck.id, &t.suite.hash, &p.id, 0, &turns)?;
    }
    Ok(())
}

/// Every question this pass would ask (cached ones included).
pub fn plan(
    store: &mut Store,
    opts: &JudgeOptions,
) -> Result<(Timeline, Vec<Question>), JudgeError> {
    let t = timeline(store, &opts.run, opts.suite.as_deref(), 0)?;
    let refs = references(&t);
    let names: Vec<String> = t.checkpoints.iter().map(|c| c.name.clone()).collect();
    let mut questions = Vec::new();
    let pick = |kind, multi, reference: bool| {
        opts.prompts
            .pick(kind, multi, reference)
            .cloned()
            .ok_or_else(|| {
                JudgeError::Options(format!(
                    "the judge prompts from {} have no {:?} prompt{}",
                    opts.prompts.source,
                    kind,
                    if multi { " for a second turn" } else { "" }
                ))
            })
    };
    // Pairs of (column of a, cells of the opponent, opponent label).
    let mut opponents: Vec<(usize, Vec<Option<Cell>>, String)> = Vec::new();
    match opts.mode {
        Mode::Single => {}
        Mode::Previous => {
            for i in 1..t.checkpoints.len() {
                let cells = t.prompts.iter().map(|p| p.cells[i - 1].clone()).collect();
                opponents.push((i, cells, names[i - 1].clone()));
            }
        }
        Mode::Baseline => {
            let (label, cells) = baseline_cells(store, &t, opts)?;
            for i in 0..t.checkpoints.len() {
                opponents.push((i, cells.clone(), label.clone()));
            }
        }
        Mode::All => {
            for i in 0..t.checkpoints.len() {
                for (j, name) in names.iter().enumerate().take(i) {
                    let cells = t.prompts.iter().map(|p| p.cells[j].clone()).collect();
                    opponents.push((i, cells, name.clone()));
                }
            }
        }
    }
    for (pi, p) in t.prompts.iter().enumerate() {
        let r = refs.get(&p.id).cloned().unwrap_or_default();
        let reference = wants_reference(p.category.as_deref()) && !r.is_empty();
        let turns = p.turns.len().min(2);
        if opts.mode == Mode::Single {
            for (ci, cell) in p.cells.iter().enumerate() {
                let Some(cell) = cell else { continue };
                for turn in 0..turns {
                    let jp = pick(Kind::Single, turn == 1, reference)?;
                    let Some(vars) = vars_single(p, &r, cell, turn) else {
                        continue;
                    };
                    let Some(graded) = turn_text(cell, turn) else {
                        continue;
                    };
                    let answers = (0..=turn)
                        .filter_map(|t| turn_text(cell, t))
                        .map(|a| a.text.clone())
                        .collect();
                    questions.push(Question {
                        kind: Kind::Single,
                        text: jp.render(&vars)?,
                        prompt: jp,
                        answer_a: graded.id,
                        answer_b: 0,
                        swapped: false,
                        turn: turn as u32,
                        answers,
                        label: format!("{} · {} · turn {}", names[ci], p.id, turn + 1),
                    });
                }
            }
            continue;
        }
        for (ci, opp, opp_label) in &opponents {
            let (Some(a), Some(b)) = (p.cells[*ci].as_ref(), opp[pi].as_ref()) else {
                continue;
            };
            for turn in 0..turns {
                let jp = pick(Kind::Pair, turn == 1, reference)?;
                let (Some(aa), Some(bb)) = (turn_text(a, turn), turn_text(b, turn)) else {
                    continue;
                };
                for swapped in [false, true] {
                    let (first, second) = if swapped { (b, a) } else { (a, b) };
                    let Some(vars) = vars_pair(p, &r, first, second, turn) else {
                        continue;
                    };
                    let answers = [first, second]
                        .into_iter()
                        .flat_map(|c| (0..=turn).filter_map(move |t| turn_text(c, t)))
                        .map(|a| a.text.clone())
                        .collect();
                    questions.push(Question {
                        kind: Kind::Pair,
                        text: jp.render(&vars)?,
                        prompt: jp.clone(),
                        answer_a: aa.id,
                        answer_b: bb.id,
                        swapped,
                        turn: turn as u32,
                        answers,
                        label: format!(
                            "{} vs {} · {} · turn {}{}",
                            names[*ci],
                            opp_label,
                            p.id,
                            turn + 1,
                            if swapped { " (swapped)" } else { "" }
                        ),
                    });
                }
            }
        }
    }
    Ok((t, questions))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Single => "single",
        Kind::Pair => "pair",
    }
}

/// The flag of a question whose answers hold a verdict token of their own (an answer grading itself).
pub fn answer_flag(q: &Question) -> Option<String> {
    let flagged = match q.kind {
        Kind::Single => verdict::rating_token_in(&q.answers).then_some(RATING_TOKEN_FLAG),
        Kind::Pair => verdict::choice_token_in(&q.answers).then_some(VERDICT_TOKEN_FLAG),
    };
    flagged.map(str::to_string)
}

/// The flag on a graded answer that contains a rating token such as `[[10]]`.
pub const RATING_TOKEN_FLAG: &str = "answer contains a rating token";
/// The flag on a pair whose answers contain a verdict token such as `[[A]]`.
pub const VERDICT_TOKEN_FLAG: &str = "answer contains a verdict token";

/// Turns a judge's reply (or failure) into the row to store. The verdict is read with the question's answers, so a
/// token quoted from them cannot decide it; the row is flagged when they hold one.
pub fn verdict_row(q: &Question, judge: &str, reply: Result<String, CallError>) -> NewJudgment {
    let mut row = NewJudgment {
        kind: kind_name(q.kind).into(),
        judge: judge.into(),
        prompt_version: q.prompt.version(),
        answer_a: q.answer_a,
        answer_b: q.answer_b,
        swapped: q.swapped,
        turn: q.turn,
        flag: answer_flag(q),
        ..Default::default()
    };
    match reply {
        Err(e) => {
            row.status = "error".into();
            row.raw = e.to_string();
        }
        Ok(text) => {
            let parsed = match q.kind {
                Kind::Single => verdict::rating(&text, &q.answers).map(|r| (Some(r), None)),
                Kind::Pair => {
                    verdict::choice(&text, &q.answers).map(|c| (None, Some(c.letter().to_string())))
                }
            };
            match parsed {
                Ok((score, v)) => {
                    row.status = "ok".into();
                    row.score = score;
                    row.verdict = v;
                }
                Err(why) => {
                    tracing::debug!(question = %q.label, "no verdict: {why}");
                    row.status = "parse_failure".into();
                }
            }
            row.raw = text;
        }
    }
    row
}

/// Plans, skips what is cached, asks the judge the rest (`opts.concurrency` at a time) and stores each verdict as it
/// arrives. `on_done` hears (done, total, label) after each question.
pub fn judge_run(
    store: &mut Store,
    opts: &JudgeOptions,
    on_done: &mut dyn FnMut(usize, usize, &str),
) -> Result<JudgeReport, JudgeError> {
    let (t, questions) = plan(store, opts)?;
    let judge_id = opts.judge.id();
    let mut report = JudgeReport::default();
    let mut todo = Vec::new();
    for q in questions {
        let cached = store.judgment(
            kind_name(q.kind),
            &judge_id,
            &q.prompt.version(),
            q.answer_a,
            q.answer_b,
            q.swapped,
            q.turn,
        )?;
        if cached.is_some_and(|j| j.status != "error") {
            report.cached += 1;
        } else {
            todo.push(q);
        }
    }
    if !todo.is_empty() {
        store.record_send(&t.suite.hash, &judge_id)?;
    }
    let total = todo.len();
    let queue = Mutex::new(todo.into_iter());
    let (tx, rx) = mpsc::channel::<(Question, Result<String, CallError>)>();
    let result: Result<(), JudgeError> = std::thread::scope(|scope| {
        for _ in 0..opts.concurrency.max(1) {
            let tx = tx.clone();
            let queue = &queue;
            let judge = &opts.judge;
            let max_tokens = opts.max_tokens;
            scope.spawn(move || loop {
                let Some(q) = queue.lock().unwrap().next() else {
                    return;
                };
                let messages = vec![
                    ("system".to_string(), q.prompt.system.clone()),
                    ("user".to_string(), q.text.clone()),
                ];
                let reply = judge.chat(&messages, max_tokens);
                if tx.send((q, reply)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // Owned here, so a store error that ends this loop also stops the workers (their sends fail).
        let rx = rx;
        for (done, (q, reply)) in rx.iter().enumerate() {
            let row = verdict_row(&q, &judge_id, reply);
            match row.status.as_str() {
                "ok" => report.ok += 1,
                "parse_failure" => report.parse_failures += 1,
                _ => report.errors += 1,
            }
            report.asked += 1;
            store.put_judgment(&row)?;
            on_done(done + 1, total, &q.label);
        }
        Ok(())
    });
    result?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_baselines_get_the_suite_settings_openai_has_names_for() {
        let o = vibecheck_suite::suite::Overrides {
            stop: Some(vec!["END".into()]),
            presence_penalty: Some(0.3),
            repetition_penalty: Some(1.2),
            ..Default::default()
        };
        let m = super::openai_fields(&o);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({"stop": ["END"], "presence_penalty": 0.3})
        );
    }
}
