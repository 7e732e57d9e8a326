//! Checks a safetensors header against its file before anything is memory-mapped.
//!
//! A trainer writes shards while we watch, and users hand us files from anywhere: a header length beyond the
//! file, offsets that overlap or leave the file, a tensor name given twice, or an unknown dtype must become an
//! error naming the file and the tensor, never a panic or an allocation sized by the file's own claims.

use std::io::Read;
use std::path::Path;

use crate::CheckpointError;

/// Headers larger than this are refused (real ones are a few hundred kilobytes at most).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One tensor entry of a validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub begin: u64,
    pub end: u64,
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    pub tensors: Vec<TensorEntry>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Size of the whole file.
    pub file_len: u64,
    /// Where the data section starts (tensor offsets count from here).
    pub data_start: u64,
}

/// Bytes per element of a safetensors dtype name, `None` for names we do not know.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// What is wrong with a safetensors header. The caller adds the file.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error(
        "safetensors file is only {file_len} bytes, shorter than its 8-byte header length (truncated, or still being written?)"
    )]
    TooShort { file_len: u64 },
    #[error(
        "safetensors header claims {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte limit (corrupt file?)"
    )]
    HeaderTooLarge { header_len: u64 },
    #[error(
        "safetensors header claims {header_len} bytes but the file has only {available} after the length (truncated, or still being written?)"
    )]
    HeaderBeyondFile { header_len: u64, available: u64 },
    #[error("safetensors header is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("safetensors header is not a JSON object")]
    NotObject,
    #[error(
        "tensor {name:?} appears twice in the safetensors header (a JSON reader would silently keep the last)"
    )]
    DuplicateTensor { name: String },
    /// A tensor entry that does not describe a tensor (no dtype, a shape that is not its byte range, ...).
    #[error("{0}")]
    BadEntry(String),
    #[error("tensor {name:?} overlaps the tensor before it (offsets {begin}..{end})")]
    Overlap { name: String, begin: u64, end: u64 },
    #[error("tensor {name:?} leaves a gap before offset {begin} (corrupt header)")]
    Gap { name: String, begin: u64 },
    #[error(
        "tensor {name:?} ends at byte {end} of the data section, which has only {data_len} bytes (truncated, or still being written?)"
    )]
    PastEnd {
        name: String,
        end: u64,
        data_len: u64,
    },
    #[error(
        "the data section has {data_len} bytes but the tensors cover {covered} (corrupt or mixed file)"
    )]
    Uncovered { data_len: u64, covered: u64 },
    #[error("reading the header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and validates the header of `path`.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, e))?
        .len();
    read_header_from(file, file_len).map_err(|e| match e {
        SafetensorsError::Io(e) => CheckpointError::io(path, e),
        e => CheckpointError::invalid(path, e.to_string()),
    })
}

/// Validates the header of a safetensors file held in memory (`bytes` is the whole file, its length the file's;
/// what a fuzzer calls). Never panics; the header is read only once its stated length is known to be at most
/// [`MAX_HEADER_BYTES`] and inside the file.
pub fn read_header(bytes: &[u8]) -> Result<Header, SafetensorsError> {
    read_header_from(bytes, bytes.len() as u64)
}

/// Validates the header read from `reader`, positioned at the file's start, where `file_len` is the whole file's
/// length (the tensor data is checked against it, not read).
pub fn read_header_from<R: Read>(mut reader: R, file_len: u64) -> Result<Header, SafetensorsError> {
    if file_len < 8 {
        return Err(SafetensorsError::TooShort { file_len });
    }
    let mut len_bytes = [0u8; 8];
    reader.read_exact(&mut len_bytes)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge { header_len });
    }
    if header_len > file_len - 8 {
        return Err(SafetensorsError::HeaderBeyondFile {
            header_len,
            available: file_len - 8,
        });
    }
    let mut raw = vec![0u8; header_len as usize];
    reader.read_exact(&mut raw)?;
    let Entries(entries) = serde_json::from_slice(&raw).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => SafetensorsError::NotObject,
        _ => SafetensorsError::NotJson(e),
    })?;
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    if let Some((name, _)) = entries.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(SafetensorsError::DuplicateTensor { name: name.clone() });
    }
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut metadata = serde_json::Map::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if let serde_json::Value::Object(m) = entry {
                metadata = m;
            }
            continue;
        }
        tensors.push(parse_entry(&name, &entry).map_err(SafetensorsError::BadEntry)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut expected_begin = 0u64;
    for t in &tensors {
        if t.begin < expected_begin {
            return Err(SafetensorsError::Overlap {
                name: t.name.clone(),
                begin: t.begin,
                end: t.end,
            });
        }
        if t.begin > expected_begin {
            return Err(SafetensorsError::Gap {
                name: t.name.clone(),
                begin: t.begin,
            });
        }
        if t.end > data_len {
            return Err(SafetensorsError::PastEnd {
                name: t.name.clone(),
                end: t.end,
                data_len,
            });
        }
        expected_begin = t.end;
    }
    if expected_begin != data_len {
        return Err(SafetensorsError::Uncovered {
            data_len,
            covered: expected_begin,
        });
    }
    Ok(Header {
        tensors,
        metadata,
        file_len,
        data_start: 8 + header_len,
    })
}

/// The header's entries in file order, duplicates kept (a JSON map would keep only the last of a name).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn parse_entry(name: &str, entry: &serde_json::Value) -> Result<TensorEntry, String> {
    let dtype = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| format!("tensor {name:?} has no `dtype`"))?;
    let size = dtype_size(dtype).ok_or_else(|| {
        format!("tensor {name:?} has unknown dtype {dtype:?} (known: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2)")
    })?;
    let shape = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| format!("tensor {name:?} has no `shape` array"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            format!("tensor {name:?} has a shape entry that is not a non-negative integer")
        })?;
    let offsets = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or_else(|| format!("tensor {name:?} needs `data_offsets` as two integers"))?;
    let (begin, end) = offsets;
    if end < begin {
        return Err(format!(
            "tensor {name:?} has data_offsets that run backwards ({begin}..{end})"
        ));
    }
    let elems = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor {name:?} has a shape whose size overflows"))?;
    let bytes = elems
        .checked_mul(size)
        .ok_or_else(|| format!("tensor {name:?} has a shape whose size overflows"))?;
    if bytes != end - begin {
        return Err(format!(
            "tensor {name:?} of shape {shape:?} and dtype {dtype} needs {bytes} bytes but its data_offsets span {}",
            end - begin
        ));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape,
        begin,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file: the length, the header text as given (so keys can repeat), `data_len` zero bytes.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; data_len]);
        bytes
    }

    #[test]
    fn a_valid_header_reads() {
        let h = read_header(&file(
            r#"{"__metadata__": {"format": "pt"}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
                "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}"#,
            16,
        ))
        .unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.file_len - h.data_start, 16);
    }

    #[test]
    fn regression_safetensors_duplicate_tensor_name_is_an_error_not_last_wins() {
        // With the last "a" kept the first one's bytes were merely a "gap"; now the name itself is the fault.
        let bytes = file(
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#,
            16,
        );
        let err = read_header(&bytes).unwrap_err();
        assert!(
            matches!(err, SafetensorsError::DuplicateTensor { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("tensor \"a\" appears twice"),
            "{err}"
        );
        // Through the file API, the file is named too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("\"a\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn regression_safetensors_header_size_is_bounded_before_allocating() {
        // A length just over the limit in a file far shorter than it: the limit is the error, nothing allocated.
        let mut bytes = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let err = read_header(&bytes).unwrap_err();
        assert!(
            matches!(err, SafetensorsError::HeaderTooLarge { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("limit"), "{err}");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        assert!(matches!(
            read_header(&bytes).unwrap_err(),
            SafetensorsError::HeaderBeyondFile {
                header_len: 1000,
                available: 2
            }
        ));
        assert!(matches!(
            read_header(&[1, 0, 0]).unwrap_err(),
            SafetensorsError::TooShort { file_len: 3 }
        ));
    }

    #[test]
    fn not_json_and_not_an_object_are_told_apart() {
        assert!(matches!(
            read_header(&file("{\"a\": ", 0)).unwrap_err(),
            SafetensorsError::NotJson(_)
        ));
        assert!(matches!(
            read_header(&file("[1, 2]", 0)).unwrap_err(),
            SafetensorsError::NotObject
        ));
    }
}
