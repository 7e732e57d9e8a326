//! Hub ids (`org/name[@revision]`) resolved through the local Hugging Face cache.
//!
//! The cache layout is the one `huggingface_hub` writes: `<cache>/models--org--name/refs/<rev>` holds a commit
//! hash and `<cache>/models--org--name/snapshots/<commit>/` holds the files. The cache folder is `HF_HUB_CACHE`,
//! else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//!
//! A model that is not cached is downloaded (the hub's `api/models/<id>/revision/<rev>` listing, then
//! `<id>/resolve/<commit>/<file>` for the config, tokenizer, chat template and safetensors files) into the
//! first cache folder, file by file through `.incomplete` names so an interrupted download is never mistaken
//! for a checkpoint. `HF_ENDPOINT` changes the server, `HF_TOKEN` authenticates, `HF_HUB_OFFLINE=1` forbids
//! the network; offline and not cached, the error names every path searched.

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

/// Resolves `org/name[@revision]` to a snapshot folder in the first cache that has it, downloading it into the
/// first cache folder when it is in none and the machine may go online.
pub fn resolve(spec: &str) -> Result<PathBuf, CheckpointError> {
    let opts = HubOptions::from_env();
    match resolve_in(spec, &opts.caches) {
        Err(CheckpointError::NotFound { .. } | CheckpointError::RevisionNotCached { .. })
            if !opts.offline =>
        {
            download(spec, &opts, &mut |_| {})
        }
        other => other,
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    /// Cache folders to search; downloads go to the first.
    pub caches: Vec<PathBuf>,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
            offline: var("HF_HUB_OFFLINE")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            caches: cache_dirs(),
        }
    }
}

/// Progress of a download, for a progress bar.
#[derive(Debug, Clone)]
pub enum DownloadEvent {
    /// A file starts; its size when the server says.
    File { name: String, size: Option<u64> },
    /// Bytes written to the current file so far.
    Bytes(u64),
}

/// Files of a repository that loading a checkpoint needs.
fn wanted(file: &str) -> bool {
    const NAMES: [&str; 8] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "model.safetensors",
        "model.safetensors.index.json",
    ];
    !file.contains('/')
        && (NAMES.contains(&file) || (file.starts_with("model-") && file.ends_with(".safetensors")))
}

/// Downloads `org/name[@revision]` into the first cache folder and returns its snapshot folder.
pub fn download(
    spec: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf, CheckpointError> {
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if !valid_revision(revision) {
        return Err(CheckpointError::invalid(
            spec,
            format!("revision {revision:?} is not a branch, tag or commit name"),
        ));
    }
    let cache = opts.caches.first().ok_or_else(|| {
        CheckpointError::invalid(
            spec,
            "no cache folder to download into; set HF_HUB_CACHE or HF_HOME",
        )
    })?;
    let endpoint = opts.endpoint.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(15)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(300)))
        .build()
        .into();
    let get = |url: &str| {
        let mut req = agent.get(url);
        if let Some(t) = &opts.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        req.call().map_err(|e| {
            let hint = match &e {
                ureq::Error::StatusCode(401 | 403) => " (a gated or private model: set HF_TOKEN)",
                ureq::Error::StatusCode(404) => " (no such model or revision)",
                _ => "",
            };
            CheckpointError::invalid(url, format!("download failed: {e}{hint}"))
        })
    };
    let info_url = format!("{endpoint}/api/models/{id}/revision/{revision}");
    let info: serde_json::Value = {
        let mut resp = get(&info_url)?;
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CheckpointError::invalid(&info_url, e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| CheckpointError::invalid(&info_url, format!("not JSON: {e}")))?
    };
    let sha = info
        .get("sha")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| CheckpointError::invalid(&info_url, "the reply has no commit `sha`"))?
        .to_string();
    let files: Vec<String> = info
        .get("siblings")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("rfilename")?.as_str().map(str::to_string))
                .filter(|f| wanted(f))
                .collect()
        })
        .unwrap_or_default();
    if !files.iter().any(|f| f == "config.json") {
        return Err(CheckpointError::invalid(
            &info_url,
            "the repository has no config.json at the top level",
        ));
    }
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(&sha);
    std::fs::create_dir_all(&snapshot).map_err(|e| CheckpointError::io(&snapshot, e))?;
    for file in &files {
        let dest = snapshot.join(file);
        if dest.is_file() {
            continue;
        }
        let url = format!("{endpoint}/{id}/resolve/{sha}/{file}");
        let resp = get(&url)?;
        let size = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        progress(DownloadEvent::File {
            name: file.clone(),
            size,
        });
        let part = snapshot.join(format!("{file}.incomplete"));
        let mut out = std::fs::File::create(&part).map_err(|e| CheckpointError::io(&part, e))?;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| {
                CheckpointError::invalid(&url, format!("download interrupted: {e}"))
            })?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut out, &buf[..n])
                .map_err(|e| CheckpointError::io(&part, e))?;
            done += n as u64;
            progress(DownloadEvent::Bytes(done));
        }
        if size.is_some_and(|s| s != done) {
            return Err(CheckpointError::invalid(
                &url,
                format!("download ended after {done} of {} bytes", size.unwrap_or(0)),
            ));
        }
        out.sync_all().map_err(|e| CheckpointError::io(&part, e))?;
        std::fs::rename(&part, &dest).map_err(|e| CheckpointError::io(&dest, e))?;
        tracing::info!(file = %file, bytes = done, "downloaded");
    }
    let refs = repo.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| CheckpointError::io(&refs, e))?;
    if !revision.chars().all(|c| c.is_ascii_hexdigit()) || revision.len() != 40 {
        std::fs::write(refs.join(revision), &sha)
            .map_err(|e| CheckpointError::io(refs.join(revision), e))?;
    }
    Ok(snapshot)
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
    let fetch = if revision == "main" {
        format!("`hf download {id}`")
    } else {
        format!("`hf download {id} --revision {revision}`")
    };
    // The model is cached, only not at this revision: say so, with what is cached.
    if let Some(repo) = caches
        .iter()
        .map(|c| c.join(&folder))
        .find(|r| r.join("snapshots").is_dir())
    {
        let mut cached: Vec<String> = std::fs::read_dir(repo.join("refs"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        cached.sort();
        let cached = if cached.is_empty() {
            "snapshots only, no named refs".to_string()
        } else {
            cached.join(", ")
        };
        let hint = if offline {
            format!("HF_HUB_OFFLINE is set, so nothing is downloaded; fetch it with {fetch} on a connected machine and copy the cache folder.")
        } else {
            format!("Fetch it with {fetch}, or name a cached revision.")
        };
        return Err(CheckpointError::RevisionNotCached {
            id: id.to_string(),
            revision: revision.to_string(),
            detail: format!("{} (cached: {cached}). {hint}", repo.display()),
        });
    }
    Err(CheckpointError::NotFound {
        spec: spec.to_string(),
        searched: if searched.is_empty() {
            "no cache folder (set HF_HUB_CACHE or HF_HOME)".into()
        } else {
            searched.join(", ")
        },
        hint: if offline {
            format!("HF_HUB_OFFLINE is set, so nothing is downloaded; fetch it on a connected machine with {fetch} and copy the cache folder.")
        } else {
            "It is in none of these caches; `vibecheck` downloads it when online, or pass a local path.".into()
        },
    })
}

fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && !rev.starts_with('.')
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn snapshot_for(repo: &Path, revision: &str) -> Result<Option<PathBuf>, CheckpointError> {
    if !repo.is_dir() || !valid_revision(revision) {
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
