//! Schema migrations, applied in order and recorded in SQLite's `user_version`. A new version appends a step;
//! old steps never change, so any older database upgrades in place.

use rusqlite::Connection;

/// The newest schema this build knows.
pub const VERSION: i64 = 4;

pub(crate) const STEPS: [&str; 4] = [
    r#"
CREATE TABLE runs (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE,
    path      TEXT NOT NULL,
    synthetic INTEGER NOT NULL DEFAULT 0,
    created   TEXT NOT NULL
);
CREATE TABLE checkpoints (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    name         TEXT NOT NULL,
    path         TEXT NOT NULL,
    step         INTEGER,
    content_hash TEXT NOT NULL,
    seen         TEXT NOT NULL,
    UNIQUE (run_id, name, content_hash)
);
CREATE TABLE suites (
    hash    TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    body    TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE answers (
    id                INTEGER PRIMARY KEY,
    checkpoint_id     INTEGER NOT NULL REFERENCES checkpoints(id),
    suite_hash        TEXT NOT NULL REFERENCES suites(hash),
    prompt_id         TEXT NOT NULL,
    sample            INTEGER NOT NULL,
    turn              INTEGER NOT NULL,
    text              TEXT NOT NULL,
    params            TEXT NOT NULL,
    seed              INTEGER,
    template_hash     TEXT NOT NULL,
    vibecheck_version TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason     TEXT NOT NULL,
    prefill_ms        REAL NOT NULL,
    decode_ms         REAL NOT NULL,
    created           TEXT NOT NULL,
    UNIQUE (checkpoint_id, suite_hash, prompt_id, sample, turn)
);
CREATE INDEX answers_by_prompt ON answers(suite_hash, prompt_id);
CREATE TABLE notes (
    id        INTEGER PRIMARY KEY,
    answer_id INTEGER NOT NULL REFERENCES answers(id),
    text      TEXT NOT NULL,
    tag       TEXT,
    created   TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE judgments (
    id             INTEGER PRIMARY KEY,
    kind           TEXT NOT NULL,
    judge          TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    answer_a       INTEGER NOT NULL REFERENCES answers(id),
    answer_b       INTEGER NOT NULL,
    swapped        INTEGER NOT NULL,
    turn           INTEGER NOT NULL,
    status         TEXT NOT NULL,
    verdict        TEXT,
    score          REAL,
    raw            TEXT NOT NULL,
    created        TEXT NOT NULL,
    UNIQUE (kind, judge, prompt_version, answer_a, answer_b, swapped, turn)
);
CREATE TABLE judge_sends (
    suite_hash TEXT NOT NULL,
    judge      TEXT NOT NULL,
    first_sent TEXT NOT NULL,
    PRIMARY KEY (suite_hash, judge)
);
CREATE TABLE battles (
    id       INTEGER PRIMARY KEY,
    model_a  TEXT NOT NULL,
    model_b  TEXT NOT NULL,
    prompt   TEXT,
    winner   TEXT,
    created  TEXT NOT NULL,
    voted    TEXT
);
"#,
    // 3: why a checkpoint could not be loaded (NULL once it loads), so a failed checkpoint is shown, never left
    // out; a judgment's flag, such as "answer contains a rating token" (NULL for judgments stored before).
    r#"
ALTER TABLE checkpoints ADD COLUMN load_error TEXT;
ALTER TABLE judgments ADD COLUMN flag TEXT;
"#,
    // 4: `vibecheck cost` reports (the whole report as JSON, by the model it measured), for the /cost page.
    r#"
CREATE TABLE cost_reports (
    id      INTEGER PRIMARY KEY,
    model   TEXT NOT NULL,
    report  TEXT NOT NULL,
    created TEXT NOT NULL
);
"#,
];

pub enum MigrateError {
    TooNew(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// Brings the database to [`VERSION`]. Two processes opening a new database at once must not both migrate it, so
/// the version is read again inside a write transaction before each step.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    loop {
        let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > VERSION {
            return Err(MigrateError::TooNew(current));
        }
        if current == VERSION {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now == current {
            tx.execute_batch(STEPS[current as usize])?;
            tx.pragma_update(None, "user_version", current + 1)?;
        }
        tx.commit()?;
    }
}
