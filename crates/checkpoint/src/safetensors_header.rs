//! Checks a safetensors header against its file before anything is memory-mapped.
//!
//! A trainer writes shards while we watch, and users hand us files from anywhere: a header length beyond the
//! file, offsets that overlap or leave the file, or an unknown dtype must become an error naming the file and
//! the tensor, never a panic or an allocation sized by the file's own claims.

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

/// Reads and validates the header of `path`.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, e))?
        .len();
    let bad = |m: String| CheckpointError::invalid(path, m);
    if file_len < 8 {
        return Err(bad(format!(
            "safetensors file is only {file_len} bytes, shorter than its 8-byte header length (truncated, or still being written?)"
        )));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| CheckpointError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "safetensors header claims {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte limit (corrupt file?)"
        )));
    }
    if 8 + header_len > file_len {
        return Err(bad(format!(
            "safetensors header claims {header_len} bytes but the file has only {} after the length (truncated, or still being written?)",
            file_len - 8
        )));
    }
    let mut raw = vec![0u8; header_len as usize];
    file.read_exact(&mut raw)
        .map_err(|e| CheckpointError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| bad(format!("safetensors header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("safetensors header is not a JSON object".into()))?;
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(obj.len().min(1 << 16));
    let mut metadata = serde_json::Map::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            if let Some(m) = entry.as_object() {
                metadata = m.clone();
            }
            continue;
        }
        tensors.push(parse_entry(name, entry).map_err(&bad)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut expected_begin = 0u64;
    for t in &tensors {
        if t.begin != expected_begin {
            return Err(bad(if t.begin < expected_begin {
                format!(
                    "tensor {:?} overlaps the tensor before it (offsets {}..{})",
                    t.name, t.begin, t.end
                )
            } else {
                format!(
                    "tensor {:?} leaves a gap before offset {} (corrupt header)",
                    t.name, t.begin
                )
            }));
        }
        if t.end > data_len {
            return Err(bad(format!(
                "tensor {:?} ends at byte {} of the data section, which has only {data_len} bytes (truncated, or still being written?)",
                t.name, t.end
            )));
        }
        expected_begin = t.end;
    }
    if expected_begin != data_len {
        return Err(bad(format!(
            "the data section has {data_len} bytes but the tensors cover {expected_begin} (corrupt or mixed file)"
        )));
    }
    Ok(Header {
        tensors,
        metadata,
        file_len,
        data_start: 8 + header_len,
    })
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
