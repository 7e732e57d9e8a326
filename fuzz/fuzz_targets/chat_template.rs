//! A chat template (the untrusted Jinja a checkpoint ships) compiled and rendered over a small conversation:
//! errors, fuel exhaustion and recursion limits, never a panic or a hang.
#![no_main]

use vibecheck_engine::{ChatMessage, ChatTemplate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(template) = ChatTemplate::new(source, Some("<s>"), Some("</s>")) {
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi {{ there }} <|im_end|>"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "And now?"),
        ];
        let _ = template.render(&messages, true);
    }
});
