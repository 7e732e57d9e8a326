//! Hub ids (`org/name[@revision]`) resolved through the local Hugging Face cache.
//!
//! The cache layout is the one `huggingface_hub` writes: `<cache>/models--org--name/refs/<rev>` holds a commit
//! hash and `<cache>/models--org--name/snapshots/<commit>/` holds the files. The cache folder is `HF_HUB_CACHE`,
//! else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//!
//! Downloading is not built yet: a model that is not cached gets an error naming every path searched.

use std::path::{Path, PathBuf};

use crate::CheckpointError;

/// Whether `spec` has the shape of a hub repository id (`org/name`, optional `@revision`).
pub fn looks_like_repo_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The cache folders to search, most specific first, from the environment.
pub fn cache_dirs() -> Vec<PathBuf> {
    cache_dirs_from(
        std::env::var_os("HF_HUB_CACHE").map(PathBuf::from),
        std::env::var_os("HF_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn cache_dirs_from(
    hub_cache: Option<PathBuf>,
    hf_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = hub_cache {
        dirs.push(p);
    }
    if let Some(p) = hf_home {
        dirs.push(p.join("hub"));
    }
    if let Some(p) = home {
        dirs.push(p.join(".cache").join("huggingface").join("hub"));
    }
    dirs.dedup();
    dirs
}

/// Resolves `org/name[@revision]` to a snapshot folder in the first cache that has it.
pub fn resolve(spec: &str) -> Result<PathBuf, CheckpointError> {
    resolve_in(spec, &cache_dirs())
}

/// Like [`resolve`] with explicit cache folders.
pub fn resolve_in(spec: &str, caches: &[PathBuf]) -> Result<PathBuf, CheckpointError> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let folder = format!("models--{}", id.replace('/', "--"));
    let mut searched = Vec::new();
    for cache in caches {
        let repo = cache.join(&folder);
        searched.push(repo.display().to_string());
        if let Some(dir) = snapshot_for(&repo, revision)? {
            return Ok(dir);
        }
    }
    let offline =
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    Err(CheckpointError::NotFound {
        spec: spec.to_string(),
        searched: if searched.is_empty() {
            "no cache folder (set HF_HUB_CACHE or HF_HOME)".into()
        } else {
            searched.join(", ")
        },
        hint: if offline {
            "HF_HUB_OFFLINE is set, so nothing is downloaded; fetch it on a connected machine with `huggingface-cli download` and copy the cache folder.".into()
        } else {
            "vibecheck does not download yet; fetch it with `huggingface-cli download` (it fills the same cache) or pass a local path.".into()
        },
    })
}

fn snapshot_for(repo: &Path, revision: &str) -> Result<Option<PathBuf>, CheckpointError> {
    if !repo.is_dir() {
        return Ok(None);
    }
    let snapshots = repo.join("snapshots");
    let ref_file = repo.join("refs").join(revision);
    let commit = if ref_file.is_file() {
        let text =
            std::fs::read_to_string(&ref_file).map_err(|e| CheckpointError::io(&ref_file, e))?;
        text.trim().to_string()
    } else {
        // A revision may be a commit hash itself.
        revision.to_string()
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return Err(CheckpointError::invalid(
            ref_file,
            "the ref does not hold a commit hash",
        ));
    }
    let dir = snapshots.join(&commit);
    Ok(dir.is_dir().then_some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_shapes() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_repo_id("org/name@main"));
        assert!(!looks_like_repo_id("./local/dir"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("model.gguf"));
    }

    #[test]
    fn cache_dir_precedence() {
        let dirs = cache_dirs_from(Some("/c".into()), Some("/h".into()), Some("/home/u".into()));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/c"),
                PathBuf::from("/h/hub"),
                PathBuf::from("/home/u/.cache/huggingface/hub")
            ]
        );
    }
}
