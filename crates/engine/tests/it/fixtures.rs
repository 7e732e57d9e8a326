//! Locating the shared reference outputs and the real fixture model.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use vibecheck_test_support::{copy_dir, reference_dir, smollm_gguf};

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
