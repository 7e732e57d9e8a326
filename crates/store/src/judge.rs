//! Judge verdicts, where suites were sent, and arena battles: the rows behind `vibecheck judge` and the arena.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::{now, Result, Store, StoreError};

/// A verdict to store. `answer_b` is 0 for single-answer grading.
#[derive(Debug, Clone, Default)]
pub struct NewJudgment {
    /// `single` or `pair`.
    pub kind: String,
    /// Which judge: `model@base_url`.
    pub judge: String,
    /// The judge prompt's version (hash), so a changed prompt is judged again.
    pub prompt_version: String,
    pub answer_a: i64,
    pub answer_b: i64,
    /// Pairwise: B was shown first.
    pub swapped: bool,
    /// The turn graded (0-based).
    pub turn: u32,
    /// `ok`, `parse_failure` (the reply had no valid verdict; `raw` keeps it) or `error` (timeout, HTTP error).
    pub status: String,
    /// Pairwise: `A`, `B` or `C` as the judge wrote it (in shown order).
    pub verdict: Option<String>,
    /// Single: the rating.
    pub score: Option<f64>,
    /// The judge's whole reply, or the error.
    pub raw: String,
    /// Something a reader of this verdict should know, such as `answer contains a rating token` (an answer that
    /// grades itself). None for most.
    pub flag: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Judgment {
    pub id: i64,
    pub kind: String,
    pub judge: String,
    pub prompt_version: String,
    pub answer_a: i64,
    pub answer_b: i64,
    pub swapped: bool,
    pub turn: u32,
    pub status: String,
    pub verdict: Option<String>,
    pub score: Option<f64>,
    pub raw: String,
    pub created: String,
    pub flag: Option<String>,
}

/// A suite sent to a judge outside this machine (shown in the UI).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Send {
    pub suite_hash: String,
    pub suite_name: String,
    pub judge: String,
    pub first_sent: String,
}

/// One blind arena battle: two models, and the vote once cast (`a`, `b`, `tie` or `bad`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Battle {
    pub id: i64,
    pub model_a: String,
    pub model_b: String,
    pub prompt: Option<String>,
    pub winner: Option<String>,
    pub created: String,
    pub voted: Option<String>,
}

const JUDGMENT_COLUMNS: &str =
    "id, kind, judge, prompt_version, answer_a, answer_b, swapped, turn, status, verdict, \
     score, raw, created, flag";

fn judgment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Judgment> {
    Ok(Judgment {
        id: r.get(0)?,
        kind: r.get(1)?,
        judge: r.get(2)?,
        prompt_version: r.get(3)?,
        answer_a: r.get(4)?,
        answer_b: r.get(5)?,
        swapped: r.get(6)?,
        turn: r.get(7)?,
        status: r.get(8)?,
        verdict: r.get(9)?,
        score: r.get(10)?,
        raw: r.get(11)?,
        created: r.get(12)?,
        flag: r.get(13)?,
    })
}

fn battle_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Battle> {
    Ok(Battle {
        id: r.get(0)?,
        model_a: r.get(1)?,
        model_b: r.get(2)?,
        prompt: r.get(3)?,
        winner: r.get(4)?,
        created: r.get(5)?,
        voted: r.get(6)?,
    })
}

impl Store {
    /// The stored verdict for exactly this question to this judge with this prompt version, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn judgment(
        &self,
        kind: &str,
        judge: &str,
        prompt_version: &str,
        answer_a: i64,
        answer_b: i64,
        swapped: bool,
        turn: u32,
    ) -> Result<Option<Judgment>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {JUDGMENT_COLUMNS} FROM judgments WHERE kind = ?1 AND judge = ?2 AND prompt_version = ?3
                     AND answer_a = ?4 AND answer_b = ?5 AND swapped = ?6 AND turn = ?7"
                ),
                params![kind, judge, prompt_version, answer_a, answer_b, swapped, turn],
                judgment_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Stores a verdict. An earlier `error` (timeout, HTTP failure) for the same question is replaced; a stored
    /// verdict or parse failure is kept (the same question is never judged twice).
    pub fn put_judgment(&mut self, j: &NewJudgment) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO judgments(kind, judge, prompt_version, answer_a, answer_b, swapped, turn, status, verdict,
                   score, raw, created, flag) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(kind, judge, prompt_version, answer_a, answer_b, swapped, turn) DO UPDATE SET
                   status = excluded.status, verdict = excluded.verdict, score = excluded.score, raw = excluded.raw,
                   created = excluded.created, flag = excluded.flag
                 WHERE judgments.status = 'error'",
                params![
                    j.kind,
                    j.judge,
                    j.prompt_version,
                    j.answer_a,
                    j.answer_b,
                    j.swapped,
                    j.turn,
                    j.status,
                    j.verdict,
                    j.score,
                    j.raw,
                    now(),
                    j.flag
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every verdict on a run's answers (as answer A).
    pub fn judgments(&self, run_id: i64) -> Result<Vec<Judgment>> {
        self.rows(&format!(
                "SELECT {JUDGMENT_COLUMNS} FROM judgments WHERE answer_a IN
                   (SELECT a.id FROM answers a JOIN checkpoints c ON c.id = a.checkpoint_id WHERE c.run_id = ?1)
                 ORDER BY id"
            ), [run_id], judgment_row)
    }

    pub fn all_judgments(&self) -> Result<Vec<Judgment>> {
        self.rows(
            &format!("SELECT {JUDGMENT_COLUMNS} FROM judgments ORDER BY id"),
            [],
            judgment_row,
        )
    }

    /// Records that a suite's prompts and answers went to `judge`.
    pub fn record_send(&mut self, suite_hash: &str, judge: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO judge_sends(suite_hash, judge, first_sent) VALUES (?1, ?2, ?3)",
                params![suite_hash, judge, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn sends(&self) -> Result<Vec<Send>> {
        self.rows(
            "SELECT j.suite_hash, COALESCE(s.name, '?'), j.judge, j.first_sent FROM judge_sends j
                 LEFT JOIN suites s ON s.hash = j.suite_hash ORDER BY j.first_sent",
            [],
            |r| {
                Ok(Send {
                    suite_hash: r.get(0)?,
                    suite_name: r.get(1)?,
                    judge: r.get(2)?,
                    first_sent: r.get(3)?,
                })
            },
        )
    }

    /// Starts a battle between two models (their order is the shown order).
    pub fn new_battle(
        &mut self,
        model_a: &str,
        model_b: &str,
        prompt: Option<&str>,
    ) -> Result<Battle> {
        self.conn
            .execute(
                "INSERT INTO battles(model_a, model_b, prompt, created) VALUES (?1, ?2, ?3, ?4)",
                params![model_a, model_b, prompt, now()],
            )
            .map_err(|e| self.err(e))?;
        let id = self.conn.last_insert_rowid();
        self.battle(id)?
            .ok_or_else(|| StoreError::NotFound(format!("battle {id} vanished")))
    }

    pub fn battle(&self, id: i64) -> Result<Option<Battle>> {
        self.conn
            .query_row(
                "SELECT id, model_a, model_b, prompt, winner, created, voted FROM battles WHERE id = ?1",
                [id],
                battle_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Casts the one vote of a battle; a second vote is refused.
    pub fn vote(&mut self, id: i64, winner: &str, prompt: Option<&str>) -> Result<Battle> {
        let changed = self
            .conn
            .execute(
                "UPDATE battles SET winner = ?2, voted = ?3, prompt = COALESCE(?4, prompt)
                 WHERE id = ?1 AND winner IS NULL",
                params![id, winner, now(), prompt],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(StoreError::NotFound(match self.battle(id)? {
                Some(_) => format!("battle {id} already has its vote"),
                None => format!("there is no battle {id}"),
            }));
        }
        self.battle(id)?
            .ok_or_else(|| StoreError::NotFound(format!("battle {id} vanished")))
    }

    /// Battles with a vote, oldest first.
    pub fn voted_battles(&self) -> Result<Vec<Battle>> {
        self.rows(
            "SELECT id, model_a, model_b, prompt, winner, created, voted FROM battles
                 WHERE winner IS NOT NULL ORDER BY voted, id",
            [],
            battle_row,
        )
    }
}
