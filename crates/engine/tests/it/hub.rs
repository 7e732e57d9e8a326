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
    assert!(err.contains("`hf download tiny-org/not-there`"), "{err}");

    // A cached model at a revision that is not cached is named as such, not as a missing model.
    let err = Model::load("tiny-org/tiny-llama@v2", &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    for part in [
        "is in the local cache",
        "not at revision `v2`",
        "cached: main",
        "`hf download tiny-org/tiny-llama --revision v2`",
    ] {
        assert!(err.contains(part), "{err:?} should mention {part:?}");
    }
}

/// A hub served on 127.0.0.1 by the test: the listing and resolve routes the real hub answers.
struct FakeHub {
    endpoint: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn serve_hub(id: &'static str, sha: &'static str, dir: std::path::PathBuf) -> FakeHub {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let listing = format!("/api/models/{id}/revision/main");
            let prefix = format!("/{id}/resolve/{sha}/");
            let body: Option<Vec<u8>> = if path == listing {
                let mut files: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                files.push("README.md".into());
                files.push("onnx/model.onnx".into());
                let siblings: Vec<_> = files
                    .iter()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                Some(
                    serde_json::json!({"id": id, "sha": sha, "siblings": siblings})
                        .to_string()
                        .into_bytes(),
                )
            } else if let Some(file) = path.strip_prefix(&prefix) {
                std::fs::read(dir.join(file)).ok()
            } else {
                None
            };
            let _ = match body {
                Some(b) => write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .and_then(|_| stream.write_all(&b)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    FakeHub { endpoint, requests }
}

#[test]
fn hub_ids_not_in_the_cache_are_downloaded() {
    let sha = "fedcba9876543210fedcba9876543210fedcba98";
    let hub = serve_hub(
        "tiny-org/served-llama",
        sha,
        reference_dir().join("tiny/llama"),
    );
    let cache = tempfile::tempdir().unwrap();
    let opts = vibecheck_checkpoint::hub::HubOptions {
        endpoint: hub.endpoint.clone(),
        token: None,
        offline: false,
        caches: vec![cache.path().to_path_buf()],
    };
    let mut files = Vec::new();
    let dir = vibecheck_checkpoint::hub::download("tiny-org/served-llama", &opts, &mut |ev| {
        if let vibecheck_checkpoint::hub::DownloadEvent::File { name, .. } = ev {
            files.push(name);
        }
    })
    .unwrap();
    assert!(dir.ends_with(format!("models--tiny-org--served-llama/snapshots/{sha}")));
    assert!(
        files.contains(&"model.safetensors".to_string())
            && files.contains(&"tokenizer.json".to_string())
    );
    let requested = hub.requests.lock().unwrap().clone();
    assert!(
        !requested
            .iter()
            .any(|p| p.contains("README") || p.contains("onnx")),
        "{requested:?}"
    );
    // The download is an ordinary cache entry now: found offline, and it loads and generates.
    let again =
        vibecheck_checkpoint::hub::resolve_in("tiny-org/served-llama", &opts.caches).unwrap();
    assert_eq!(again, dir);
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(model.config().num_layers, 2);

    let err = vibecheck_checkpoint::hub::download("tiny-org/missing", &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("tiny-org/missing"),
        "{err}"
    );
}
