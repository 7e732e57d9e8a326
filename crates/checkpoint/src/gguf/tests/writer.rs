//! A small GGUF writer for the reader's tests: values and tensor entries encoded by hand, so every field can be
//! made wrong, and the assertions the tests share.

use super::super::*;

pub(super) fn string(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s);
    b
}

/// A value: its type id, then its encoding.
pub(super) fn typed(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend(payload);
    b
}

pub(super) fn u32_value(v: u32) -> Vec<u8> {
    typed(4, &v.to_le_bytes())
}

pub(super) fn string_value(s: &str) -> Vec<u8> {
    typed(8, &string(s.as_bytes()))
}

pub(super) fn string_array(items: &[&str]) -> Vec<u8> {
    let mut b = 8u32.to_le_bytes().to_vec();
    b.extend((items.len() as u64).to_le_bytes());
    for s in items {
        b.extend(string(s.as_bytes()));
    }
    typed(9, &b)
}

pub(super) fn entry(key: &str, value: &[u8]) -> Vec<u8> {
    let mut b = string(key.as_bytes());
    b.extend(value);
    b
}

/// A tensor entry: `dims` innermost first, as the file stores them.
pub(super) fn tensor(name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name.as_bytes());
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ggml_type.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b
}

pub(super) struct Gguf {
    pub(super) version: u32,
    pub(super) entries: Vec<Vec<u8>>,
    pub(super) tensors: Vec<Vec<u8>>,
    /// The padding the writer applies before the data section.
    pub(super) align: usize,
    pub(super) data: usize,
}

impl Gguf {
    pub(super) fn new() -> Self {
        Gguf {
            version: 3,
            entries: Vec::new(),
            tensors: Vec::new(),
            align: 32,
            data: 0,
        }
    }

    pub(super) fn entry(mut self, key: &str, value: Vec<u8>) -> Self {
        self.entries.push(entry(key, &value));
        self
    }

    pub(super) fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
        self.tensors.push(tensor(name, dims, ggml_type, offset));
        self
    }

    pub(super) fn data(mut self, n: usize) -> Self {
        self.data = n;
        self
    }

    pub(super) fn bytes_with_counts(&self, tensors: u64, entries: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(entries.to_le_bytes());
        for e in &self.entries {
            b.extend(e);
        }
        for t in &self.tensors {
            b.extend(t);
        }
        b.resize(b.len().next_multiple_of(self.align), 0);
        b.resize(b.len() + self.data, 0);
        b
    }

    /// Where the tensor table ends (before the padding).
    pub(super) fn header_len(&self) -> usize {
        24 + self
            .entries
            .iter()
            .chain(&self.tensors)
            .map(Vec::len)
            .sum::<usize>()
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        self.bytes_with_counts(self.tensors.len() as u64, self.entries.len() as u64)
    }

    pub(super) fn read(&self) -> Result<Header, GgufError> {
        read_header(&self.bytes())
    }
}

/// Two F32 tensors of 8 and 4 elements, the second 32 bytes into the data section.
pub(super) fn valid() -> Gguf {
    Gguf::new()
        .entry("general.architecture", string_value("llama"))
        .entry("general.alignment", u32_value(32))
        .entry("tokenizer.ggml.tokens", string_array(&["a", "b", "<0x0A>"]))
        .tensor("a.weight", &[8], 0, 0)
        .tensor("b.weight", &[2, 2], 0, 32)
        .data(48)
}

pub(super) fn error(g: &Gguf) -> String {
    match g.read() {
        Ok(h) => panic!("read but should not: {h:?}"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
}
