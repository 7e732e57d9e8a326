//! A torch state dict's `data.pkl` from arbitrary bytes: interpreted as data, never run; every tensor it yields
//! is contiguous with its shape checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = vibecheck_checkpoint::torch::parse_pickle(data) {
        for t in tensors {
            assert!(!t.storage.is_empty());
            assert!(!t.dtype.is_empty());
        }
    }
});
