//! Watching a run folder: every checkpoint that is complete (config and tokenizer present, every indexed shard
//! present with a consistent header, no `tmp` prefix) and has stopped growing (the same total size at two looks) is
//! hashed, recorded, loaded, and given the whole suite. Checkpoints whose answers are all stored are not loaded
//! again, so a restart after a crash resumes where it stopped; a checkpoint the trainer deletes keeps its answers.
//!
//! File-system events (inotify and its kin, through `notify`) wake the watcher as soon as the trainer writes; where
//! they are unavailable (network file systems, exhausted inotify watches) it falls back to looking every `poll`.
//!
//! With an engine ([`EngineWatch`]: vLLM or SGLang), one engine stays up for the whole watch: it starts on the first
//! checkpoint, each later one is swapped in without a restart (`vibecheck_engines::swap`) and checked (the weight
//! version the engine reports, a probe prompt's greedy answer), and an engine that died is started again on the
//! checkpoint at hand. Every answer records the engine, its version, the weight version and how the weights got
//! there. A swap that fails marks that checkpoint failed; the answers stored before it stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vibecheck_checkpoint::run;
use vibecheck_engine::{LoadOptions, Model};
use vibecheck_store::{Store, StoreError};

use crate::endpoint::{folder_template_hash, EndpointAnswerer};
use crate::runner::{
    pending_jobs, run_suite, Answerer, Progress, RunError, RunOutcome, RunnerSettings,
};
use crate::timeline::timeline;
use crate::Suite;

/// What `watch` is asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub run_dir: PathBuf,
    /// The run's name in the store (the folder's name by default).
    pub run_name: Option<String>,
    pub suite: Suite,
    pub runner: RunnerSettings,
    pub load: LoadOptions,
    /// Handle what is there now and return.
    pub once: bool,
    /// Time between looks at the folder (also the size-stability wait).
    pub poll: Duration,
    /// Marks the run as made up (the demo).
    pub synthetic: bool,
    /// Answer on an engine vibecheck starts and swaps checkpoints into, instead of its own.
    pub engine: Option<EngineWatch>,
}

/// The engine a watch runs its checkpoints on.
#[derive(Debug, Clone)]
pub struct EngineWatch {
    /// The engine's command line; its model (each checkpoint's folder), port, key and weight version are set
    /// per start.
    pub spec: vibecheck_engines::LaunchSpec,
    pub ready: Duration,
    pub relay: vibecheck_engines::Relay,
}

/// The engine of a watch, and what it serves now.
struct Running {
    engine: vibecheck_engines::Engine,
    /// The engine's own version string (`unknown` when it does not say).
    engine_version: String,
}

/// What happened, for progress bars and logs.
#[derive(Debug)]
pub enum WatchEvent<'a> {
    /// A checkpoint folder is there but not ready (with the reason).
    Waiting {
        name: &'a str,
        why: String,
    },
    Loading {
        name: &'a str,
        step: Option<u64>,
        pending: usize,
    },
    Progress {
        name: &'a str,
        progress: Progress<'a>,
    },
    Finished(&'a CheckpointSummary),
    Failed {
        name: &'a str,
        error: String,
    },
}

/// The one-line summary of a checkpoint's suite.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSummary {
    pub name: String,
    pub step: Option<u64>,
    pub outcome: RunOutcome,
    /// Greedy answers compared with the previous checkpoint, how many changed, and the mean change score.
    pub compared: usize,
    pub changed: usize,
    pub mean_change: f64,
}

impl std::fmt::Display for CheckpointSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(s) = self.step {
            write!(f, " (step {s})")?;
        }
        write!(
            f,
            ": {} answered, {} already stored",
            self.outcome.answered, self.outcome.skipped
        )?;
        if !self.outcome.failed.is_empty() {
            write!(f, ", {} failed", self.outcome.failed.len())?;
        }
        if self.compared > 0 {
            write!(
                f,
                "; {}/{} answers changed since the previous checkpoint (mean change {:.2})",
                self.changed, self.compared, self.mean_change
            )?;
        }
        if self.outcome.seconds > 0.0 {
            write!(
                f,
                "; {:.1} s, {:.0} tok/s",
                self.outcome.seconds,
                self.outcome.completion_tokens as f64 / self.outcome.seconds
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path} is not a folder of checkpoints (expected sub-folders such as checkpoint-500, step_1000 or global_step1500): {detail}")]
    NotARun { path: String, detail: String },
}

impl From<RunError> for WatchError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Store(s) => Self::Store(s),
        }
    }
}

/// The run's name: `run_name`, else the folder's own name.
pub fn run_name(opts: &WatchOptions) -> String {
    opts.run_name
        .clone()
        .unwrap_or_else(|| run::run_name(&opts.run_dir))
}

/// Watches until `stop` is set (or, with `once`, until what is there now is handled). Returns the summaries of
/// the checkpoints handled.
pub fn watch(
    store: &mut Store,
    opts: &WatchOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(WatchEvent<'_>),
) -> Result<Vec<CheckpointSummary>, WatchError> {
    let name = run_name(opts);
    let run = store.upsert_run(&name, &opts.run_dir.display().to_string(), opts.synthetic)?;
    let suite_hash = opts.suite.hash();
    store.put_suite(&suite_hash, &opts.suite.name, &opts.suite.canonical_json())?;
    // Sizes at the previous look, for the stability check; checkpoints whose suite is complete.
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
    let mut finished: HashMap<PathBuf, u64> = HashMap::new();
    let mut summaries = Vec::new();
    let mut first_look = true;
    let events = FolderEvents::new(&opts.run_dir);
    let mut engine: Option<Running> = None;
    loop {
        let list = run::list(&opts.run_dir).map_err(|e| WatchError::NotARun {
            path: opts.run_dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut waiting = 0;
        if first_look {
            for dir in run::unnamed_checkpoints(&opts.run_dir) {
                let name = dir.file_name().unwrap_or_default().to_string_lossy();
                on_event(WatchEvent::Failed {
                    name: &name,
                    error: "not watched: this folder holds a checkpoint but its name gives no step; rename it \
                            (checkpoint-N, step_N, epoch_N) to have it answered"
                        .into(),
                });
            }
        }
        for ckpt in list {
            if stop.load(Ordering::SeqCst) {
                return Ok(summaries);
            }
            if let Err(e) = run::is_complete(&ckpt.path) {
                // A layout that is never loadable (ZeRO partitions, FSDP shards, Megatron): once the folder
                // stops changing it is recorded as failed with the command that converts it, so a run whose later
                // checkpoints are ZeRO shards does not look like a run that stopped.
                let size = run::folder_size(&ckpt.path);
                if finished.get(&ckpt.path) == Some(&size) {
                    continue;
                }
                let stable = sizes.insert(ckpt.path.clone(), size) == Some(size);
                let unloadable =
                    vibecheck_checkpoint::layout::detect(&ckpt.path).is_some_and(|l| l.is_final());
                if stable && unloadable {
                    let error = e.to_string();
                    let hash = run::content_hash(&ckpt.path).unwrap_or_default();
                    let row = store.upsert_checkpoint(
                        run.id,
                        &ckpt.name,
                        &ckpt.path.display().to_string(),
                        ckpt.step.map(|s| s as i64),
                        &hash,
                    );
                    keep_unless_fatal(
                        row.and_then(|row| store.set_load_error(row.id, Some(&error))),
                    )?;
                    on_event(WatchEvent::Failed {
                        name: &ckpt.name,
                        error,
                    });
                    finished.insert(ckpt.path.clone(), size);
                    continue;
                }
                waiting += 1;
                on_event(WatchEvent::Waiting {
                    name: &ckpt.name,
                    why: e.to_string(),
                });
                continue;
            }
            let size = run::folder_size(&ckpt.path);
            if finished.get(&ckpt.path) == Some(&size) {
                continue;
            }
            if sizes.insert(ckpt.path.clone(), size) != Some(size) {
                // First look at this size: wait one poll to see that it stopped growing.
                waiting += 1;
                continue;
            }
            match handle(
                store,
                opts,
                run.id,
                &suite_hash,
                &ckpt,
                stop,
                on_event,
                &mut engine,
            ) {
                Ok(Some(summary)) => {
                    on_event(WatchEvent::Finished(&summary));
                    if !summary.outcome.interrupted {
                        finished.insert(ckpt.path.clone(), size);
                    }
                    summaries.push(summary);
                }
                Ok(None) => {
                    finished.insert(ckpt.path.clone(), size);
                }
                Err(HandleError::Store(e)) if transient(&e) => {
                    // Another program holds the database past the store's wait, or the disk is full: this
                    // checkpoint's answers wait for the next look; nothing stored is lost and the watch goes on.
                    on_event(WatchEvent::Failed {
                        name: &ckpt.name,
                        error: format!("{e}; its answers are written at the next look"),
                    });
                    waiting += 1;
                }
                Err(HandleError::Store(e)) => return Err(e.into()),
                Err(HandleError::Checkpoint { id, error }) => {
                    // A checkpoint that cannot be loaded is recorded with its reason (the timeline and `log` show
                    // it), reported, and retried when its files change.
                    if let Some(id) = id {
                        keep_unless_fatal(store.set_load_error(id, Some(&error)))?;
                    }
                    on_event(WatchEvent::Failed {
                        name: &ckpt.name,
                        error,
                    });
                    finished.insert(ckpt.path.clone(), size);
                }
            }
        }
        // With --once, the second look handles what was stable; anything still being written waits for a
        // later run.
        if stop.load(Ordering::SeqCst) || (opts.once && (!first_look || waiting == 0)) {
            return Ok(summaries);
        }
        first_look = false;
        // A checkpoint seen for the first time needs a second look one poll later (size stability); otherwise
        // the next look comes with the next file-system event, or after `poll` at the latest.
        // With events, a second look after a quiet second is enough: any later write sends another event.
        let wait = if waiting > 0 && events.available() {
            opts.poll.min(Duration::from_secs(1))
        } else {
            opts.poll
        };
        let until = Instant::now() + wait;
        let mut woken = false;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            let slice = Duration::from_millis(50).min(opts.poll);
            if events.wait(slice) {
                woken = true;
            }
            if woken && waiting == 0 {
                break;
            }
        }
    }
}

/// File-system events under the run folder, or nothing when they are unavailable (then `wait` just sleeps).
struct FolderEvents {
    _watcher: Option<notify::RecommendedWatcher>,
    rx: std::sync::mpsc::Receiver<()>,
}

impl FolderEvents {
    fn new(dir: &Path) -> Self {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(dir, notify::RecursiveMode::Recursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::info!(dir = %dir.display(), "no file-system events ({e}); looking every poll interval");
                None
            }
        };
        Self {
            _watcher: watcher,
            rx,
        }
    }

    fn available(&self) -> bool {
        self._watcher.is_some()
    }

    /// Waits up to `d`; true when something changed under the folder.
    fn wait(&self, d: Duration) -> bool {
        match self.rx.recv_timeout(d) {
            Ok(()) => {
                while self.rx.try_recv().is_ok() {}
                true
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(d);
                false
            }
        }
    }
}

enum HandleError {
    Store(StoreError),
    /// The checkpoint (its store row, once it has one) could not be read or loaded.
    Checkpoint {
        id: Option<i64>,
        error: String,
    },
}

/// A store write whose failure passes (see [`transient`]) is left for the next look; any other failure ends the
/// watch.
fn keep_unless_fatal<T>(result: Result<T, StoreError>) -> Result<(), WatchError> {
    match result {
        Err(e) if !transient(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Store failures that pass (a lock held past the store's wait, a full disk): retried at the next look.
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Locked { .. } | StoreError::Full { .. })
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Runs the suite's pending jobs on one complete checkpoint. `None`: nothing was pending.
#[allow(clippy::too_many_arguments)]
fn handle(
    store: &mut Store,
    opts: &WatchOptions,
    run_id: i64,
    suite_hash: &str,
    ckpt: &run::RunCheckpoint,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(WatchEvent<'_>),
    engine: &mut Option<Running>,
) -> Result<Option<CheckpointSummary>, HandleError> {
    let hash = run::content_hash(&ckpt.path).map_err(|e| HandleError::Checkpoint {
        id: None,
        error: e.to_string(),
    })?;
    let row = store.upsert_checkpoint(
        run_id,
        &ckpt.name,
        &ckpt.path.display().to_string(),
        ckpt.step.map(|s| s as i64),
        &hash,
    )?;
    let (jobs, _) = pending_jobs(store, row.id, &opts.suite, suite_hash, opts.runner.samples)?;
    if jobs.is_empty() {
        return Ok(None);
    }
    on_event(WatchEvent::Loading {
        name: &ckpt.name,
        step: ckpt.step,
        pending: jobs.len(),
    });
    let answerer: Box<dyn Answerer> =
        match &opts.engine {
            None => Box::new(
                Model::load(&ckpt.path.to_string_lossy(), &opts.load).map_err(|e| {
                    HandleError::Checkpoint {
                        id: Some(row.id),
                        error: format!("cannot load {}: {e}", ckpt.path.display()),
                    }
                })?,
            ),
            Some(ew) => Box::new(on_engine(ew, engine, ckpt, &run_name(opts)).map_err(
                |error| HandleError::Checkpoint {
                    id: Some(row.id),
                    error,
                },
            )?),
        };
    if row.load_error.is_some() {
        store.set_load_error(row.id, None)?;
    }
    let name = ckpt.name.clone();
    let outcome = run_suite(
        answerer.as_ref(),
        &opts.suite,
        store,
        row.id,
        &opts.runner,
        &mut |progress| {
            on_event(WatchEvent::Progress {
                name: &name,
                progress,
            })
        },
        &|| !stop.load(Ordering::SeqCst),
    )
    .map_err(|e| match e {
        RunError::Store(s) => HandleError::Store(s),
    })?;
    let (compared, changed, mean_change) = changes_at(store, &run_name(opts), suite_hash, row.id);
    Ok(Some(CheckpointSummary {
        name: ckpt.name.clone(),
        step: ckpt.step,
        outcome,
        compared,
        changed,
        mean_change,
    }))
}

/// Brings `ckpt` up on the watch's engine: started on the first checkpoint (or again when it died, or for an
/// engine that cannot swap), swapped in otherwise; then checked with the probe prompt.
fn on_engine(
    ew: &EngineWatch,
    running: &mut Option<Running>,
    ckpt: &run::RunCheckpoint,
    served_name: &str,
) -> Result<EndpointAnswerer, String> {
    use vibecheck_engines::{EngineState, SwapPath};
    let version = ckpt.name.clone();
    let path = ckpt.path.to_string_lossy().into_owned();
    let alive = running
        .as_ref()
        .is_some_and(|r| r.engine.state() == EngineState::Running);
    let swap = if alive && ew.spec.kind.swap_path() != SwapPath::Restart {
        let r = running.as_ref().expect("alive");
        let s = vibecheck_engines::swap::swap(&r.engine, &path, &version).map_err(|e| {
            format!(
                "swapping {} into the running {} failed: {e}",
                ckpt.path.display(),
                ew.spec.kind.name()
            )
        })?;
        tracing::info!(checkpoint = %ckpt.name, engine = ew.spec.kind.name(), secs = s.seconds, "weights swapped: {}", s.detail);
        (s.path, s.weight_version)
    } else {
        let how = if running.is_some() {
            SwapPath::Restart
        } else {
            SwapPath::Launch
        };
        // The old engine (if any) stops before the new one starts: one engine's worth of GPU memory at a time.
        *running = None;
        let mut spec = ew.spec.clone();
        spec.model = path.clone();
        spec.served_name = served_name.to_string();
        spec.weight_version = Some(version.clone());
        spec.swappable = true;
        spec.port = vibecheck_engines::launch::free_port().map_err(|e| e.to_string())?;
        spec.api_key = vibecheck_engines::launch::random_key();
        let engine = vibecheck_engines::Engine::start(&spec, ew.relay, ew.ready).map_err(|e| {
            format!(
                "starting {} on {}: {e}",
                spec.kind.name(),
                ckpt.path.display()
            )
        })?;
        let engine_version = engine.version();
        *running = Some(Running {
            engine,
            engine_version,
        });
        (how, version.clone())
    };
    let template_hash = folder_template_hash(&ckpt.path)?;
    let r = running.as_ref().expect("started or swapped");
    let probe = vibecheck_engines::swap::probe(&r.engine)
        .map_err(|e| format!("the probe after bringing up {}: {e}", ckpt.name))?;
    Ok(EndpointAnswerer {
        client: r.engine.client(),
        model: r.engine.served_name.clone(),
        template_hash,
        provenance: vec![(
            "engine",
            serde_json::json!({"name": ew.spec.kind.name(), "version": r.engine_version,
                               "weight_version": swap.1, "swap": swap.0.name(),
                               "probe": {"prompt": vibecheck_engines::swap::PROBE_PROMPT, "answer": probe}}),
        )],
    })
}

/// Greedy answers of checkpoint `checkpoint_id` compared with the previous checkpoint's: (compared, changed, mean
/// change score).
pub fn changes_at(
    store: &Store,
    run: &str,
    suite_hash: &str,
    checkpoint_id: i64,
) -> (usize, usize, f64) {
    let Ok(t) = timeline(store, run, Some(suite_hash), 0) else {
        return (0, 0, 0.0);
    };
    let Some(col) = t.checkpoints.iter().position(|c| c.id == checkpoint_id) else {
        return (0, 0, 0.0);
    };
    let scores: Vec<f64> = t
        .prompts
        .iter()
        .filter_map(|p| p.cells[col].as_ref()?.change)
        .collect();
    let changed = scores.iter().filter(|s| **s > 0.0).count();
    let mean = if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    (scores.len(), changed, mean)
}
