//! How long reading a GGUF header takes (the real SmolLM2 model's by default: 49k vocabulary strings): candle's
//! reader beside ours, alone and with the conversion into candle's `Content` that loading uses, best and median
//! of 15 runs each, interleaved, the file in the page cache:
//! `cargo run --release -p vibecheck-engine --example gguf_header [FILE]`.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Content;

fn main() {
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        default_model().unwrap_or_else(|| {
            eprintln!("usage: gguf_header FILE (no .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf here)");
            std::process::exit(2)
        })
    });
    let candle = || {
        let file = std::fs::File::open(&path).unwrap();
        // As the engine read it before: a 1 MiB buffer.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        Content::read(&mut reader).unwrap().metadata.len()
    };
    let ours = || {
        vibecheck_checkpoint::gguf::read(&path)
            .unwrap()
            .metadata
            .len()
    };
    let ours_as_candle = || {
        vibecheck_engine::gguf::read_gguf(&path)
            .unwrap()
            .metadata
            .len()
    };
    let runs: [(&str, &dyn Fn() -> usize); 3] = [
        ("candle gguf_file::Content::read", &candle),
        ("vibecheck_checkpoint::gguf::read", &ours),
        ("weights::read_gguf (ours + Content)", &ours_as_candle),
    ];
    let mut times = vec![Vec::new(); runs.len()];
    for (_, f) in &runs {
        f(); // warm the page cache and the allocator
    }
    for _ in 0..15 {
        for (i, (_, f)) in runs.iter().enumerate() {
            let t = Instant::now();
            std::hint::black_box(f());
            times[i].push(t.elapsed());
        }
    }
    println!("{}", path.display());
    for ((name, _), t) in runs.iter().zip(&mut times) {
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:38} best {:7.2} ms   median {:7.2} ms",
            ms(t[0]),
            ms(t[t.len() / 2])
        );
    }
}

/// `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root, or under `VIBECHECK_MODEL_CACHE`.
fn default_model() -> Option<PathBuf> {
    let dir = std::env::var_os("VIBECHECK_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    Some(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.is_file())
}
