//! The models a server offers: every checkpoint of the served run folders, plus single checkpoints, GGUF files
//! and hub ids, each under a stable readable id. Models load on first use; a request for a model that is still
//! loading waits for that load instead of starting another.

use std::path::Path;
use std::sync::Arc;

use vibecheck_checkpoint::{run, Source};
use vibecheck_engine::{EngineError, LoadOptions, Model};

use crate::ApiError;

/// One model the server can answer with.
pub struct Entry {
    /// `<run>/<checkpoint>` for checkpoints of a run folder, the folder, file or hub id otherwise.
    pub id: String,
    pub run: Option<String>,
    pub step: Option<u64>,
    pub source: Source,
    model: tokio::sync::OnceCell<Arc<Model>>,
}

impl Entry {
    pub fn is_loaded(&self) -> bool {
        self.model.initialized()
    }
}

/// Every served model, by id.
pub struct Registry {
    entries: Vec<Arc<Entry>>,
    opts: LoadOptions,
}

impl Registry {
    /// Builds the registry from the command line's sources. A run folder contributes each complete checkpoint.
    pub fn from_sources(specs: &[String], opts: LoadOptions) -> Result<Self, EngineError> {
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        for spec in specs {
            let path = Path::new(spec);
            if run::is_run_dir(path) {
                let run_name = path
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| spec.clone());
                for ckpt in run::list(path)? {
                    if let Err(e) = run::is_complete(&ckpt.path) {
                        tracing::info!(checkpoint = %ckpt.path.display(), "skipped, not complete: {e}");
                        continue;
                    }
                    let source = vibecheck_checkpoint::resolve(&ckpt.path.to_string_lossy())?;
                    entries.push(Arc::new(Entry {
                        id: format!("{run_name}/{}", ckpt.name),
                        run: Some(run_name.clone()),
                        step: ckpt.step,
                        source,
                        model: Default::default(),
                    }));
                }
            } else {
                let source = vibecheck_checkpoint::resolve(spec)?;
                entries.push(Arc::new(Entry {
                    id: source.name.clone(),
                    run: None,
                    step: None,
                    source,
                    model: Default::default(),
                }));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if !seen.insert(e.id.clone()) {
                return Err(EngineError::Config(format!("two sources are both called {:?}; serve them from folders with different names", e.id)));
            }
        }
        Ok(Self { entries, opts })
    }

    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    pub fn get(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = self.entries.iter().take(8).map(|e| e.id.as_str()).collect();
                ApiError::not_found(format!(
                    "model {id:?} is not served here; GET /v1/models lists them (e.g. {})",
                    known.join(", ")
                ))
            })
    }

    /// The loaded model, loading it on a blocking thread the first time.
    pub async fn model(&self, entry: &Arc<Entry>) -> Result<Arc<Model>, ApiError> {
        let opts = self.opts.clone();
        let source = entry.source.clone();
        entry
            .model
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || Model::load_source(source, &opts))
                    .await
                    .map_err(|e| ApiError::internal(format!("loading failed: {e}")))?
                    .map(Arc::new)
                    .map_err(|e| ApiError::internal(format!("loading failed: {e}")))
            })
            .await
            .cloned()
    }
}
