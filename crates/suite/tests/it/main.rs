//! Watching real run folders of tiny checkpoints: shards arriving one by one, restarts, deleted checkpoints,
//! multi-turn prompts and seeded samples, all into a real SQLite file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vibecheck_engine::LoadOptions;
use vibecheck_store::Store;
use vibecheck_suite::{RunnerSettings, Suite, WatchEvent, WatchOptions};
use vibecheck_test_support::{copy_dir, reference_dir};

fn suite() -> Suite {
    Suite::from_toml(
        r#"
name = "tiny"
[defaults]
max_tokens = 6
[[prompts]]
id = "hello"
prompt = "hello"
[[prompts]]
id = "two-turns"
system = "be brief"
turns = ["first question", "and a follow-up"]
[[prompts]]
id = "long"
prompt = "tell me more"
max_tokens = 9
"#,
        "tiny",
        "test",
    )
    .unwrap()
}

fn options(run: &Path, once: bool) -> WatchOptions {
    WatchOptions {
        run_dir: run.to_path_buf(),
        run_name: Some("tiny-run".into()),
        suite: suite(),
        runner: RunnerSettings {
            samples: 1,
            ..Default::default()
        },
        load: LoadOptions::default(),
        once,
        poll: Duration::from_millis(150),
        synthetic: false,
        engine: None,
    }
}

/// (checkpoint, prompt, sample, turn) of every stored answer.
fn stored(db: &Path) -> Vec<(String, String, u32, u32)> {
    let s = Store::open(db).unwrap();
    let mut v: Vec<_> = s
        .all_answers()
        .unwrap()
        .into_iter()
        .map(|a| (a.checkpoint, a.prompt_id, a.sample, a.turn))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_written_one_by_one_are_evaluated_only_once_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let db = tmp.path().join("v.db");
    let sharded = reference_dir().join("tiny/llama-bf16-sharded");
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("checkpoint-1"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, run, db) = (stop.clone(), run.clone(), db.clone());
        std::thread::spawn(move || {
            let mut store = Store::open(&db).unwrap();
            let mut events = Vec::new();
            let summaries =
                vibecheck_suite::watch(&mut store, &options(&run, false), &stop, &mut |e| {
                    events.push(match e {
                        WatchEvent::Loading { name, .. } => format!("loading {name}"),
                        WatchEvent::Failed { name, error } => format!("FAILED {name}: {error}"),
                        WatchEvent::Finished(s) => format!("finished {}", s.name),
                        WatchEvent::Waiting { name, .. } => format!("waiting {name}"),
                        WatchEvent::Progress { .. } => String::new(),
                    })
                })
                .unwrap();
            (summaries, events)
        })
    };

    // The trainer writes checkpoint-2 file by file, the last shard in two halves, with pauses longer than a poll.
    let dest = run.join("checkpoint-2");
    std::fs::create_dir_all(&dest).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "safetensors"), p.clone()));
    for f in &files {
        let name = f.file_name().unwrap();
        if name == "reference.json" {
            continue;
        }
        let bytes = std::fs::read(f).unwrap();
        if name.to_string_lossy().ends_with("00003.safetensors") {
            std::fs::write(dest.join(name), &bytes[..bytes.len() / 2]).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            std::fs::write(dest.join(name), &bytes).unwrap();
        } else {
            std::fs::write(dest.join(name), &bytes).unwrap();
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    // Wait for both checkpoints' answers: 3 prompts × (greedy + 1 sample), 4 turns per sample set.
    let expected = 2 * 2 * 4;
    for _ in 0..200 {
        if stored(&db).len() == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let (summaries, events) = watcher.join().unwrap();
    assert!(
        !events.iter().any(|e| e.starts_with("FAILED")),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("loading"))
            .cloned()
            .collect::<Vec<_>>(),
        vec!["loading checkpoint-1", "loading checkpoint-2"],
        "each checkpoint is loaded once, the sharded one only when complete: {events:?}"
    );
    assert_eq!(stored(&db).len(), expected);
    assert_eq!(summaries.len(), 2);
    // The stored hash is that of the finished folder: no partial state was evaluated.
    let store = Store::open(&db).unwrap();
    let run_row = store.run("tiny-run").unwrap().unwrap();
    let ck = store.checkpoints(run_row.id).unwrap();
    assert_eq!(ck.len(), 2);
    assert_eq!(
        ck[1].content_hash,
        vibecheck_checkpoint::run::content_hash(&dest).unwrap()
    );
}

#[test]
fn restarts_resume_and_deleted_checkpoints_keep_their_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let db = tmp.path().join("v.db");
    for step in [5, 10] {
        copy_dir(
            &reference_dir().join("tiny/llama"),
            &run.join(format!("checkpoint-{step}")),
        );
    }
    // An interrupted runner stores whole conversations only.
    let model = vibecheck_engine::Model::load(
        run.join("checkpoint-5").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut store = Store::open(&db).unwrap();
    let r = store
        .upsert_run("tiny-run", &run.display().to_string(), false)
        .unwrap();
    let hash = vibecheck_checkpoint::run::content_hash(&run.join("checkpoint-5")).unwrap();
    let ck = store
        .upsert_checkpoint(r.id, "checkpoint-5", "x", Some(5), &hash)
        .unwrap();
    let calls = std::cell::Cell::new(0);
    let settings = RunnerSettings {
        samples: 1,
        // One conversation per step, so the interruption lands between conversations 3 and 4.
        batch: 1,
        ..Default::default()
    };
    let outcome = vibecheck_suite::runner::run_suite(
        &model,
        &suite(),
        &mut store,
        ck.id,
        &settings,
        &mut |_| {},
        &|| {
            calls.set(calls.get() + 1);
            calls.get() <= 3
        },
    )
    .unwrap();
    assert!(outcome.interrupted);
    assert_eq!(outcome.answered, 3);
    // Conversation 3 is prompt "two-turns", greedy: both turns are there, or neither.
    let partial = stored(&db);
    assert_eq!(
        partial.len(),
        4,
        "hello ×2 samples, two-turns greedy ×2 turns: {partial:?}"
    );

    // The watcher picks up from there.
    let stop = AtomicBool::new(false);
    let summaries =
        vibecheck_suite::watch(&mut store, &options(&run, true), &stop, &mut |_| {}).unwrap();
    assert_eq!(summaries[0].outcome.skipped, 3);
    assert_eq!(summaries[0].outcome.answered, 3);
    let all = stored(&db);
    assert_eq!(all.len(), 2 * 8);
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(dedup, all, "no answer stored twice");

    // Multi-turn: the second turn's prompt holds the first turn and the model's own answer.
    let answers = store.answers(r.id, None, Some("two-turns")).unwrap();
    let (t0, t1) = (&answers[0], &answers[1]);
    assert_eq!((t0.turn, t1.turn), (0, 1));
    assert!(t1.prompt_tokens > t0.prompt_tokens + t0.completion_tokens);
    // Samples are seeded and recorded; greedy answers have no seed.
    assert!(answers
        .iter()
        .any(|a| a.sample == 1 && a.seed == Some(1) && a.params.contains("\"temperature\":0.7")));
    assert!(answers.iter().any(|a| a.sample == 0 && a.seed.is_none()));
    assert!(answers
        .iter()
        .all(|a| a.template_hash.len() == 64 && a.vibecheck_version == env!("CARGO_PKG_VERSION")));

    // Again: nothing to do, nothing loaded.
    let again =
        vibecheck_suite::watch(&mut store, &options(&run, true), &stop, &mut |_| {}).unwrap();
    assert!(again.is_empty(), "{again:?}");

    // The trainer deletes checkpoint-5 (save_total_limit): its answers stay.
    std::fs::remove_dir_all(run.join("checkpoint-5")).unwrap();
    vibecheck_suite::watch(&mut store, &options(&run, true), &stop, &mut |_| {}).unwrap();
    assert_eq!(stored(&db).len(), 16);
    let t = vibecheck_suite::timeline(&store, "tiny-run", None, 0).unwrap();
    assert_eq!(t.checkpoints.len(), 2);
    // Identical weights at both steps: greedy answers did not change.
    assert!(t
        .prompts
        .iter()
        .all(|p| p.cells[1].as_ref().unwrap().change == Some(0.0)));
}

#[test]
fn a_suite_edit_is_a_new_version_and_answers_do_not_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let db = tmp.path().join("v.db");
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("checkpoint-1"),
    );
    let mut store = Store::open(&db).unwrap();
    let stop = AtomicBool::new(false);
    let mut opts = options(&run, true);
    opts.runner.samples = 0;
    vibecheck_suite::watch(&mut store, &opts, &stop, &mut |_| {}).unwrap();
    opts.suite.prompts[0].turns[0] = "hello there".into();
    vibecheck_suite::watch(&mut store, &opts, &stop, &mut |_| {}).unwrap();
    let r = store.run("tiny-run").unwrap().unwrap();
    let suites = store.run_suites(r.id).unwrap();
    assert_eq!(suites.len(), 2);
    for s in &suites {
        assert_eq!(store.answers(r.id, Some(&s.hash), None).unwrap().len(), 4);
    }
    let t = vibecheck_suite::timeline(&store, "tiny-run", None, 0).unwrap();
    assert_eq!(
        t.suite.hash,
        opts.suite.hash(),
        "the newest version is shown by default"
    );
}

#[test]
fn file_system_events_wake_the_watcher_long_before_the_poll_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    std::fs::create_dir_all(&run).unwrap();
    let db = tmp.path().join("v.db");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, run, db) = (stop.clone(), run.clone(), db.clone());
        std::thread::spawn(move || {
            let mut store = Store::open(&db).unwrap();
            let mut opts = options(&run, false);
            opts.poll = Duration::from_secs(3600);
            opts.runner.samples = 0;
            vibecheck_suite::watch(&mut store, &opts, &stop, &mut |_| {}).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Written as a trainer does: into tmp-…, renamed when complete.
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("tmp-checkpoint-7"),
    );
    std::fs::rename(run.join("tmp-checkpoint-7"), run.join("checkpoint-7")).unwrap();
    let mut n = 0;
    for _ in 0..300 {
        n = stored(&db).len();
        if n == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let summaries = watcher.join().unwrap();
    assert_eq!(
        n, 4,
        "answered within seconds although the poll interval is an hour"
    );
    assert_eq!(summaries[0].step, Some(7));
}

/// A TRL-style LoRA run (each `checkpoint-N` an adapter over one base): every checkpoint is answered like any
/// other, the base is loaded once for all of them (switching adapters never reloads it), and each answer records
/// the base's name and content hash.
#[test]
fn a_lora_run_is_watched_over_one_shared_base() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let db = tmp.path().join("v.db");
    let base = reference_dir().join("tiny/llama");
    for (step, adapter) in [(10, "lora-llama"), (20, "lora-llama-rslora")] {
        let dir = run.join(format!("checkpoint-{step}"));
        copy_dir(&reference_dir().join("tiny").join(adapter), &dir);
        let cfg = std::fs::read_to_string(dir.join("adapter_config.json"))
            .unwrap()
            .replace("\"../llama\"", &format!("{:?}", base.display().to_string()));
        std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    }
    let loads_before = vibecheck_engine::loader::base_loads();
    let mut store = Store::open(&db).unwrap();
    let mut failures = Vec::new();
    let summaries = vibecheck_suite::watch(
        &mut store,
        &options(&run, true),
        &AtomicBool::new(false),
        &mut |e| {
            if let WatchEvent::Failed { name, error } = e {
                failures.push(format!("{name}: {error}"));
            }
        },
    )
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(summaries.len(), 2);
    assert_eq!(
        vibecheck_engine::loader::base_loads() - loads_before,
        1,
        "the base was loaded more than once"
    );
    let answers = Store::open(&db).unwrap().all_answers().unwrap();
    assert_eq!(answers.len(), 2 * 2 * 4);
    let base_hash = vibecheck_checkpoint::run::content_hash(&base).unwrap();
    for a in &answers {
        let p: serde_json::Value = serde_json::from_str(&a.params).unwrap();
        assert_eq!(p["base"]["hash"], base_hash.as_str(), "{}", a.params);
    }
    // The two adapters answer differently (they are different checkpoints, not the base twice).
    let greedy = |ck: &str| {
        answers
            .iter()
            .filter(|a| a.checkpoint == ck && a.sample == 0)
            .map(|a| a.text.clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(greedy("checkpoint-10"), greedy("checkpoint-20"));
}

/// A run whose later checkpoint is a DeepSpeed ZeRO folder: the watch answers the loadable one, records the ZeRO
/// one as failed with the command that consolidates it (so the timeline shows it), and does not wait on it.
#[test]
fn a_zero_checkpoint_is_recorded_as_failed_with_its_command_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny-run");
    let db = tmp.path().join("v.db");
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &run.join("checkpoint-10"),
    );
    let zero = run.join("checkpoint-20");
    std::fs::create_dir_all(zero.join("global_step20")).unwrap();
    std::fs::copy(
        reference_dir().join("tiny/llama/config.json"),
        zero.join("config.json"),
    )
    .unwrap();
    std::fs::write(
        zero.join("global_step20/zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        b"x",
    )
    .unwrap();
    std::fs::write(zero.join("latest"), "global_step20").unwrap();
    let mut store = Store::open(&db).unwrap();
    let mut failed = Vec::new();
    let summaries = vibecheck_suite::watch(
        &mut store,
        &options(&run, true),
        &AtomicBool::new(false),
        &mut |e| {
            if let WatchEvent::Failed { name, error } = e {
                failed.push((name.to_string(), error));
            }
        },
    )
    .unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "checkpoint-20");
    assert!(failed[0].1.contains("zero_to_fp32"), "{}", failed[0].1);
    let t = vibecheck_suite::timeline(&store, "tiny-run", None, 0).unwrap();
    assert_eq!(t.failed.len(), 1);
    assert!(t.failed[0]
        .load_error
        .as_deref()
        .unwrap()
        .contains("DeepSpeed ZeRO"));
}
