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
}

impl Entry {
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
            Backend::Remote(_) => 0,
        }
    }

    /// `gguf`, `safetensors`, `lora` or `remote`.
    pub fn format(&self) -> &'static str {
        match &self.backend {
            Backend::Local(s) if s.kind == vibecheck_checkpoint::SourceKind::Gguf => "gguf",
            Backend::Local(s) if s.kind == vibecheck_checkpoint::SourceKind::Adapter => "lora",
            Backend::Local(_) => "safetensors",
            Backend::Remote(_) => "remote",
        }
    }

    pub fn remote(&self) -> Option<&RemoteEndpoint> {
        match &self.backend {
            Backend::Remote(r) => Some(r),
            Backend::Local(_) => None,
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

fn run_entry(run_name: &str, ckpt: &run::RunCheckpoint) -> Result<Entry, EngineError> {
    Ok(Entry {
        id: format!("{run_name}/{}", ckpt.name),
        run: Some(run_name.to_string()),
        step: ckpt.step,
        backend: Backend::Local(vibecheck_checkpoint::resolve(&ckpt.path.to_string_lossy())?),
        model: Default::default(),
        last_used: Default::default(),
    })
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
                    if let Err(e) = run::is_complete(&ckpt.path) {
                        tracing::info!(checkpoint = %ckpt.path.display(), "skipped, not complete: {e}");
                        continue;
                    }
                    entries.push(Arc::new(run_entry(&run_name, &ckpt)?));
                }
                runs.push((path.to_path_buf(), run_name));
            } else {
                let source = vibecheck_checkpoint::resolve(spec)?;
                entries.push(Arc::new(Entry {
                    id: source.name.clone(),
                    run: None,
                    step: None,
                    backend: Backend::Local(source),
                    model: Default::default(),
                    last_used: Default::default(),
                }));
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
        entries.push(Arc::new(Entry {
            id: remote.id.clone(),
            run: None,
            step: None,
            backend: Backend::Remote(remote),
            model: Default::default(),
            last_used: Default::default(),
        }));
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

    /// Looks at the served run folders again and adds checkpoints that are complete and no longer growing.
    /// Returns the ids added. Blocking file-system work: call it off the async threads.
    pub fn refresh(&self) -> Vec<String> {
        let mut added = Vec::new();
        for (dir, run_name) in &self.runs {
            let Ok(list) = run::list(dir) else { continue };
            for ckpt in list {
                let id = format!("{run_name}/{}", ckpt.name);
                if self.entries.read().iter().any(|e| e.id == id)
                    || run::is_complete(&ckpt.path).is_err()
                {
                    continue;
                }
                let size = run::folder_size(&ckpt.path);
                let mut pending = self.pending.lock();
                if pending.get(&ckpt.path) != Some(&size) {
                    pending.insert(ckpt.path.clone(), size);
                    continue;
                }
                pending.remove(&ckpt.path);
                drop(pending);
                match run_entry(run_name, &ckpt) {
                    Ok(entry) => {
                        let mut entries = self.entries.write();
                        entries.push(Arc::new(entry));
                        entries
                            .sort_by(|a, b| (&a.run, a.step, &a.id).cmp(&(&b.run, b.step, &b.id)));
                        tracing::info!(model = %id, "new checkpoint");
                        added.push(id);
                    }
                    Err(e) => tracing::warn!(checkpoint = %ckpt.path.display(), "not served: {e}"),
                }
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
        let Backend::Local(source) = &entry.backend else {
            return Err(ApiError::internal(format!(
                "{} is a remote model and has no local weights",
                entry.id
            )));
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
            .map_err(|e| ApiError::internal(format!("loading {} failed: {e}", entry.id)))?;
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
