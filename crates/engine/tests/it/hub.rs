//! Hub ids through a Hugging Face cache folder laid out by the test itself.

use vibecheck_engine::{LoadOptions, Model};

use crate::fixtures::{copy_dir, reference_dir};

#[test]
fn hub_id_resolves_through_the_cache_and_offline_misses_name_the_paths() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-llama");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    copy_dir(
        &reference_dir().join("tiny/llama"),
        &repo.join("snapshots").join(commit),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();

    let dir =
        vibecheck_checkpoint::hub::resolve_in("tiny-org/tiny-llama", &[cache.path().to_path_buf()])
            .unwrap();
    assert!(dir.ends_with(format!("snapshots/{commit}")));
    let by_commit = vibecheck_checkpoint::hub::resolve_in(
        &format!("tiny-org/tiny-llama@{commit}"),
        &[cache.path().to_path_buf()],
    )
    .unwrap();
    assert_eq!(by_commit, dir);

    // Through the environment, as a user would.
    std::env::set_var("HF_HUB_CACHE", cache.path());
    let model = Model::load("tiny-org/tiny-llama", &LoadOptions::default()).unwrap();
    assert_eq!(model.source.name, "tiny-org/tiny-llama");
    assert_eq!(model.config().num_layers, 2);

    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = Model::load("tiny-org/not-there", &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("models--tiny-org--not-there"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}
