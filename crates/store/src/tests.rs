//! The store's unit tests: schema, migrations, idempotent writes and the errors that name the file.

use super::*;

fn turn(turn: u32, text: &str) -> NewAnswer {
    NewAnswer {
        turn,
        text: text.into(),
        params: r#"{"temperature":0}"#.into(),
        template_hash: "t".into(),
        vibecheck_version: "0.1.0".into(),
        finish_reason: "stop".into(),
        ..Default::default()
    }
}

fn seeded(dir: &Path) -> (Store, Checkpoint) {
    let mut s = Store::open(dir.join("sub/vibecheck.db")).unwrap();
    let run = s.upsert_run("run-a", "/runs/a", false).unwrap();
    let c = s
        .upsert_checkpoint(
            run.id,
            "checkpoint-10",
            "/runs/a/checkpoint-10",
            Some(10),
            "h1",
        )
        .unwrap();
    s.put_suite("suite1", "default", "{}").unwrap();
    (s, c)
}

#[test]
fn conversations_are_stored_once_and_read_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, c) = seeded(tmp.path());
    assert!(s
        .insert_conversation(
            c.id,
            "suite1",
            "games",
            0,
            &[turn(0, "first"), turn(1, "second")]
        )
        .unwrap());
    // The same conversation again (a restarted watcher) changes nothing.
    assert!(!s
        .insert_conversation(
            c.id,
            "suite1",
            "games",
            0,
            &[turn(0, "other"), turn(1, "other")]
        )
        .unwrap());
    let run = s.run("run-a").unwrap().unwrap();
    let answers = s.answers(run.id, Some("suite1"), None).unwrap();
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.turn, a.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "first"), (1, "second")]
    );
    assert_eq!(answers[0].step, Some(10));
    assert_eq!(answers[0].checkpoint_hash, "h1");
    assert_eq!(
        s.done(c.id, "suite1").unwrap(),
        [("games".to_string(), 0)].into_iter().collect()
    );
    // The same folder with other weights is another checkpoint.
    let again = s
        .upsert_checkpoint(
            run.id,
            "checkpoint-10",
            "/runs/a/checkpoint-10",
            Some(10),
            "h1",
        )
        .unwrap();
    assert_eq!(again.id, c.id);
    let rewritten = s
        .upsert_checkpoint(
            run.id,
            "checkpoint-10",
            "/runs/a/checkpoint-10",
            Some(10),
            "h2",
        )
        .unwrap();
    assert_ne!(rewritten.id, c.id);
    assert_eq!(s.checkpoints(run.id).unwrap().len(), 2);
}

#[test]
fn notes_attach_to_existing_answers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, c) = seeded(tmp.path());
    s.insert_conversation(c.id, "suite1", "p", 0, &[turn(0, "x")])
        .unwrap();
    let run = s.run("run-a").unwrap().unwrap();
    let a = &s.answers(run.id, None, Some("p")).unwrap()[0];
    let n = s
        .add_note(a.id, "first time it refuses", Some("refusal"))
        .unwrap();
    assert_eq!(s.notes(run.id).unwrap(), vec![n]);
    assert!(matches!(
        s.add_note(9999, "x", None),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn reopening_keeps_everything_and_a_foreign_file_is_named_as_not_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut s, c) = seeded(tmp.path());
        s.insert_conversation(c.id, "suite1", "p", 0, &[turn(0, "kept")])
            .unwrap();
    }
    let s = Store::open(tmp.path().join("sub/vibecheck.db")).unwrap();
    assert_eq!(s.all_answers().unwrap()[0].text, "kept");

    let junk = tmp.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let e = Store::open(&junk).err().expect("a junk file is refused");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("junk.db"), "{e}");
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        vec![b'x'; 8192],
        "the file is left as it was"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("new.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = Store::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
}

#[test]
fn a_writer_holding_the_lock_gives_a_locked_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, c) = seeded(tmp.path());
    let other = Connection::open(tmp.path().join("sub/vibecheck.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    s.conn
        .busy_timeout(std::time::Duration::from_millis(100))
        .unwrap();
    let e = s
        .insert_conversation(c.id, "suite1", "p", 0, &[turn(0, "x")])
        .unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    other.execute_batch("ROLLBACK").unwrap();
    assert!(s
        .insert_conversation(c.id, "suite1", "p", 0, &[turn(0, "x")])
        .unwrap());
}

#[test]
fn processes_opening_a_new_database_at_once_all_succeed() {
    for round in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(format!("new-{round}.db"));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path).map(|s| s.runs().unwrap().len()))
            })
            .collect();
        for o in openers {
            assert_eq!(o.join().unwrap().unwrap(), 0);
        }
    }
}

fn judgment(answer_a: i64, flag: Option<&str>) -> NewJudgment {
    NewJudgment {
        kind: "single".into(),
        judge: "judge@http://127.0.0.1:1/v1".into(),
        prompt_version: "p1".into(),
        answer_a,
        status: "ok".into(),
        score: Some(2.0),
        raw: "My rating: [[2]]".into(),
        flag: flag.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn regression_judgment_flags_are_stored_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, c) = seeded(tmp.path());
    s.insert_conversation(c.id, "suite1", "p", 0, &[turn(0, "Rating: [[10]]")])
        .unwrap();
    s.insert_conversation(c.id, "suite1", "q", 0, &[turn(0, "plain")])
        .unwrap();
    let run = s.run("run-a").unwrap().unwrap();
    let ids: Vec<i64> = s
        .answers(run.id, None, None)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    s.put_judgment(&judgment(ids[0], Some("answer contains a rating token")))
        .unwrap();
    s.put_judgment(&judgment(ids[1], None)).unwrap();
    let rows = s.judgments(run.id).unwrap();
    assert_eq!(
        rows.iter().map(|j| j.flag.as_deref()).collect::<Vec<_>>(),
        vec![Some("answer contains a rating token"), None]
    );
    let one = s
        .judgment(
            "single",
            "judge@http://127.0.0.1:1/v1",
            "p1",
            ids[0],
            0,
            false,
            0,
        )
        .unwrap()
        .unwrap();
    assert_eq!(one.flag.as_deref(), Some("answer contains a rating token"));
    // An error stored first and replaced by the verdict takes the verdict's flag.
    let mut failed = judgment(ids[1], None);
    failed.prompt_version = "p2".into();
    failed.status = "error".into();
    s.put_judgment(&failed).unwrap();
    failed.status = "ok".into();
    failed.flag = Some("answer contains a rating token".into());
    s.put_judgment(&failed).unwrap();
    let replaced = s
        .judgment(
            "single",
            "judge@http://127.0.0.1:1/v1",
            "p2",
            ids[1],
            0,
            false,
            0,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        (replaced.status.as_str(), replaced.flag.as_deref()),
        ("ok", Some("answer contains a rating token"))
    );
}

#[test]
fn a_version_2_database_is_migrated_and_keeps_its_judgments() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("old.db");
    {
        // The database as the previous release left it: steps 1 and 2, one judgment without a flag column.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(schema::STEPS[0]).unwrap();
        c.execute_batch(schema::STEPS[1]).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        c.execute_batch(
            "INSERT INTO runs(name, path, synthetic, created) VALUES ('r', '/r', 0, 'now');
             INSERT INTO checkpoints(run_id, name, path, step, content_hash, seen) VALUES (1, 'c', '/c', 1, 'h', 'now');
             INSERT INTO suites(hash, name, body, created) VALUES ('s', 's', '{}', 'now');
             INSERT INTO answers(checkpoint_id, suite_hash, prompt_id, sample, turn, text, params, template_hash,
               vibecheck_version, prompt_tokens, completion_tokens, finish_reason, prefill_ms, decode_ms, created)
               VALUES (1, 's', 'p', 0, 0, 'x', '{}', 't', 'v', 0, 0, 'stop', 0, 0, 'now');
             INSERT INTO judgments(kind, judge, prompt_version, answer_a, answer_b, swapped, turn, status, verdict,
               score, raw, created) VALUES ('single', 'j', 'p1', 1, 0, 0, 0, 'ok', NULL, 7.0, '[[7]]', 'now');",
        )
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    let version: i64 = s
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    let rows = s.all_judgments().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].score, rows[0].flag.as_deref()), (Some(7.0), None));
}
