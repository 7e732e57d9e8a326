//! A GGUF header from arbitrary bytes: an error or a header, never a panic, an abort or a huge allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(header) = vibecheck_checkpoint::gguf::read_header(data) {
        // What reads must be consistent: every tensor's range lies inside the bytes given.
        for t in &header.tensors {
            let _ = t.elements();
        }
    }
});
