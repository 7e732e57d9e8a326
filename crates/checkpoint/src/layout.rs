//! Checkpoint layouts vibecheck does not load directly, recognized and named with the exact command that turns
//! them into one it does: DeepSpeed ZeRO partitions, FSDP sharded state, Megatron shards, loose `.pt` files.

use std::path::{Path, PathBuf};

/// A layout found in a folder that holds no loadable weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// DeepSpeed ZeRO: `global_stepN/*_model_states.pt` (and `*_optim_states.pt`), `latest`, `zero_to_fp32.py`.
    Zero { tag: Option<String>, script: bool },
    /// FSDP's sharded state dict: `pytorch_model_fsdp_0/*.distcp`.
    Fsdp { shards: PathBuf },
    /// Megatron-LM: `mp_rank_00/model_optim_rng.pt` or `iter_N/mp_rank_*`.
    Megatron,
    /// Safetensors files under other names than transformers gives them, without an index.
    LooseSafetensors(Vec<String>),
    /// Plain torch files (`.pt`, `.pth`) that are not `pytorch_model.bin`.
    TorchFiles(Vec<String>),
}

fn names_in(dir: &Path) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().is_dir(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What `dir` holds, when it is one of the layouts this module knows.
pub fn detect(dir: &Path) -> Option<Layout> {
    let entries = names_in(dir);
    let has = |n: &str| entries.iter().any(|(e, _)| e == n);
    let tag = std::fs::read_to_string(dir.join("latest"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(['/', '\\']));
    let zero_folder = entries.iter().any(|(name, is_dir)| {
        *is_dir
            && name.starts_with("global_step")
            && names_in(&dir.join(name))
                .iter()
                .any(|(f, _)| f.ends_with("_model_states.pt") || f.ends_with("_optim_states.pt"))
    });
    if zero_folder || has("zero_to_fp32.py") {
        return Some(Layout::Zero {
            tag,
            script: has("zero_to_fp32.py"),
        });
    }
    if let Some((name, _)) = entries
        .iter()
        .find(|(n, d)| *d && n.starts_with("pytorch_model_fsdp"))
    {
        return Some(Layout::Fsdp {
            shards: dir.join(name),
        });
    }
    if entries.iter().any(|(n, d)| *d && n.starts_with("mp_rank_")) {
        return Some(Layout::Megatron);
    }
    let with = |ext: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(n, d)| !d && n.ends_with(ext))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let loose = with(".safetensors");
    if !loose.is_empty() {
        return Some(Layout::LooseSafetensors(loose));
    }
    // A trainer's own state beside the weights (optimizer, scheduler, RNG) is not a model.
    let trainer_state = |n: &String| {
        [
            "optimizer",
            "scheduler",
            "rng_state",
            "scaler",
            "training_args",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    };
    let mut torch = with(".pt");
    torch.extend(with(".pth"));
    torch.retain(|n| !trainer_state(n));
    if !torch.is_empty() {
        return Some(Layout::TorchFiles(torch));
    }
    None
}

impl Layout {
    /// Whether the layout can never load as it is (rather than being a checkpoint still being written).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Layout::Zero { .. } | Layout::Fsdp { .. } | Layout::Megatron
        )
    }

    /// What the layout is and the command that makes it loadable, for the folder `dir`.
    pub fn message(&self, dir: &Path) -> String {
        let d = dir.display();
        let out = format!("{}-consolidated", dir.display());
        match self {
            Layout::Zero { tag, script } => {
                let tag = tag
                    .as_deref()
                    .map(|t| format!(" (latest: {t})"))
                    .unwrap_or_default();
                let run = if *script {
                    format!("python {d}/zero_to_fp32.py {d} {out} --safe_serialization")
                } else {
                    format!(
                        "python -m deepspeed.utils.zero_to_fp32 {d} {out} --safe_serialization (DeepSpeed's \
                         zero_to_fp32.py)"
                    )
                };
                format!(
                    "this is a DeepSpeed ZeRO checkpoint{tag}: its weights are partitioned across the ranks' \
                     *_model_states.pt / *_optim_states.pt files and cannot be served as they are. Consolidate them \
                     into safetensors with `{run}`, copy config.json and the tokenizer files beside the result, and \
                     point vibecheck at {out}"
                )
            }
            Layout::Fsdp { shards } => format!(
                "this is an FSDP sharded state dict ({}/*.distcp, torch.distributed.checkpoint): consolidate it with \
                 `accelerate merge-weights {} {out}` (or torch.distributed.checkpoint.format_utils.dcp_to_torch_save), \
                 then copy config.json and the tokenizer files beside it and point vibecheck at {out}",
                shards.display(),
                shards.display()
            ),
            Layout::Megatron => format!(
                "this is a Megatron-LM checkpoint (mp_rank_* shards): convert it to a Hugging Face folder with \
                 Megatron's checkpoint converter (tools/checkpoint/convert.py --saver hf, or transformers' \
                 convert_megatron_*_checkpoint.py) and point vibecheck at the result; {d} cannot be served as it is"
            ),
            Layout::LooseSafetensors(files) => format!(
                "found {} but no model.safetensors or model.safetensors.index.json: transformers names a single file \
                 model.safetensors and shards through an index; rename the file, or save with save_pretrained",
                list(files)
            ),
            Layout::TorchFiles(files) => format!(
                "found {} but no model.safetensors or pytorch_model.bin: a torch file of another name may hold \
                 anything; load it in Python and save_pretrained(OUT, safe_serialization=True)",
                list(files)
            ),
        }
    }
}

fn list(files: &[String]) -> String {
    let shown: Vec<&str> = files.iter().take(3).map(String::as_str).collect();
    let more = files.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Why a checkpoint folder has no weights vibecheck can read, naming any layout it recognizes.
pub fn no_weights_message(dir: &Path) -> String {
    match detect(dir) {
        Some(layout) => layout.message(dir),
        None => {
            "no model.safetensors (or its index) and no pytorch_model.bin: save the model with \
                 save_pretrained (safetensors by default) or pass a .gguf file"
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_fsdp_folders_are_named_with_their_commands() {
        let tmp = tempfile::tempdir().unwrap();
        let zero = tmp.path().join("checkpoint-500");
        std::fs::create_dir_all(zero.join("global_step500")).unwrap();
        std::fs::write(zero.join("global_step500/mp_rank_00_model_states.pt"), b"x").unwrap();
        std::fs::write(zero.join("latest"), "global_step500\n").unwrap();
        std::fs::write(zero.join("zero_to_fp32.py"), "#").unwrap();
        let m = no_weights_message(&zero);
        assert!(
            m.contains("DeepSpeed ZeRO") && m.contains("global_step500"),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "python {0}/zero_to_fp32.py {0} {0}-consolidated --safe_serialization",
                zero.display()
            )),
            "{m}"
        );

        let fsdp = tmp.path().join("checkpoint-600");
        std::fs::create_dir_all(fsdp.join("pytorch_model_fsdp_0")).unwrap();
        std::fs::write(fsdp.join("pytorch_model_fsdp_0/__0_0.distcp"), b"x").unwrap();
        let m = no_weights_message(&fsdp);
        assert!(
            m.contains("FSDP") && m.contains("accelerate merge-weights"),
            "{m}"
        );
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(no_weights_message(&empty).contains("no model.safetensors"));
    }
}
