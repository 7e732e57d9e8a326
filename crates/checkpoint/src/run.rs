//! Training run folders: the checkpoints a trainer writes into one output folder (`checkpoint-500`,
//! `step_1000`, `global_step1500`, …), their steps, and whether each is complete enough to load.

use std::path::{Path, PathBuf};

use crate::{safetensors_header, CheckpointError};

/// One checkpoint found in a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCheckpoint {
    /// The sub-folder's name (`checkpoint-500`).
    pub name: String,
    pub path: PathBuf,
    /// From `trainer_state.json` (`global_step`) when present, else from the folder name.
    pub step: Option<u64>,
}

/// The training step (or epoch) a checkpoint folder name encodes, if it follows a trainer's convention:
/// transformers' `checkpoint-500`, `step_1000`, DeepSpeed's `global_step1500`, Megatron's `iter_0001000`,
/// torchtune's `epoch_2`, and a merged copy beside an adapter (`checkpoint-500-merged`).
pub fn step_from_name(name: &str) -> Option<u64> {
    let name = name
        .strip_suffix("-merged")
        .or_else(|| name.strip_suffix("_merged"))
        .unwrap_or(name);
    let digits = [
        "checkpoint-",
        "checkpoint_",
        "step_",
        "step-",
        "global_step",
        "step",
        "iter_",
        "iter-",
        "epoch_",
        "epoch-",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Sub-folders of a run that hold a checkpoint but whose names give no step (`final`, `best_model`): they are
/// not watched, and the caller says so rather than leaving them out in silence.
pub fn unnamed_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            p.is_dir()
                && !name.starts_with('.')
                && !name.starts_with("tmp")
                && step_from_name(&name).is_none()
                && ["config.json", "adapter_config.json", "model.safetensors"]
                    .iter()
                    .any(|f| p.join(f).is_file())
        })
        .collect();
    out.sort();
    out
}

fn step_from_trainer_state(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("global_step")?.as_u64()
}

/// A run's name: its folder's own name (after resolving `.`, `..` and links).
pub fn run_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string())
}

/// Total bytes of the files directly in `dir` (0 when it cannot be read): two equal looks mean it stopped growing.
pub fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Whether `dir` looks like a run folder: it has no `config.json` itself, and at least one checkpoint sub-folder.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.is_dir()
        && !dir.join("config.json").is_file()
        && list(dir).map(|c| !c.is_empty()).unwrap_or(false)
}

/// The checkpoint sub-folders of a run, sorted by step (folders being written, `tmp-*`, are left out).
pub fn list(dir: &Path) -> Result<Vec<RunCheckpoint>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() || name.starts_with("tmp") || name.starts_with('.') {
            continue;
        }
        let Some(name_step) = step_from_name(&name) else {
            continue;
        };
        let step = step_from_trainer_state(&path).or(Some(name_step));
        out.push(RunCheckpoint { name, path, step });
    }
    out.sort_by(|a, b| a.step.cmp(&b.step).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// Whether a checkpoint folder is complete: `config.json` and a tokenizer present, every shard the index names
/// present, and every safetensors header consistent with its file size (a shard still being written is not).
pub fn is_complete(dir: &Path) -> Result<(), CheckpointError> {
    if dir.join("adapter_config.json").is_file() && !dir.join("config.json").is_file() {
        // A LoRA adapter: its description and its weights.
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            return Err(CheckpointError::invalid(
                dir,
                "an adapter folder without adapter_model.safetensors yet",
            ));
        }
        crate::adapter_config(dir)?;
        safetensors_header::read(&weights)?;
        return Ok(());
    }
    if !dir.join("config.json").is_file() {
        return Err(CheckpointError::invalid(
            dir,
            match crate::layout::detect(dir) {
                Some(layout) => layout.message(dir),
                None => "no config.json yet".to_string(),
            },
        ));
    }
    // Every weight file's header is checked against its size as it is listed.
    crate::shard_files(dir)?;
    Ok(())
}

/// The files whose bytes decide a checkpoint's answers: weights, config, tokenizer, chat template, generation
/// settings. Optimizer and scheduler states, RNG states and `trainer_state.json` are left out.
fn answer_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CheckpointError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".safetensors")
                || (name.ends_with(".bin") && name.starts_with("pytorch_model"))
                || name.ends_with(".gguf")
                || name.ends_with(".jinja")
                || (name.ends_with(".json") && name != "trainer_state.json")
                || name == "tokenizer.model"
        })
        .collect();
    files.sort();
    Ok(files)
}

/// SHA-256 (hex) over the names and bytes of a checkpoint's answer-deciding files (or of one GGUF file): the same
/// weights give the same hash wherever they are copied; a folder rewritten with new weights gets a new one.
pub fn content_hash(path: &Path) -> Result<String, CheckpointError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for file in answer_files(path)? {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        let mut f = std::fs::File::open(&file).map_err(|e| CheckpointError::io(&file, e))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| CheckpointError::io(&file, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_follows_the_weights_not_the_trainer_state() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        std::fs::write(d.join("model.safetensors"), b"weights-1").unwrap();
        std::fs::write(d.join("trainer_state.json"), "{\"global_step\": 1}").unwrap();
        std::fs::write(d.join("optimizer.pt"), b"adam").unwrap();
        let h1 = content_hash(d).unwrap();
        std::fs::write(d.join("trainer_state.json"), "{\"global_step\": 2}").unwrap();
        std::fs::write(d.join("optimizer.pt"), b"adam2").unwrap();
        assert_eq!(content_hash(d).unwrap(), h1);
        std::fs::write(d.join("model.safetensors"), b"weights-2").unwrap();
        assert_ne!(content_hash(d).unwrap(), h1);
        assert_eq!(h1.len(), 64);
    }

    #[test]
    fn steps_from_trainer_folder_names() {
        assert_eq!(step_from_name("checkpoint-500"), Some(500));
        assert_eq!(step_from_name("step_1000"), Some(1000));
        assert_eq!(step_from_name("global_step1500"), Some(1500));
        assert_eq!(step_from_name("runs"), None);
        assert_eq!(step_from_name("checkpoint-final"), None);
        assert_eq!(step_from_name("iter_0001000"), Some(1000));
        assert_eq!(step_from_name("epoch_2"), Some(2));
        assert_eq!(step_from_name("checkpoint-500-merged"), Some(500));
        assert_eq!(step_from_name("checkpoint-+5"), None);
    }

    #[test]
    fn lists_checkpoints_by_step_and_skips_temporary_folders() {
        let tmp = tempfile::tempdir().unwrap();
        for d in [
            "checkpoint-20",
            "checkpoint-3",
            "tmp-checkpoint-40",
            "logs",
            "global_step7",
        ] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        std::fs::write(
            tmp.path().join("global_step7/trainer_state.json"),
            r#"{"global_step": 9}"#,
        )
        .unwrap();
        let names: Vec<(String, Option<u64>)> = list(tmp.path())
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.step))
            .collect();
        assert_eq!(
            names,
            vec![
                ("checkpoint-3".into(), Some(3)),
                ("global_step7".into(), Some(9)),
                ("checkpoint-20".into(), Some(20))
            ]
        );
        assert!(is_run_dir(tmp.path()));
    }
}
