//! The store: one SQLite file (WAL, `busy_timeout`, versioned migrations) holding watched runs, their checkpoints,
//! the prompt suites run on them, every answer with what it takes to reproduce it, and notes on answers. This is the
//! only crate that speaks SQL; everything else gets typed rows.
//!
//! Writes that belong together go in one transaction (all turns of one conversation), and every answer is keyed by
//! (checkpoint, suite version, prompt, sample, turn) with `INSERT OR IGNORE`, so a watcher killed at any moment and
//! started again neither loses nor duplicates an answer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde::Serialize;

mod judge;
mod schema;

pub use judge::{Battle, Judgment, NewJudgment, Send};

/// Why the store could not do what was asked. Each names the database file and says what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database {path} stayed locked by another process for {} s (another `vibecheck watch` writing, or a `sqlite3` shell holding a transaction?); wait for it to finish or pass a different --db", BUSY_WAIT.as_secs())]
    Locked { path: PathBuf },
    #[error("{path} is not a vibecheck database or is damaged ({detail}); move it aside and run again to start a new one, or pass a different --db")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the disk holding {path} is full; free some space and run again (nothing half-written was kept)")]
    Full { path: PathBuf },
    #[error("{path} was written by a newer vibecheck (schema version {found}; this one knows up to {known}); upgrade vibecheck")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot create the folder for the database {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    NotFound(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// How long a statement waits for a lock another process holds (SQLite retries with growing sleeps meanwhile)
/// before it fails with [`StoreError::Locked`]. Generous: a backup tool or a `sqlite3` shell may hold the file for
/// a while, and the watcher retries a failed write at its next look rather than stopping.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A training run being watched (or the synthetic demo run).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Run {
    pub id: i64,
    pub name: String,
    pub path: String,
    /// The demo's made-up run: the UI says so.
    pub synthetic: bool,
    pub created: String,
}

/// One checkpoint of a run, as seen complete at least once. A folder rewritten with other weights is a new row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    pub id: i64,
    pub run_id: i64,
    pub name: String,
    pub path: String,
    pub step: Option<i64>,
    pub content_hash: String,
    pub seen: String,
    /// Why this checkpoint could not be loaded at its last attempt (`None` once it loaded).
    pub load_error: Option<String>,
}

/// A prompt suite version: its content hash, name and full canonical body (JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SuiteRow {
    pub hash: String,
    pub name: String,
    pub body: String,
}

/// An answer to store: one assistant turn of one conversation.
#[derive(Debug, Clone, Default)]
pub struct NewAnswer {
    pub turn: u32,
    pub text: String,
    /// The sampling parameters as JSON.
    pub params: String,
    pub seed: Option<u64>,
    pub template_hash: String,
    pub vibecheck_version: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// A stored answer with the run and checkpoint it belongs to: everything needed to reproduce it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answer {
    pub id: i64,
    pub run: String,
    pub checkpoint_id: i64,
    pub checkpoint: String,
    pub checkpoint_path: String,
    pub step: Option<i64>,
    pub checkpoint_hash: String,
    pub suite_hash: String,
    pub prompt_id: String,
    /// 0: greedy; 1..=K: seeded samples.
    pub sample: u32,
    pub turn: u32,
    pub text: String,
    pub params: String,
    pub seed: Option<u64>,
    pub template_hash: String,
    pub vibecheck_version: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub created: String,
}

/// A note or tag a person put on an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Note {
    pub id: i64,
    pub answer_id: i64,
    pub text: String,
    pub tag: Option<String>,
    pub created: String,
}

/// An open store. Writers take `&mut self`; readers in other threads or processes open their own `Store`
/// (WAL lets them read while a watcher writes).
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Turns SQLite's error codes into the causes a user can act on.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked { path },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        Some(ErrorCode::DiskFull) => StoreError::Full { path },
        _ => StoreError::Sql { path, source: e },
    }
}

const ANSWER_COLUMNS: &str = "a.id, r.name, c.id, c.name, c.path, c.step, c.content_hash, a.suite_hash, a.prompt_id, \
     a.sample, a.turn, a.text, a.params, a.seed, a.template_hash, a.vibecheck_version, a.prompt_tokens, \
     a.completion_tokens, a.finish_reason, a.prefill_ms, a.decode_ms, a.created";

fn answer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Answer> {
    Ok(Answer {
        id: row.get(0)?,
        run: row.get(1)?,
        checkpoint_id: row.get(2)?,
        checkpoint: row.get(3)?,
        checkpoint_path: row.get(4)?,
        step: row.get(5)?,
        checkpoint_hash: row.get(6)?,
        suite_hash: row.get(7)?,
        prompt_id: row.get(8)?,
        sample: row.get(9)?,
        turn: row.get(10)?,
        text: row.get(11)?,
        params: row.get(12)?,
        seed: row.get::<_, Option<i64>>(13)?.map(|s| s as u64),
        template_hash: row.get(14)?,
        vibecheck_version: row.get(15)?,
        prompt_tokens: row.get(16)?,
        completion_tokens: row.get(17)?,
        finish_reason: row.get(18)?,
        prefill_ms: row.get(19)?,
        decode_ms: row.get(20)?,
        created: row.get(21)?,
    })
}

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: row.get(0)?,
        name: row.get(1)?,
        path: row.get(2)?,
        synthetic: row.get(3)?,
        created: row.get(4)?,
    })
}

fn checkpoint_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        id: row.get(0)?,
        run_id: row.get(1)?,
        name: row.get(2)?,
        path: row.get(3)?,
        step: row.get(4)?,
        content_hash: row.get(5)?,
        seen: row.get(6)?,
        load_error: row.get(7)?,
    })
}

impl Store {
    /// Opens (creating it and its folder if needed) and migrates the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Folder {
                path: path.clone(),
                source,
            })?;
        }
        // Switching a new file to WAL and creating the schema take locks that SQLite may refuse at once (without
        // waiting) when several processes open the same new file together; those openers simply try again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut attempt = 0u64;
        loop {
            let conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
            let mut store = Self {
                conn,
                path: path.clone(),
            };
            match store.setup() {
                Ok(()) => return Ok(store),
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5 + (attempt * 7) % 40));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row of a query, mapped by `f`.
    pub(crate) fn rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = st.query_map(params, f).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    fn setup(&mut self) -> Result<()> {
        self.conn.busy_timeout(BUSY_WAIT).map_err(|e| self.err(e))?;
        // WAL lets the UI read while a watcher writes. It is a property of the file, so it is only switched on
        // when it is not on yet (switching takes a lock that readers opening at the same moment would contend for).
        let mut mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            mode = self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
        }
        if !mode.eq_ignore_ascii_case("wal") {
            // A file system without WAL (some network mounts) still works; readers then wait for writers.
            tracing::warn!(db = %self.path.display(), "journal mode is {mode}, not WAL");
        }
        self.conn
            .execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
            .map_err(|e| self.err(e))?;
        schema::migrate(&mut self.conn).map_err(|e| match e {
            schema::MigrateError::TooNew(found) => StoreError::TooNew {
                path: self.path.clone(),
                found,
                known: schema::VERSION,
            },
            schema::MigrateError::Sql(e) => classify(&self.path, e),
        })
    }

    /// The run called `name`, created on first sight.
    pub fn upsert_run(&mut self, name: &str, path: &str, synthetic: bool) -> Result<Run> {
        self.conn
            .execute(
                "INSERT INTO runs(name, path, synthetic, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET path = excluded.path",
                params![name, path, synthetic, now()],
            )
            .map_err(|e| self.err(e))?;
        self.run(name)?
            .ok_or_else(|| StoreError::NotFound(format!("run {name:?} vanished")))
    }

    pub fn run(&self, name: &str) -> Result<Option<Run>> {
        self.conn
            .query_row(
                "SELECT id, name, path, synthetic, created FROM runs WHERE name = ?1",
                [name],
                run_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn runs(&self) -> Result<Vec<Run>> {
        self.rows(
            "SELECT id, name, path, synthetic, created FROM runs ORDER BY id",
            [],
            run_row,
        )
    }

    /// The checkpoint row for these weights, created on first sight.
    pub fn upsert_checkpoint(
        &mut self,
        run_id: i64,
        name: &str,
        path: &str,
        step: Option<i64>,
        content_hash: &str,
    ) -> Result<Checkpoint> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO checkpoints(run_id, name, path, step, content_hash, seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, name, path, step, content_hash, now()],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .query_row(
                "SELECT id, run_id, name, path, step, content_hash, seen, load_error FROM checkpoints
                 WHERE run_id = ?1 AND name = ?2 AND content_hash = ?3",
                params![run_id, name, content_hash],
                checkpoint_row,
            )
            .map_err(|e| self.err(e))
    }

    /// Records why checkpoint `id` could not be loaded, or clears it (`None`) once it loads.
    pub fn set_load_error(&mut self, id: i64, error: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE checkpoints SET load_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A run's checkpoints by step (then by when they were first seen).
    pub fn checkpoints(&self, run_id: i64) -> Result<Vec<Checkpoint>> {
        self.rows(
            "SELECT id, run_id, name, path, step, content_hash, seen, load_error FROM checkpoints
                 WHERE run_id = ?1 ORDER BY step IS NULL, step, id",
            [run_id],
            checkpoint_row,
        )
    }

    /// Records a suite version (its body is kept so answers can always be traced to the exact prompts).
    pub fn put_suite(&mut self, hash: &str, name: &str, body: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO suites(hash, name, body, created) VALUES (?1, ?2, ?3, ?4)",
                params![hash, name, body, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn suite(&self, hash: &str) -> Result<Option<SuiteRow>> {
        self.conn
            .query_row(
                "SELECT hash, name, body FROM suites WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(SuiteRow {
                        hash: r.get(0)?,
                        name: r.get(1)?,
                        body: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The suite versions that have answers in a run, newest first.
    pub fn run_suites(&self, run_id: i64) -> Result<Vec<SuiteRow>> {
        self.rows(
                "SELECT s.hash, s.name, s.body FROM suites s WHERE s.hash IN
                   (SELECT DISTINCT a.suite_hash FROM answers a JOIN checkpoints c ON c.id = a.checkpoint_id
                    WHERE c.run_id = ?1)
                 ORDER BY s.created DESC", [run_id], |r| {
                Ok(SuiteRow {
                    hash: r.get(0)?,
                    name: r.get(1)?,
                    body: r.get(2)?,
                })
            })
    }

    /// The (prompt, sample) conversations already stored for a checkpoint and suite version.
    pub fn done(&self, checkpoint_id: i64, suite_hash: &str) -> Result<HashSet<(String, u32)>> {
        self.rows(
                "SELECT DISTINCT prompt_id, sample FROM answers WHERE checkpoint_id = ?1 AND suite_hash = ?2", params![checkpoint_id, suite_hash], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map(|v: Vec<(String, u32)>| v.into_iter().collect())
    }

    /// Stores every turn of one conversation atomically. Returns false (and changes nothing) when that
    /// conversation was already stored.
    pub fn insert_conversation(
        &mut self,
        checkpoint_id: i64,
        suite_hash: &str,
        prompt_id: &str,
        sample: u32,
        turns: &[NewAnswer],
    ) -> Result<bool> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        let created = now();
        let mut inserted = 0;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO answers(checkpoint_id, suite_hash, prompt_id, sample, turn, text, params,
                       seed, template_hash, vibecheck_version, prompt_tokens, completion_tokens, finish_reason,
                       prefill_ms, decode_ms, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(|e| classify(&path, e))?;
            for a in turns {
                inserted += st
                    .execute(params![
                        checkpoint_id,
                        suite_hash,
                        prompt_id,
                        sample,
                        a.turn,
                        a.text,
                        a.params,
                        a.seed.map(|s| s as i64),
                        a.template_hash,
                        a.vibecheck_version,
                        a.prompt_tokens,
                        a.completion_tokens,
                        a.finish_reason,
                        a.prefill_ms,
                        a.decode_ms,
                        created
                    ])
                    .map_err(|e| classify(&path, e))?;
            }
        }
        tx.commit().map_err(|e| classify(&path, e))?;
        Ok(inserted > 0)
    }

    /// Every answer of a run (optionally of one suite version and one prompt), ordered by prompt, sample, step,
    /// turn.
    pub fn answers(
        &self,
        run_id: i64,
        suite_hash: Option<&str>,
        prompt_id: Option<&str>,
    ) -> Result<Vec<Answer>> {
        let sql = format!(
            "SELECT {ANSWER_COLUMNS} FROM answers a JOIN checkpoints c ON c.id = a.checkpoint_id
             JOIN runs r ON r.id = c.run_id
             WHERE c.run_id = ?1 AND (?2 IS NULL OR a.suite_hash = ?2) AND (?3 IS NULL OR a.prompt_id = ?3)
             ORDER BY a.prompt_id, a.sample, c.step IS NULL, c.step, c.id, a.turn"
        );
        self.rows(&sql, params![run_id, suite_hash, prompt_id], answer_row)
    }

    /// Every answer in the store (for export), ordered like [`Store::answers`] within each run.
    pub fn all_answers(&self) -> Result<Vec<Answer>> {
        let mut out = Vec::new();
        for run in self.runs()? {
            out.extend(self.answers(run.id, None, None)?);
        }
        Ok(out)
    }

    pub fn answer(&self, id: i64) -> Result<Option<Answer>> {
        let sql = format!(
            "SELECT {ANSWER_COLUMNS} FROM answers a JOIN checkpoints c ON c.id = a.checkpoint_id
             JOIN runs r ON r.id = c.run_id WHERE a.id = ?1"
        );
        self.conn
            .query_row(&sql, [id], answer_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Puts a note (and optional tag) on an answer.
    pub fn add_note(&mut self, answer_id: i64, text: &str, tag: Option<&str>) -> Result<Note> {
        if self.answer(answer_id)?.is_none() {
            return Err(StoreError::NotFound(format!(
                "there is no answer {answer_id} to put a note on"
            )));
        }
        let created = now();
        self.conn
            .execute(
                "INSERT INTO notes(answer_id, text, tag, created) VALUES (?1, ?2, ?3, ?4)",
                params![answer_id, text, tag, created],
            )
            .map_err(|e| self.err(e))?;
        Ok(Note {
            id: self.conn.last_insert_rowid(),
            answer_id,
            text: text.to_string(),
            tag: tag.map(str::to_string),
            created,
        })
    }

    /// Stores a `vibecheck cost` report (JSON) of `model`.
    pub fn put_cost_report(&self, model: &str, report_json: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO cost_reports(model, report, created) VALUES (?1, ?2, ?3)",
                params![model, report_json, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The newest `limit` cost reports: (model, report JSON), newest first.
    pub fn cost_reports(&self, limit: i64) -> Result<Vec<(String, String)>> {
        self.rows(
            "SELECT model, report FROM cost_reports ORDER BY id DESC LIMIT ?1",
            [limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The notes on a run's answers, oldest first.
    pub fn notes(&self, run_id: i64) -> Result<Vec<Note>> {
        self.rows(
            "SELECT n.id, n.answer_id, n.text, n.tag, n.created FROM notes n
                 JOIN answers a ON a.id = n.answer_id JOIN checkpoints c ON c.id = a.checkpoint_id
                 WHERE c.run_id = ?1 ORDER BY n.id",
            [run_id],
            |r| {
                Ok(Note {
                    id: r.get(0)?,
                    answer_id: r.get(1)?,
                    text: r.get(2)?,
                    tag: r.get(3)?,
                    created: r.get(4)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests;
