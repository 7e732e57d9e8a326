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
