//! A safetensors header, and a shard index (`model.safetensors.index.json`), from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vibecheck_checkpoint::safetensors_header::read_header(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(names) = vibecheck_checkpoint::index_shard_names(text) {
            assert!(names.iter().all(|n| !n.contains('/') && n != ".."));
        }
    }
});
