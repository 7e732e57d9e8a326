//! The models a server offers: every checkpoint of the served run folders, plus single checkpoints, GGUF files
//! and hub ids, each under a stable readable id. Models load on first use; a request for a model that is still
//! loading waits for that load instead of starting another. Checkpoints a trainer adds to a served run folder
//! appear once complete: every shard the index names present with a consistent header, no `tmp` prefix, and
//! sizes unchanged between two looks ([`Registry::refresh`]). Remote OpenAI-compatible endpoints sit beside them
//! as [`Backend::Remote`] entries ([`Registry::add_remote`]).

use std::path::Path;
use std::sync::Arc;

use vibecheck_checkpoint::{run, Source};
use vibecheck_engine::{Batcher, BatcherSettings, EngineError, LoadOptions, Model};

use crate::remote::RemoteEndpoint;
use crate::ApiError;

/// Where an entry's answers come from.
pub enum Backend {
    /// A checkpoint on this machine, run by our engine.
    Local(Source),
    /// An OpenAI-compatible endpoint elsewhere; requests are validated here and forwarded.
    Remote(RemoteEndpoint),
    /// A checkpoint folder of a served run that cannot load as it is (still being written, or a layout vibecheck
    /// does not load): listed with its [`Problem`], never left out.
    Unavailable(std::path::PathBuf),
}

/// Why an entry cannot answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `incomplete` (still being written), `unsupported` (a layout that needs converting) or `failed` (it did
    /// not load).
    pub status: &'static str,
    pub reason: String,
}

/// One model the server can answer with.
pub struct Entry {
    /// `<run>/<checkpoint>` for checkpoints of a run folder, the folder, file or hub id otherwise.
    pub id: String,
    pub run: Option<String>,
    pub step: Option<u64>,
    pub backend: Backend,
    /// The loaded model and its running batch; the lock is held while loading, so concurrent requests wait for
    /// one load.
    model: tokio::sync::Mutex<Option<(Arc<Model>, Arc<Batcher>)>>,
    /// When it last served a request (a registry-wide counter), for least-recently-used eviction.
    last_used: std::sync::atomic::AtomicU64,
    /// Why it cannot answer, when it cannot (set when a load fails, cleared when one succeeds).
    problem: parking_lot::Mutex<Option<Problem>>,
    /// The engine vibecheck launched behind a remote entry (`serve --engine`): its state is this entry's.
    engine: Option<Arc<vibecheck_engines::Engine>>,
}

impl Entry {
    fn new(id: String, run: Option<String>, step: Option<u64>, backend: Backend) -> Self {
        Self {
            id,
            run,
            step,
            backend,
            model: Default::default(),
            last_used: Default::default(),
            problem: Default::default(),
            engine: None,
        }
    }

    fn unavailable(id: String, ckpt: &run::RunCheckpoint, run: &str, problem: Problem) -> Self {
        let e = Self::new(
            id,
            Some(run.to_string()),
            ckpt.step,
            Backend::Unavailable(ckpt.path.clone()),
        );
        *e.problem.lock() = Some(problem);
        e
    }

    /// Why this model cannot answer, if it cannot (a launched engine that is no longer running cannot).
    pub fn problem(&self) -> Option<Problem> {
        if let Some(engine) = &self.engine {
            use vibecheck_engines::EngineState;
            match engine.state() {
                EngineState::Running => {}
                EngineState::Exited { status, last_lines } => {
                    return Some(Problem {
                        status: "failed",
                        reason: format!(
                        "the engine behind it ({}, pid {}) exited ({status}); its last lines: {}",
                        engine.kind.name(),
                        engine.pid(),
                        last_lines.replace('\n', " | ")
                    ),
                    })
                }
                EngineState::Stopped => {
                    return Some(Problem {
                        status: "failed",
                        reason: format!(
                            "the engine behind it ({}) was stopped",
                            engine.kind.name()
                        ),
                    })
                }
            }
        }
        self.problem.lock().clone()
    }

    /// The engine vibecheck launched for this entry, if it did.
    pub fn engine(&self) -> Option<&Arc<vibecheck_engines::Engine>> {
        self.engine.as_ref()
    }

    /// `available`, or the [`Problem`]'s status.
    pub fn status(&self) -> &'static str {
        self.problem().map_or("available", |p| p.status)
    }

    pub fn is_loaded(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
            && self.model.try_lock().map(|m| m.is_some()).unwrap_or(false)
    }

    /// How full this model's batches have been (`None` when it is not loaded).
    pub fn batch_counts(&self) -> Option<vibecheck_engine::BatchCounts> {
        let slot = self.model.try_lock().ok()?;
        slot.as_ref().map(|(_, b)| b.counts())
    }

    /// Bytes of weights on disk: the memory-budget estimate of what loading it costs (0 for remote models).
    pub fn size_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Local(source) if source.path.is_dir() => run::folder_size(&source.path),
            Backend::Local(source) => std::fs::metadata(&source.path)
                .map(|m| m.len())
                .unwrap_or(0),
            Backend::Remote(_) | Backend::Unavailable(_) => 0,
        }
    }

    /// `gguf`, `safetensors`, `lora`, `remote`, or the launched engine's name (`vllm`, `sglang`,
    /// `llama-server`).
    pub fn format(&self) -> &'static str {
        if let Some(e) = &self.engine {
            return e.kind.name();
        }
        match &self.backend {
            Backend::Local(s) if s.kind == vibecheck_checkpoint::SourceKind::Gguf => "gguf",
            Backend::Local(s) if s.kind == vibecheck_checkpoint::SourceKind::Adapter => "lora",
            Backend::Local(_) => "safetensors",
            Backend::Remote(_) => "remote",
            Backend::Unavailable(_) => "none",
        }
    }

    pub fn remote(&self) -> Option<&RemoteEndpoint> {
        match &self.backend {
            Backend::Remote(r) => Some(r),
            Backend::Local(_) | Backend::Unavailable(_) => None,
        }
    }
}

/// Every served model, by id.
pub struct Registry {
    entries: parking_lot::RwLock<Vec<Arc<Entry>>>,
    /// Served run folders and their names, watched for new checkpoints.
    runs: Vec<(std::path::PathBuf, String)>,
    /// Total file sizes of checkpoints seen complete once, waiting for a second look.
    pending: parking_lot::Mutex<std::collections::HashMap<std::path::PathBuf, u64>>,
    opts: LoadOptions,
    /// Models loaded at once stay under this many bytes (by their files' size); `None`: no limit.
    memory_budget: Option<u64>,
    /// Continuous batching of each loaded model.
    batching: BatcherSettings,
    clock: std::sync::atomic::AtomicU64,
}

/// A run's checkpoint as an entry: loadable, or listed with why it is not (incomplete, a layout that needs
/// converting, a description or header the engine refuses).
fn checkpoint_entry(run_name: &str, ckpt: &run::RunCheckpoint, opts: &LoadOptions) -> Entry {
    let id = format!("{run_name}/{}", ckpt.name);
    if let Err(e) = run::is_complete(&ckpt.path) {
        let status =
            if vibecheck_checkpoint::layout::detect(&ckpt.path).is_some_and(|l| l.is_final()) {
                "unsupported"
            } else {
                "incomplete"
            };
        return Entry::unavailable(
            id,
            ckpt,
            run_name,
            Problem {
                status,
                reason: e.to_string(),
            },
        );
    }
    let source = vibecheck_checkpoint::resolve(&ckpt.path.to_string_lossy())
        .map_err(EngineError::from)
        .and_then(|s| vibecheck_engine::loader::preflight(&s, opts).map(|()| s));
    match source {
        Ok(source) => Entry::new(
            id,
            Some(run_name.to_string()),
            ckpt.step,
            Backend::Local(source),
        ),
        Err(e) => Entry::unavailable(
            id,
            ckpt,
            run_name,
            Problem {
                status: "failed",
                reason: e.to_string(),
            },
        ),
    }
}

impl Registry {
    /// Builds the registry from the command line's sources. A run folder contributes each complete checkpoint.
    pub fn from_sources(specs: &[String], opts: LoadOptions) -> Result<Self, EngineError> {
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        let mut runs = Vec::new();
        for spec in specs {
            let path = Path::new(spec);
            if run::is_run_dir(path) {
                let run_name = run::run_name(path);
                for ckpt in run::list(path)? {
                    let entry = checkpoint_entry(&run_name, &ckpt, &opts);
                    if let Some(p) = entry.problem() {
                        tracing::warn!(model = %entry.id, status = p.status, "listed but cannot answer: {}", p.reason);
                    }
                    entries.push(Arc::new(entry));
                }
                for dir in run::unnamed_checkpoints(path) {
                    tracing::warn!(
                        folder = %dir.display(),
                        "not served: it holds a checkpoint but its name gives no step (rename it checkpoint-N)"
                    );
                }
                runs.push((path.to_path_buf(), run_name));
            } else {
                // A source named on the command line that cannot load fails here, with its reason, rather than
                // at the first request.
                let source = vibecheck_checkpoint::resolve(spec)?;
                vibecheck_engine::loader::preflight(&source, &opts)?;
                entries.push(Arc::new(Entry::new(
                    source.name.clone(),
                    None,
                    None,
                    Backend::Local(source),
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if !seen.insert(e.id.clone()) {
                return Err(EngineError::Config(format!("two sources are both called {:?}; serve them from folders with different names", e.id)));
            }
        }
        Ok(Self {
            entries: parking_lot::RwLock::new(entries),
            runs,
            pending: Default::default(),
            opts,
            memory_budget: None,
            batching: BatcherSettings::default(),
            clock: Default::default(),
        })
    }

    /// A registry for one run folder that may have no complete checkpoint yet (a watcher serving a run that has
    /// just started): its checkpoints appear through [`Registry::refresh`].
    pub fn empty_run(dir: &Path, opts: LoadOptions) -> Self {
        let name = run::run_name(dir);
        Self {
            entries: Default::default(),
            runs: vec![(dir.to_path_buf(), name)],
            pending: Default::default(),
            opts,
            memory_budget: None,
            batching: BatcherSettings::default(),
            clock: Default::default(),
        }
    }

    /// Adds a remote OpenAI-compatible endpoint under its own id.
    pub fn add_remote(&self, remote: RemoteEndpoint) -> Result<(), EngineError> {
        let mut entries = self.entries.write();
        if entries.iter().any(|e| e.id == remote.id) {
            return Err(EngineError::Config(format!(
                "the remote id {:?} is already a served model; pick another id=",
                remote.id
            )));
        }
        entries.push(Arc::new(Entry::new(
            remote.id.clone(),
            None,
            None,
            Backend::Remote(remote),
        )));
        Ok(())
    }

    /// Adds the engine vibecheck launched, answering as a remote entry whose state is the engine's.
    pub fn add_engine(&self, engine: Arc<vibecheck_engines::Engine>) -> Result<(), EngineError> {
        let remote = RemoteEndpoint::new(
            &engine.served_name,
            &engine.base_url(),
            &engine.served_name,
            Some(engine.api_key().to_string()),
        );
        let mut entries = self.entries.write();
        if entries.iter().any(|e| e.id == remote.id) {
            return Err(EngineError::Config(format!(
                "{:?} is already a served model; the engine needs another name",
                remote.id
            )));
        }
        let mut entry = Entry::new(remote.id.clone(), None, None, Backend::Remote(remote));
        entry.engine = Some(engine);
        entries.push(Arc::new(entry));
        Ok(())
    }

    /// Keeps the models loaded at once under `bytes` (estimated by their files' size), evicting the least
    /// recently used first. A model larger than the budget alone still loads, by itself.
    pub fn with_memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// How many sequences each model decodes together, and the prefill chunk while others decode.
    pub fn with_batching(mut self, settings: BatcherSettings) -> Self {
        self.batching = settings;
        self
    }

    /// A snapshot of the served models, sorted by run and step.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries.read().clone()
    }

    /// Looks at the served run folders again: adds checkpoints that are complete and no longer growing, lists
    /// the ones that cannot load (yet) with their reason, and promotes a listed one once it loads. Returns the ids
    /// that became available. Blocking file-system work: call it off the async threads.
    pub fn refresh(&self) -> Vec<String> {
        let mut added = Vec::new();
        for (dir, run_name) in &self.runs {
            let Ok(list) = run::list(dir) else { continue };
            for ckpt in list {
                let id = format!("{run_name}/{}", ckpt.name);
                let current = self.entries.read().iter().find(|e| e.id == id).cloned();
                if current
                    .as_ref()
                    .is_some_and(|e| !matches!(e.backend, Backend::Unavailable(_)))
                {
                    continue;
                }
                if run::is_complete(&ckpt.path).is_ok() {
                    // Complete: it becomes available once its size is the same at two looks.
                    let size = run::folder_size(&ckpt.path);
                    let mut pending = self.pending.lock();
                    if pending.get(&ckpt.path) != Some(&size) {
                        pending.insert(ckpt.path.clone(), size);
                        continue;
                    }
                    pending.remove(&ckpt.path);
                }
                let entry = checkpoint_entry(run_name, &ckpt, &self.opts);
                let problem = entry.problem();
                if current.as_ref().is_some_and(|c| c.problem() == problem) {
                    continue;
                }
                // Said once per state: a checkpoint being written changes its reason at every look.
                let was = current.as_ref().and_then(|c| c.problem()).map(|p| p.status);
                match &problem {
                    None => {
                        tracing::info!(model = %id, "new checkpoint");
                        added.push(id.clone());
                    }
                    Some(p) if was != Some(p.status) => {
                        tracing::warn!(model = %id, status = p.status, "listed but cannot answer: {}", p.reason)
                    }
                    Some(_) => {}
                }
                let mut entries = self.entries.write();
                entries.retain(|e| e.id != id);
                entries.push(Arc::new(entry));
                entries.sort_by(|a, b| (&a.run, a.step, &a.id).cmp(&(&b.run, b.step, &b.id)));
            }
        }
        added
    }

    pub fn get(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        let entries = self.entries.read();
        entries.iter().find(|e| e.id == id).cloned().ok_or_else(|| {
            let known: Vec<&str> = entries.iter().take(8).map(|e| e.id.as_str()).collect();
            ApiError::not_found(format!(
                "model {:?} is not served here; GET /v1/models lists them (e.g. {})",
                crate::error::clip(id, 80),
                known.join(", ")
            ))
        })
    }

    /// The loaded model, loading it on a blocking thread the first time (and evicting others when the memory
    /// budget needs room). Requests in flight keep an evicted model alive until they finish.
    pub async fn model(&self, entry: &Arc<Entry>) -> Result<Arc<Model>, ApiError> {
        Ok(self.loaded(entry).await?.0)
    }

    /// The loaded model and its running batch (continuous batching: requests join it and leave it), loading it
    /// the first time as [`Registry::model`] does.
    pub async fn loaded(&self, entry: &Arc<Entry>) -> Result<(Arc<Model>, Arc<Batcher>), ApiError> {
        use std::sync::atomic::Ordering;
        let source = match &entry.backend {
            Backend::Local(source) => source,
            Backend::Unavailable(_) => {
                let p = entry.problem().map(|p| p.reason).unwrap_or_default();
                return Err(ApiError::unavailable(format!(
                    "model {} cannot answer ({}): {p}",
                    entry.id,
                    entry.status()
                )));
            }
            Backend::Remote(_) => {
                return Err(ApiError::internal(format!(
                    "{} is a remote model and has no local weights",
                    entry.id
                )))
            }
        };
        entry.last_used.store(
            self.clock.fetch_add(1, Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
        let mut slot = entry.model.lock().await;
        if let Some(loaded) = slot.as_ref() {
            return Ok(loaded.clone());
        }
        if let Some(budget) = self.memory_budget {
            self.make_room(entry, budget);
        }
        let opts = self.opts.clone();
        let source = source.clone();
        let model = tokio::task::spawn_blocking(move || Model::load_source(source, &opts))
            .await
            .map_err(|e| ApiError::internal(format!("loading failed: {e}")))?
            .map(Arc::new)
            .map_err(|e| {
                // Recorded: /v1/models and /health show it, and the other models keep answering.
                *entry.problem.lock() = Some(Problem {
                    status: "failed",
                    reason: e.to_string(),
                });
                tracing::error!(model = %entry.id, "loading failed: {e}");
                ApiError::internal(format!("loading {} failed: {e}", entry.id))
            })?;
        *entry.problem.lock() = None;
        let batcher = Batcher::new(model.clone(), self.batching)
            .map(Arc::new)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        *slot = Some((model.clone(), batcher.clone()));
        Ok((model, batcher))
    }

    /// Unloads least-recently-used models until `entry` fits in `budget` beside the others.
    fn make_room(&self, entry: &Arc<Entry>, budget: u64) {
        use std::sync::atomic::Ordering;
        let mut loaded: Vec<Arc<Entry>> = self
            .entries()
            .into_iter()
            .filter(|e| !Arc::ptr_eq(e, entry) && e.is_loaded())
            .collect();
        loaded.sort_by_key(|e| e.last_used.load(Ordering::SeqCst));
        let mut used: u64 = loaded.iter().map(|e| e.size_bytes()).sum();
        let need = entry.size_bytes();
        for victim in loaded {
            if used + need <= budget {
                break;
            }
            if let Ok(mut m) = victim.model.try_lock() {
                if m.take().is_some() {
                    used -= victim.size_bytes();
                    tracing::info!(model = %victim.id, "unloaded to stay under the memory budget");
                }
            }
        }
    }
}
