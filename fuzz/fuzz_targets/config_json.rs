//! A model's `config.json` from arbitrary bytes: every count is bounded before anything is sized by it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cfg) = vibecheck_engine::ModelConfig::from_hf_json(&json) {
            assert_eq!(cfg.layer_windows.len(), cfg.num_layers);
            let _ = cfg.rotary_dim();
        }
    }
});
