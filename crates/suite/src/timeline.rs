//! A run's answers arranged for reading: prompts × checkpoints (by step), each cell with the answer, its length and
//! how much it changed since the previous checkpoint that answered the same prompt. The web UI and `vibecheck log`
//! both read this.

use vibecheck_store::{Answer, Checkpoint, Run, Store, StoreError, SuiteRow};

use crate::diff::change_score;

/// One prompt's answer at one checkpoint (all turns of one sample).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// The stored answers, one per turn.
    pub answers: Vec<Answer>,
    /// Word count of all turns together.
    pub words: usize,
    /// Change score against the previous checkpoint's answer (None at the first).
    pub change: Option<f64>,
}

impl Cell {
    /// All turns' texts, one after another.
    pub fn text(&self) -> String {
        self.answers
            .iter()
            .map(|a| a.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PromptRow {
    pub id: String,
    pub category: Option<String>,
    pub turns: Vec<String>,
    /// One per checkpoint in [`Timeline::checkpoints`].
    pub cells: Vec<Option<Cell>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Timeline {
    pub run: Run,
    pub suite: SuiteRow,
    /// Every suite version with answers in this run, newest first.
    pub suites: Vec<SuiteRow>,
    /// Checkpoints with at least one answer to this suite, by step.
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoints whose last load failed, with the reason in `load_error` (never left out in silence).
    pub failed: Vec<Checkpoint>,
    pub prompts: Vec<PromptRow>,
    pub sample: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
}

/// The timeline of `run` for a suite version (the newest with answers when `suite` is None; a unique prefix of the
/// hash is enough) and one sample (0 = greedy).
pub fn timeline(
    store: &Store,
    run: &str,
    suite: Option<&str>,
    sample: u32,
) -> Result<Timeline, TimelineError> {
    let run = store.run(run)?.ok_or_else(|| {
        let known: Vec<String> = store
            .runs()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        TimelineError::NotFound(format!(
            "no run called {run:?} in {} (runs there: {})",
            store.path().display(),
            if known.is_empty() {
                "none yet".into()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let suites = store.run_suites(run.id)?;
    let all_checkpoints = store.checkpoints(run.id)?;
    let failed: Vec<Checkpoint> = all_checkpoints
        .iter()
        .filter(|c| c.load_error.is_some())
        .cloned()
        .collect();
    let chosen = match suite {
        None => suites.first().cloned(),
        Some(prefix) => {
            let matching: Vec<&SuiteRow> = suites
                .iter()
                .filter(|s| s.hash.starts_with(prefix))
                .collect();
            (matching.len() == 1).then(|| matching[0].clone())
        }
    }
    .ok_or_else(|| {
        TimelineError::NotFound(match suite {
            None => format!(
                "run {:?} has no answers yet{}",
                run.name,
                failed_list(&failed)
            ),
            Some(p) => format!(
                "no single suite version of run {:?} starts with {p:?}",
                run.name
            ),
        })
    })?;
    let answers: Vec<Answer> = store
        .answers(run.id, Some(&chosen.hash), None)?
        .into_iter()
        .filter(|a| a.sample == sample)
        .collect();
    let checkpoints: Vec<Checkpoint> = all_checkpoints
        .into_iter()
        .filter(|c| answers.iter().any(|a| a.checkpoint_id == c.id))
        .collect();
    let body: crate::Suite = serde_json::from_str(&chosen.body).map_err(|e| {
        TimelineError::NotFound(format!(
            "suite {} in the store cannot be read: {e}",
            chosen.hash
        ))
    })?;
    let mut prompts = Vec::new();
    for p in &body.prompts {
        let mut cells: Vec<Option<Cell>> = Vec::new();
        let mut previous: Option<String> = None;
        for c in &checkpoints {
            let turns: Vec<Answer> = answers
                .iter()
                .filter(|a| a.checkpoint_id == c.id && a.prompt_id == p.id)
                .cloned()
                .collect();
            if turns.is_empty() {
                cells.push(None);
                continue;
            }
            let mut cell = Cell {
                answers: turns,
                words: 0,
                change: None,
            };
            let text = cell.text();
            cell.words = text.split_whitespace().count();
            cell.change = previous.as_deref().map(|prev| change_score(prev, &text));
            previous = Some(text);
            cells.push(Some(cell));
        }
        prompts.push(PromptRow {
            id: p.id.clone(),
            category: p.category.clone(),
            turns: p.turns.clone(),
            cells,
        });
    }
    Ok(Timeline {
        run,
        suite: chosen,
        suites,
        checkpoints,
        failed,
        prompts,
        sample,
    })
}

/// "; 2 checkpoints could not be loaded: checkpoint-3 (reason); ..." for an error message, or nothing.
fn failed_list(failed: &[Checkpoint]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let each: Vec<String> = failed
        .iter()
        .map(|c| format!("{} ({})", c.name, c.load_error.as_deref().unwrap_or("")))
        .collect();
    format!(
        "; {} checkpoint{} could not be loaded: {}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        each.join("; ")
    )
}
