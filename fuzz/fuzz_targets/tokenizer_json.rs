//! A `tokenizer.json` document from arbitrary bytes; a tokenizer that loads must also encode and decode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tokenizer) = vibecheck_engine::tokenizer::tokenizer_from_json(text) {
        if let Ok(encoding) = tokenizer.encode("Hello, world! 123 ünïcödé", true) {
            let _ = tokenizer.decode(encoding.get_ids(), false);
        }
    }
});
