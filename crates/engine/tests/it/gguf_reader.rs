//! Our GGUF header reader against candle's on the real model: the same metadata and the same tensor table.

use candle_core::quantized::gguf_file::{Content, Value};

/// Values compared through their debug form (candle's `Value` has no `PartialEq`); floats print exactly.
fn same(a: &Value, b: &Value) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn the_real_model_reads_as_candle_reads_it() {
    let Some(path) =
        vibecheck_test_support::smollm_gguf_if_present("the_real_model_reads_as_candle_reads_it")
    else {
        return;
    };
    let ours = vibecheck_engine::gguf::read_gguf(&path).unwrap();
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let theirs = Content::read(&mut reader).unwrap();

    assert_eq!(ours.magic, theirs.magic);
    assert_eq!(ours.tensor_data_offset, theirs.tensor_data_offset);
    let mut keys: Vec<&String> = ours.metadata.keys().collect();
    let mut their_keys: Vec<&String> = theirs.metadata.keys().collect();
    keys.sort();
    their_keys.sort();
    assert_eq!(keys, their_keys);
    assert!(keys.len() > 20, "{} keys", keys.len());
    for key in keys {
        assert!(
            same(&ours.metadata[key], &theirs.metadata[key]),
            "metadata {key:?} differs"
        );
    }
    let tokens = ours.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    assert_eq!(tokens.len(), 49152);

    assert_eq!(ours.tensor_infos.len(), theirs.tensor_infos.len());
    assert_eq!(ours.tensor_infos.len(), 272);
    for (name, t) in &theirs.tensor_infos {
        let o = &ours.tensor_infos[name];
        assert_eq!(
            (o.ggml_dtype, o.shape.dims(), o.offset),
            (t.ggml_dtype, t.shape.dims(), t.offset),
            "tensor {name:?}"
        );
    }
}
