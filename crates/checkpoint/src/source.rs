//! Resolving what the user typed (`./ckpt`, `model.gguf`, `org/name`) into files on disk.

use std::path::{Component, Path, PathBuf};

use crate::{hub, safetensors_header, CheckpointError};

/// The on-disk format of a resolved model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A Hugging Face folder: `config.json`, safetensors weights, tokenizer files.
    HfFolder,
    /// A single GGUF file carrying weights, hyper-parameters, tokenizer and chat template.
    Gguf,
    /// A peft LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`) over a base model named by
    /// its `base_model_name_or_path` ([`adapter_base`]).
    Adapter,
}

/// A model located on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    /// The folder (for [`SourceKind::HfFolder`]) or the file (for [`SourceKind::Gguf`]).
    pub path: PathBuf,
    /// A short readable name: the folder or file name, or the hub id.
    pub name: String,
}

/// Resolves a model name: an existing path first, then a hub id in the local cache.
pub fn resolve(spec: &str) -> Result<Source, CheckpointError> {
    let path = Path::new(spec);
    if path.exists() {
        return from_path(path);
    }
    if hub::looks_like_repo_id(spec) {
        let dir = hub::resolve(spec)?;
        let mut source = from_path(&dir)?;
        source.name = spec.to_string();
        return Ok(source);
    }
    Err(CheckpointError::NotFound {
        spec: spec.to_string(),
        searched: path.display().to_string(),
        hint: "Give a path to a checkpoint folder or a .gguf file, or a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`."
            .into(),
    })
}

fn from_path(path: &Path) -> Result<Source, CheckpointError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    if path.is_dir() {
        if path.join("adapter_config.json").is_file() && !path.join("config.json").is_file() {
            return Ok(Source {
                kind: SourceKind::Adapter,
                path: path.to_path_buf(),
                name,
            });
        }
        if path.join("config.json").is_file() {
            return Ok(Source {
                kind: SourceKind::HfFolder,
                path: path.to_path_buf(),
                name,
            });
        }
        let ggufs = gguf_files_in(path)?;
        if let [single] = ggufs.as_slice() {
            return from_path(single);
        }
        return Err(CheckpointError::invalid(
            path,
            if ggufs.is_empty() {
                match crate::layout::detect(path) {
                    Some(layout) => layout.message(path),
                    None => "this folder has no config.json, no adapter_config.json and no .gguf file; a checkpoint \
                             folder needs config.json beside its safetensors weights"
                        .to_string(),
                }
            } else {
                format!(
                    "this folder has no config.json and {} .gguf files; name one of them directly",
                    ggufs.len()
                )
            },
        ));
    }
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf || has_gguf_magic(path) {
        return Ok(Source {
            kind: SourceKind::Gguf,
            path: path.to_path_buf(),
            name,
        });
    }
    Err(CheckpointError::invalid(
        path,
        "not a checkpoint: expected a folder with config.json or a .gguf file",
    ))
}

/// The largest `adapter_config.json` read (real ones are about 1 kB).
const MAX_ADAPTER_CONFIG_BYTES: u64 = 1 << 20;

/// An adapter folder's `adapter_config.json`, parsed.
pub fn adapter_config(dir: &Path) -> Result<serde_json::Value, CheckpointError> {
    let path = dir.join("adapter_config.json");
    let size = std::fs::metadata(&path)
        .map_err(|e| CheckpointError::io(&path, e))?
        .len();
    if size > MAX_ADAPTER_CONFIG_BYTES {
        return Err(CheckpointError::invalid(
            &path,
            format!("is {size} bytes; an adapter's description is about a kilobyte"),
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::invalid(&path, format!("not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(CheckpointError::invalid(&path, "is not a JSON object"));
    }
    Ok(json)
}

/// The base model an adapter folder names (`base_model_name_or_path`): a path relative to the adapter folder
/// when one exists there (how a run saved beside its base refers to it), else as written (an absolute path or a
/// hub id).
pub fn adapter_base(dir: &Path) -> Result<String, CheckpointError> {
    let json = adapter_config(dir)?;
    let base = json
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CheckpointError::invalid(
                dir.join("adapter_config.json"),
                "has no `base_model_name_or_path`, so the base model is unknown; pass it with --base",
            )
        })?;
    let relative = dir.join(base);
    Ok(if Path::new(base).is_relative() && relative.exists() {
        relative.display().to_string()
    } else {
        base.to_string()
    })
}

fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The weight files of a checkpoint folder, in a stable order, each validated: safetensors (with
/// `model.safetensors.index.json`, the shards its `weight_map` names, which must stay inside the folder and must all
/// exist; otherwise `model.safetensors`), else PyTorch's `pytorch_model.bin` (sharded the same way with
/// `pytorch_model.bin.index.json`), read without running its pickle ([`crate::torch`]).
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let index = dir.join("model.safetensors.index.json");
    let bin_index = dir.join("pytorch_model.bin.index.json");
    let files = if index.is_file() {
        shards_from_index(dir, &index)?
    } else if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else if bin_index.is_file() {
        shards_from_index(dir, &bin_index)?
    } else if dir.join("pytorch_model.bin").is_file() {
        vec![dir.join("pytorch_model.bin")]
    } else {
        return Err(CheckpointError::invalid(
            dir,
            crate::layout::no_weights_message(dir),
        ));
    };
    for file in &files {
        weight_header(file)?;
    }
    Ok(files)
}

/// The tensor table of one weight file: a safetensors header, or a torch `.bin`'s (as byte ranges in the file).
pub fn weight_header(path: &Path) -> Result<safetensors_header::Header, CheckpointError> {
    if path.extension().is_some_and(|e| e == "bin") {
        crate::torch::read(path)
    } else {
        safetensors_header::read(path)
    }
}

/// The largest shard index read: a real one lists each tensor once, well under a megabyte even for large models.
const MAX_INDEX_BYTES: u64 = 64 << 20;

fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let size = std::fs::metadata(index)
        .map_err(|e| CheckpointError::io(index, e))?
        .len();
    if size > MAX_INDEX_BYTES {
        return Err(CheckpointError::invalid(
            index,
            format!(
                "is {size} bytes, more than a shard index holds ({} MiB at most)",
                MAX_INDEX_BYTES >> 20
            ),
        ));
    }
    let text = std::fs::read_to_string(index).map_err(|e| CheckpointError::io(index, e))?;
    let names = index_shard_names(&text).map_err(|m| CheckpointError::invalid(index, m))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(CheckpointError::invalid(
                index,
                format!("weight_map names shard {name:?}, which does not exist (is the checkpoint still being written?)"),
            ));
        }
        out.push(path);
    }
    Ok(out)
}

/// The shard file names a `model.safetensors.index.json` text names, sorted and each once; every one must be a
/// plain file name (no folder, no `..`). The error says what is wrong, for the caller to name the file.
pub fn index_shard_names(text: &str) -> Result<Vec<String>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("missing the `weight_map` object")?;
    let mut names = std::collections::BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map[{tensor:?}] is not a file name"))?;
        names.insert(file);
    }
    for name in &names {
        let rel = Path::new(name);
        let escapes = rel.components().any(|c| !matches!(c, Component::Normal(_)));
        // A separator anywhere (a trailing `/` too, which `components` would drop) is not a plain file name.
        if escapes || rel.components().count() != 1 || name.contains(['/', '\\']) {
            return Err(format!(
                "weight_map names shard {name:?}, which is not a plain file name inside the checkpoint folder"
            ));
        }
    }
    if names.is_empty() {
        return Err("weight_map is empty".into());
    }
    Ok(names.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::index_shard_names;

    #[test]
    fn regression_shard_names_with_a_separator_are_refused() {
        // Found by the safetensors_header fuzz target: a trailing slash left one path component.
        for bad in [
            "model-00001.safetensors/",
            "a/model.safetensors",
            "../model.safetensors",
            "/model.safetensors",
            "sub\\model.safetensors",
            "..",
            "",
        ] {
            let index = serde_json::json!({"weight_map": {"w": bad}}).to_string();
            let e = index_shard_names(&index).unwrap_err();
            assert!(e.contains("not a plain file name"), "{bad:?}: {e}");
        }
        let ok = serde_json::json!({"weight_map": {"w": "model-00001-of-00002.safetensors"}});
        assert_eq!(
            index_shard_names(&ok.to_string()).unwrap(),
            ["model-00001-of-00002.safetensors"]
        );
    }
}
