//! Locating what the tests read: the reference outputs (`../shared/reference` or `VIBECHECK_REFERENCE_DIR`), the
//! MT-Bench files (`../shared/data` or `VIBECHECK_SHARED_DATA`) and the real SmolLM2 GGUF fetched by
//! `scripts/fetch-model.sh` (`.cache/models` or `VIBECHECK_MODEL_CACHE`). Each panics with what to set when the
//! thing is missing. `http` is a scripted raw HTTP server for client tests.

pub mod http;

use std::path::{Path, PathBuf};

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The first `shared/<name>` folder above the workspace.
fn shared(name: &str, var: &str) -> PathBuf {
    if let Some(dir) = env_dir(var) {
        return dir;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared").join(name))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "shared/{name} not found above {}; set {var}",
                here.display()
            )
        })
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// Reference outputs of other implementations (tiny checkpoints and what transformers answered).
pub fn reference_dir() -> PathBuf {
    shared("reference", "VIBECHECK_REFERENCE_DIR")
}

/// Real files in published formats (`mt_bench/question.jsonl`, `mt_bench/judge_prompts.jsonl`).
pub fn shared_data() -> PathBuf {
    shared("data", "VIBECHECK_SHARED_DATA")
}

fn smollm_gguf_path() -> PathBuf {
    let dir =
        env_dir("VIBECHECK_MODEL_CACHE").unwrap_or_else(|| workspace_root().join(".cache/models"));
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm_gguf() -> PathBuf {
    let p = smollm_gguf_path();
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

/// The SmolLM2 GGUF if it is there; otherwise `None`, after printing that the calling test is skipped and why.
pub fn smollm_gguf_if_present(test: &str) -> Option<PathBuf> {
    let p = smollm_gguf_path();
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipped {test}: {} is missing (run scripts/fetch-model.sh or set VIBECHECK_MODEL_CACHE)",
            p.display()
        );
        None
    }
}

/// Copies the files of `src` into `dest` (created; flat).
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("create the folder");
    for e in std::fs::read_dir(src).expect("read the folder") {
        let e = e.expect("a folder entry");
        std::fs::copy(e.path(), dest.join(e.file_name())).expect("copy a file");
    }
}
