//! Judge results of a run, per checkpoint: mean rating with its standard error, win rates against the previous
//! checkpoint and against baselines (both orders combined, disagreements as ties) with the length-controlled rate
//! beside the raw one, every failure with its raw reply, how many verdicts carry each flag (answers holding a
//! rating token of their own), and Bradley–Terry ratings from the judge's pairs. The
//! `judge` command's table, the run page's plots and `vibecheck plot` all read this.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use vibecheck_store::{Answer, Judgment, Store, StoreError};

use crate::stats::{self, Game, LengthControlled, WinRate};
use crate::verdict::{self, Choice, Outcome};

#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    /// `run/checkpoint` of the opponent.
    pub opponent: String,
    /// `previous`, `baseline` (another run or an endpoint) or `other` (a checkpoint of this run further back).
    pub relation: String,
    pub win: WinRate,
    pub length_controlled: Option<LengthControlled>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointScores {
    pub checkpoint: String,
    pub step: Option<i64>,
    /// Mean rating, its standard error and how many ratings.
    pub score: Option<(f64, f64, usize)>,
    pub versus: Vec<Versus>,
    /// Mean words per greedy answer (all turns).
    pub mean_words: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub checkpoint: String,
    pub prompt_id: String,
    pub turn: u32,
    pub status: String,
    pub raw: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: String,
    pub judge: Option<String>,
    pub judges: Vec<String>,
    pub checkpoints: Vec<CheckpointScores>,
    pub failures: Vec<Failure>,
    /// Each flag on this judge's verdicts (such as `answer contains a rating token`) and how many carry it.
    pub flags: Vec<(String, usize)>,
    /// Bradley–Terry ratings (Elo scale) from the judge's combined pairwise outcomes, by `run/checkpoint`.
    pub judge_ratings: Vec<(String, f64)>,
}

fn words(a: &Answer) -> f64 {
    a.text.split_whitespace().count() as f64
}

/// The summary of `run` for one judge (the one with the most verdicts when `judge` is None).
pub fn summarize(store: &Store, run: &str, judge: Option<&str>) -> Result<Summary, StoreError> {
    let Some(r) = store.run(run)? else {
        return Err(StoreError::NotFound(format!("no run called {run:?}")));
    };
    let all = store.judgments(r.id)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &all {
        *counts.entry(j.judge.as_str()).or_default() += 1;
    }
    let judges: Vec<String> = counts.keys().map(|k| k.to_string()).collect();
    let chosen = judge.map(str::to_string).or_else(|| {
        counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.to_string())
    });
    let js: Vec<&Judgment> = all
        .iter()
        .filter(|j| Some(&j.judge) == chosen.as_ref())
        .collect();

    // Answers by id (this run's, plus any opponent's from other runs).
    let mut answers: HashMap<i64, Answer> = store
        .answers(r.id, None, None)?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    for j in &js {
        if j.answer_b != 0 && !answers.contains_key(&j.answer_b) {
            if let Some(a) = store.answer(j.answer_b)? {
                answers.insert(a.id, a);
            }
        }
    }
    let mut flags: BTreeMap<String, usize> = BTreeMap::new();
    for flag in js.iter().filter_map(|j| j.flag.as_ref()) {
        *flags.entry(flag.clone()).or_default() += 1;
    }
    let checkpoints = store.checkpoints(r.id)?;
    let model = |a: &Answer| format!("{}/{}", a.run, a.checkpoint);

    let mut failures = Vec::new();
    let mut scores: HashMap<i64, Vec<f64>> = HashMap::new();
    // (a's answer, b's answer, turn) → outcomes by order.
    let mut pairs: BTreeMap<(i64, i64, u32), [Option<Outcome>; 2]> = BTreeMap::new();
    for j in &js {
        let Some(a) = answers.get(&j.answer_a) else {
            continue;
        };
        if j.status != "ok" {
            failures.push(Failure {
                checkpoint: a.checkpoint.clone(),
                prompt_id: a.prompt_id.clone(),
                turn: j.turn,
                status: j.status.clone(),
                raw: j.raw.clone(),
            });
            if j.kind == "pair" {
                pairs
                    .entry((j.answer_a, j.answer_b, j.turn))
                    .or_insert([None, None]);
            }
            continue;
        }
        match j.kind.as_str() {
            "single" => scores.entry(a.checkpoint_id).or_default().extend(j.score),
            _ => {
                let choice = j.verdict.as_deref().and_then(Choice::from_letter);
                let slot = pairs
                    .entry((j.answer_a, j.answer_b, j.turn))
                    .or_insert([None, None]);
                slot[usize::from(j.swapped)] = choice.map(|c| verdict::outcome(c, j.swapped));
            }
        }
    }

    // Combined pair outcomes grouped by (checkpoint of a, opponent model).
    let mut versus: BTreeMap<(i64, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    let index = |name: String, names: &mut Vec<String>| match names.iter().position(|n| *n == name)
    {
        Some(i) => i,
        None => {
            names.push(name);
            names.len() - 1
        }
    };
    let mut games = Vec::new();
    for ((ia, ib, _), outcomes) in &pairs {
        let (Some(a), Some(b)) = (answers.get(ia), answers.get(ib)) else {
            continue;
        };
        let Some(o) = verdict::combine(outcomes[0], outcomes[1]) else {
            continue;
        };
        versus
            .entry((a.checkpoint_id, model(b)))
            .or_default()
            .push((o.score(), words(a) - words(b)));
        let (x, y) = (index(model(a), &mut names), index(model(b), &mut names));
        games.push(Game {
            a: x,
            b: y,
            score_a: o.score(),
        });
    }
    let ratings = stats::bradley_terry(&games, names.len(), 0.5);
    let judge_ratings = names
        .into_iter()
        .zip(ratings)
        .filter(|(_, r)| r.is_finite())
        .collect();

    let mut out = Vec::new();
    for (i, c) in checkpoints.iter().enumerate() {
        let greedy: Vec<&Answer> = answers
            .values()
            .filter(|a| a.checkpoint_id == c.id && a.sample == 0)
            .collect();
        let mean_words = if greedy.is_empty() {
            f64::NAN
        } else {
            // Per conversation: all its turns together.
            let mut per: HashMap<&str, f64> = HashMap::new();
            for a in &greedy {
                *per.entry(a.prompt_id.as_str()).or_default() += words(a);
            }
            per.values().sum::<f64>() / per.len() as f64
        };
        let score = scores.get(&c.id).filter(|s| !s.is_empty()).map(|s| {
            let (m, se) = stats::mean_se(s);
            (m, se, s.len())
        });
        let previous = i
            .checked_sub(1)
            .map(|p| format!("{}/{}", r.name, checkpoints[p].name));
        let vs = versus
            .range((c.id, String::new())..)
            .take_while(|((cid, _), _)| *cid == c.id)
            .map(|((_, opp), outcomes)| {
                let scores: Vec<f64> = outcomes.iter().map(|o| o.0).collect();
                let relation = if Some(opp) == previous.as_ref() {
                    "previous"
                } else if opp.starts_with(&format!("{}/", r.name)) {
                    "other"
                } else {
                    "baseline"
                };
                Versus {
                    opponent: opp.clone(),
                    relation: relation.into(),
                    win: stats::win_rate(&scores),
                    length_controlled: (outcomes.len() >= 2)
                        .then(|| stats::length_controlled(outcomes)),
                }
            })
            .collect();
        if score.is_none() && greedy.is_empty() {
            continue;
        }
        out.push(CheckpointScores {
            checkpoint: c.name.clone(),
            step: c.step,
            score,
            versus: vs,
            mean_words,
        });
    }
    Ok(Summary {
        run: r.name,
        judge: chosen,
        judges,
        checkpoints: out,
        failures,
        flags: flags.into_iter().collect(),
        judge_ratings,
    })
}
