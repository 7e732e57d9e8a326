//! Locating the shared reference outputs and the real fixture model.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `../shared/reference` beside the repository (or `VIBECHECK_REFERENCE_DIR`).
pub fn reference_dir() -> PathBuf {
    if let Some(dir) = std::env::var("VIBECHECK_REFERENCE_DIR")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared").join("reference"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "shared/reference not found above {}; set VIBECHECK_REFERENCE_DIR",
                manifest.display()
            )
        })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The SmolLM2 Q4_1 GGUF fetched by `scripts/fetch-model.sh`.
pub fn smollm_gguf() -> PathBuf {
    let dir = std::env::var("VIBECHECK_MODEL_CACHE")
        .ok()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

/// The GGUF converted once per test run to a float32 Hugging Face folder.
pub fn smollm_f32_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        vibecheck_engine::convert::gguf_to_hf(
            &smollm_gguf(),
            dir.path(),
            vibecheck_engine::DType::F32,
        )
        .unwrap();
        dir
    })
    .path()
    .to_path_buf()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Copies a folder (flat) into `dest`.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
}
