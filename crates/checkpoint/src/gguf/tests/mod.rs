//! The GGUF header reader's tests: every refusal over hand-built headers, and random corruption.

use super::*;

mod writer;
use writer::*;

#[test]
fn a_valid_header_reads_with_its_values_and_tensor_table() {
    let bytes = valid().bytes();
    let h = read_header(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(
        h.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(
        h.get("tokenizer.ggml.tokens"),
        Some(&Value::Array(vec![
            Value::String("a".into()),
            Value::String("b".into()),
            Value::String("<0x0A>".into()),
        ]))
    );
    assert_eq!(h.data_offset as usize, bytes.len() - 48);
    assert_eq!(h.data_offset % 32, 0);
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "b.weight"]);
    assert_eq!(h.tensors[0].n_bytes, 32);
    assert_eq!(h.tensors[1].n_bytes, 16);
    assert_eq!(h.tensors[1].offset, 32);
    assert_eq!(h.tensors[1].shape(), [2, 2]);
    assert_eq!(h.tensors[0].ggml_type.name, "F32");
    assert_eq!(h.file_len, bytes.len() as u64);
}

#[test]
fn every_value_type_reads() {
    let mut nested = 9u32.to_le_bytes().to_vec(); // an array of arrays of u8
    nested.extend(1u64.to_le_bytes());
    nested.extend(0u32.to_le_bytes());
    nested.extend(2u64.to_le_bytes());
    nested.extend([7u8, 9]);
    let g = Gguf::new()
        .entry("u8", typed(0, &[200]))
        .entry("i8", typed(1, &[0xff]))
        .entry("u16", typed(2, &500u16.to_le_bytes()))
        .entry("i16", typed(3, &(-500i16).to_le_bytes()))
        .entry("u32", u32_value(70_000))
        .entry("i32", typed(5, &(-70_000i32).to_le_bytes()))
        .entry("f32", typed(6, &1.5f32.to_le_bytes()))
        .entry("bool", typed(7, &[1]))
        .entry("str", typed(8, &string(b"caf\xc3\xa9\0\0")))
        .entry("lossy", typed(8, &string(b"a\xffb")))
        .entry("u64", typed(10, &u64::MAX.to_le_bytes()))
        .entry("i64", typed(11, &i64::MIN.to_le_bytes()))
        .entry("f64", typed(12, &(-2.25f64).to_le_bytes()))
        .entry("nested", typed(9, &nested));
    let h = g.read().unwrap();
    let want = [
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-1)),
        ("u16", Value::U16(500)),
        ("i16", Value::I16(-500)),
        ("u32", Value::U32(70_000)),
        ("i32", Value::I32(-70_000)),
        ("f32", Value::F32(1.5)),
        ("bool", Value::Bool(true)),
        // Trailing NULs dropped; invalid UTF-8 in a value replaced.
        ("str", Value::String("café".into())),
        ("lossy", Value::String("a\u{fffd}b".into())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(-2.25)),
        (
            "nested",
            Value::Array(vec![Value::Array(vec![Value::U8(7), Value::U8(9)])]),
        ),
    ];
    for (key, value) in want {
        assert_eq!(h.get(key), Some(&value), "{key}");
    }
    assert_eq!(h.alignment, DEFAULT_ALIGNMENT);
}

#[test]
fn version_2_reads_and_others_are_refused_saying_which_are_supported() {
    let mut g = valid();
    g.version = 2;
    assert_eq!(g.read().unwrap().version, 2);
    g.version = 1;
    assert_mentions(&error(&g), &["version 1", "supported: 2 and 3"]);
    g.version = 3u32.swap_bytes();
    assert_mentions(&error(&g), &["supported: 2 and 3", "big-endian"]);
    g.version = 4;
    assert_mentions(&error(&g), &["version 4 is not supported"]);
}

#[test]
fn regression_gguf_alignment_zero_is_an_error_not_a_panic() {
    // candle divides the header's end by the alignment: 0 panicked (exit 101 from `generate`).
    let g = Gguf::new()
        .entry("general.alignment", u32_value(0))
        .tensor("t", &[8], 0, 0)
        .data(32);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::BadAlignment { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["`general.alignment` is 0", "power of two"],
    );
}

#[test]
fn regression_gguf_alignment_must_be_a_bounded_power_of_two_integer() {
    for (value, shown) in [
        (u32_value(3), "is 3"),
        (u32_value(48), "is 48"),
        (u32_value(1 << 21), "is 2097152"),
        (typed(5, &(-32i32).to_le_bytes()), "I32(-32)"),
        (string_value("32"), "the string \"32\""),
        (typed(6, &32f32.to_le_bytes()), "F32(32.0)"),
    ] {
        let g = Gguf::new()
            .entry("general.alignment", value)
            .tensor("t", &[8], 0, 0)
            .data(32);
        assert_mentions(&error(&g), &["`general.alignment`", shown]);
    }
    // Any power of two up to the bound is taken, and offsets and the data section follow it.
    let mut g = Gguf::new()
        .entry("general.alignment", typed(10, &64u64.to_le_bytes()))
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 64)
        .data(80);
    g.align = 64;
    let h = g.read().unwrap();
    assert_eq!((h.alignment, h.data_offset % 64), (64, 0));
    assert_eq!(h.data_offset + 64 + 16, g.bytes().len() as u64);
}

#[test]
fn regression_gguf_huge_string_length_is_refused_before_allocating() {
    // A key whose length is 2^60: allocating it aborted the process.
    let mut bytes = Gguf::new().bytes_with_counts(0, 1);
    bytes.truncate(24);
    bytes.extend((1u64 << 60).to_le_bytes());
    bytes.extend([b'k'; 40]);
    let err = read_header(&bytes).unwrap_err();
    assert!(matches!(err, GgufError::BeyondFile { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &[
            "the length of the key of metadata entry 0",
            "1152921504606846976",
            "40 remain",
        ],
    );
    // The same for a string value, which names its key.
    let mut value = 8u32.to_le_bytes().to_vec();
    value.extend((u64::MAX - 3).to_le_bytes());
    let g = Gguf::new().entry("general.name", value).data(100);
    assert_mentions(
        &error(&g),
        &[
            "the length of the value of metadata key \"general.name\"",
            "remain in the file",
        ],
    );
}

#[test]
fn regression_gguf_huge_array_length_is_refused_before_allocating() {
    for elem_type in [0u32, 8, 9] {
        let mut array = elem_type.to_le_bytes().to_vec();
        array.extend((1u64 << 60).to_le_bytes());
        let g = Gguf::new()
            .entry("tokenizer.ggml.tokens", typed(9, &array))
            .data(1000);
        let err = g.read().unwrap_err();
        assert!(matches!(err, GgufError::BeyondFile { .. }), "{err:?}");
        assert_mentions(
            &err.to_string(),
            &[
                "the array length of metadata key \"tokenizer.ggml.tokens\"",
                "1152921504606846976",
            ],
        );
    }
}

#[test]
fn regression_gguf_arrays_together_are_bounded_even_in_a_file_that_could_hold_them() {
    // Over 16M one-byte elements fit a 17 MB file, but would take half a gigabyte as values.
    let n = MAX_ARRAY_ELEMENTS + 1;
    let mut array = 0u32.to_le_bytes().to_vec();
    array.extend(n.to_le_bytes());
    let g = Gguf::new().entry("big", typed(9, &array)).data(n as usize);
    let err = g.read().unwrap_err();
    assert!(
        matches!(err, GgufError::TooManyArrayElements { .. }),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["metadata key \"big\"", "16777217 elements"],
    );
}

#[test]
fn regression_gguf_huge_tensor_and_entry_counts_are_refused_before_allocating() {
    let g = valid();
    for (tensors, entries, field) in [
        (1_000_000_000, 3, "the tensor count is 1000000000"),
        (
            u64::MAX / 3,
            1 << 40,
            "the metadata entry count is 1099511627776",
        ),
        (2, u64::MAX, "the metadata entry count"),
    ] {
        let err = read_header(&g.bytes_with_counts(tensors, entries)).unwrap_err();
        assert!(matches!(err, GgufError::BeyondFile { .. }), "{err:?}");
        assert_mentions(&err.to_string(), &[field, "remain in the file"]);
    }
    // A count the file could hold is still bounded.
    let bytes = Gguf::new()
        .data(((MAX_TENSORS + 1) * MIN_TENSOR_BYTES) as usize)
        .bytes_with_counts(MAX_TENSORS + 1, 0);
    assert_mentions(
        &read_header(&bytes).unwrap_err().to_string(),
        &["the tensor count is 1048577", "limit"],
    );
}

#[test]
fn regression_gguf_duplicate_metadata_key_is_an_error_not_last_wins() {
    let g = valid().entry("general.architecture", string_value("gpt2"));
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::DuplicateKey { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["\"general.architecture\" appears twice", "entries 0 and 3"],
    );
}

#[test]
fn regression_gguf_duplicate_tensor_name_is_an_error_not_last_wins() {
    let g = valid().tensor("a.weight", &[4], 0, 64).data(80);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::DuplicateTensor { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["tensor \"a.weight\" appears twice", "entries 0 and 2"],
    );
}

#[test]
fn regression_gguf_unaligned_tensor_offset() {
    let g = valid().tensor("c.weight", &[4], 0, 50).data(80);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::Unaligned { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &[
            "tensor \"c.weight\"",
            "offset 50",
            "`general.alignment` (32)",
        ],
    );
}

#[test]
fn regression_gguf_overlapping_tensors() {
    // c (64 bytes from offset 0) covers b (16 bytes at offset 32).
    let g = valid().tensor("c.weight", &[16], 0, 0).data(64);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::Overlap { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["\"a.weight\"", "\"c.weight\"", "overlap"],
    );
    // Adjacent tensors do not overlap.
    valid()
        .tensor("c.weight", &[4], 0, 64)
        .data(80)
        .read()
        .unwrap();
}

#[test]
fn regression_gguf_tensor_past_the_end_of_the_file() {
    let g = valid().data(47);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::PastEnd { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["tensor \"b.weight\"", "truncated"]);
    // An offset so large that start + size overflows is the same error.
    let g = valid().tensor("c.weight", &[4], 0, u64::MAX - 31);
    let err = g.read().unwrap_err();
    assert!(matches!(err, GgufError::PastEnd { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["tensor \"c.weight\""]);
}

#[test]
fn regression_gguf_unknown_ggml_type_names_the_id() {
    for id in [4u32, 31, 40, 1000] {
        let g = valid().tensor("c.weight", &[32], id, 64).data(200);
        let err = g.read().unwrap_err();
        assert!(matches!(err, GgufError::UnknownType { .. }), "{err:?}");
        assert_mentions(
            &err.to_string(),
            &["tensor \"c.weight\"", &format!("unknown ggml type id {id}")],
        );
    }
}

#[test]
fn regression_gguf_bad_magic() {
    let mut bytes = valid().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let err = read_header(&bytes).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["not a GGUF file", "\"GGML\""]);
}

#[test]
fn regression_gguf_truncated_header() {
    let g = valid();
    let full = g.bytes();
    let header_end = g.header_len();
    // Every cut inside the header is an error (never a panic), and cuts inside a fixed-size field say so.
    for cut in 0..header_end {
        let err = read_header(&full[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. } | GgufError::BeyondFile { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
    let err = read_header(&full[..2]).unwrap_err().to_string();
    assert_mentions(&err, &["cut off", "the magic", "ends at byte 2"]);
    // Cut inside b.weight's offset (the last field of the table).
    let err = read_header(&full[..header_end - 3])
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["cut off", "tensor \"b.weight\"'s offset"]);
}

#[test]
fn tensor_entries_are_checked_one_by_one() {
    let cases: [(Gguf, &[&str]); 5] = [
        (
            Gguf::new().tensor("t", &[1, 1, 1, 1, 1], 0, 0),
            &["tensor \"t\" has 5 dimensions", "at most 4"],
        ),
        (
            Gguf::new().tensor("t", &[4, 0], 0, 0),
            &["tensor \"t\"", "dimension 1 is 0"],
        ),
        (
            Gguf::new().tensor("t", &[1 << 32, 1 << 32], 0, 0),
            &["tensor \"t\"", "more elements or bytes than 64 bits"],
        ),
        (
            Gguf::new().tensor("t", &[u64::MAX / 2], 0, 0),
            &["tensor \"t\"", "more elements or bytes than 64 bits"],
        ),
        (
            Gguf::new().tensor("t", &[48, 2], 3, 0),
            &["tensor \"t\"", "rows of 48 elements", "Q4_1 blocks of 32"],
        ),
    ];
    for (g, parts) in &cases {
        assert_mentions(&error(g), parts);
    }
    // A quantized tensor of whole blocks takes blocks times bytes per block.
    let h = Gguf::new()
        .tensor("q", &[64, 3], 3, 0)
        .tensor("k", &[256], 14, 128)
        .data(128 + 210)
        .read()
        .unwrap();
    assert_eq!(h.tensors[0].n_bytes, 2 * 3 * 20);
    assert_eq!(h.tensors[1].n_bytes, 210);
    // Names must be UTF-8.
    let mut bad = tensor("x", &[1], 0, 0);
    bad[8] = 0xff;
    let mut g = Gguf::new().data(32);
    g.tensors.push(bad);
    assert_mentions(
        &error(&g),
        &["the name of tensor entry 0 is not valid UTF-8"],
    );
}

#[test]
fn metadata_values_are_checked() {
    let g = Gguf::new().entry("k", typed(13, &[0; 8]));
    assert_mentions(&error(&g), &["metadata key \"k\": unknown value type 13"]);
    let g = Gguf::new().entry("k", typed(9, &[77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_mentions(
        &error(&g),
        &["the elements of metadata key \"k\": unknown value type 77"],
    );
    let g = Gguf::new().entry("flag", typed(7, &[2]));
    assert_mentions(&error(&g), &["metadata key \"flag\"", "0 or 1, not 2"]);
    // Arrays of arrays nest at most MAX_NESTING deep (and the stack stays small).
    let mut deep = Vec::new();
    for _ in 0..MAX_NESTING + 1 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    let g = Gguf::new().entry("deep", typed(9, &deep)).data(64);
    assert_mentions(&error(&g), &["metadata key \"deep\"", "nest more than 8"]);
    let mut key = string(b"k\xff");
    key.extend(u32_value(1));
    let mut g = Gguf::new();
    g.entries.push(key);
    assert_mentions(
        &error(&g),
        &["the key of metadata entry 0 is not valid UTF-8"],
    );
}

/// A deterministic mutation fuzz: corrupted and cut copies of a valid file are errors or headers, never
/// panics, and whatever reads keeps the checked invariants.
#[test]
fn corrupted_headers_never_panic_and_what_reads_is_consistent() {
    let base = valid()
        .tensor("q", &[64, 2], 3, 64)
        .entry(
            "scores",
            typed(9, &{
                let mut b = 6u32.to_le_bytes().to_vec();
                b.extend(3u64.to_le_bytes());
                b.extend([0u8; 12]);
                b
            }),
        )
        .data(64 + 80)
        .bytes();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            };
        }
        if next() % 8 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        match read_header(&bytes) {
            Ok(h) => {
                ok += 1;
                assert!(h.alignment.is_power_of_two());
                for t in &h.tensors {
                    assert!(t.offset.is_multiple_of(h.alignment));
                    assert!(h.data_offset + t.offset + t.n_bytes <= bytes.len() as u64);
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}
