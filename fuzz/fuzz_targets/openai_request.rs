//! An OpenAI request body (chat or text completion, chosen by the first byte) through the server's parsing and
//! validation, as the handlers run it before any model is involved.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if let Err(e) = vibecheck_server::validate_body(kind & 1 == 0, body) {
        assert!(e.status.is_client_error(), "{e:?}");
    }
});
