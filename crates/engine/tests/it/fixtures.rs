//! Locating the shared reference outputs and the real fixture model.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use vibecheck_test_support::{copy_dir, reference_dir, smollm_gguf};

/// The GGUF converted once per test run to a float32 Hugging Face folder (537 MB), in the target folder's scratch
/// space, removed when the test process exits (a static's destructor never runs, so a `TempDir` held in one
/// would be left behind after every run).
pub fn smollm_f32_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("smollm2-f32-");
        vibecheck_engine::convert::gguf_to_hf(&smollm_gguf(), &dir, vibecheck_engine::DType::F32)
            .unwrap();
        dir
    })
    .clone()
}

/// A new folder under the target's scratch space, removed when the test process exits (each one, even when the
/// setup that made it failed and a later test makes another).
fn scratch_dir(prefix: &str) -> PathBuf {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function with no captured state; it only removes folders.
        assert_eq!(unsafe { libc::atexit(remove_scratch_dirs) }, 0);
    });
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    SCRATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.clone());
    dir
}

static SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_scratch_dirs() {
    let dirs = std::mem::take(&mut *SCRATCH.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks that a GGUF's tokenizer built directly (what loading does) is the tokenizer its `tokenizer.json`
/// document describes (what conversion writes): both serialized, compared byte for byte (vocabulary, merges in
/// rank order, added tokens with their flags, pre-tokenizer, decoder, post-processor). Returns the vocabulary
/// size, so callers can check the file had one.
pub fn assert_direct_tokenizer_is_the_document(gguf: &Path) -> usize {
    use vibecheck_engine::gguf::GgufVocab;
    let mut content = vibecheck_engine::gguf::read_gguf(gguf).unwrap();
    let document = GgufVocab::read(&content).unwrap().to_json();
    let taken = GgufVocab::take(&mut content).unwrap();
    assert!(
        !content.metadata.contains_key("tokenizer.ggml.tokens"),
        "take leaves the vocabulary in the metadata"
    );
    let direct = taken.into_tokenizer().unwrap();
    let via_json: tokenizers::Tokenizer = serde_json::from_value(document).unwrap();
    assert_eq!(
        direct.to_string(false).unwrap(),
        via_json.to_string(false).unwrap(),
        "{}: the tokenizer built directly differs from its tokenizer.json",
        gguf.display()
    );
    direct.get_vocab_size(true)
}

/// A copy of the tiny llama reference checkpoint in a temporary folder (kept while the guard lives).
pub fn tiny_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    copy_dir(&reference_dir().join("tiny/llama"), &dir);
    (tmp, dir)
}

/// The error loading `dir` gives (a checkpoint that loads fails the test).
pub fn load_err(dir: &Path) -> String {
    match vibecheck_engine::Model::load(
        dir.to_str().unwrap(),
        &vibecheck_engine::LoadOptions::default(),
    ) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

pub fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
}
