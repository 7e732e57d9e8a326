//! Reads and checks a GGUF file's header: its metadata and its tensor table, never the tensor data.
//!
//! A GGUF file states its own sizes (how many tensors, how long each string and array is, where each tensor's
//! bytes lie) and a hostile or damaged file can state anything. Every count and length here is checked against
//! the bytes that actually remain in the file before anything is allocated for it, so nothing is sized beyond
//! what the file could hold; the table is then checked as a whole (a power-of-two `general.alignment`, unique
//! keys and tensor names, tensor data aligned, inside the file and not overlapping).
//!
//! The layout (little-endian; versions 2 and 3 share it): the magic `GGUF`, a `u32` version, a `u64` tensor
//! count, a `u64` metadata count; the metadata entries (a string key, a `u32` value type, the value); the tensor
//! entries (a string name, a `u32` number of dimensions, that many `u64` dimensions, innermost first, a `u32`
//! ggml type id, a `u64` offset into the data section); zero padding up to a multiple of `general.alignment`;
//! the data section. A string is a `u64` byte length and that many bytes; an array is a `u32` element type, a
//! `u64` element count and the elements.
//!
//! [`read_header`] works on bytes in memory (what a fuzzer calls), [`read_header_from`] on any reader whose
//! length is known, [`read`] on a file path.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::CheckpointError;

mod types;
pub use types::*;

/// The GGUF versions this reader accepts (version 1, llama.cpp's 2023 format with 32-bit lengths, is not).
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// The metadata key that sets the data section's alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest `general.alignment` accepted (real files use 32).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// The most tensors a header may list (real models have hundreds to a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;
/// The most metadata entries a header may hold (real models have tens).
pub const MAX_METADATA_ENTRIES: u64 = 1 << 20;
/// The most array elements all of a header's metadata may hold together (a large vocabulary with its scores,
/// types and merges is about a million). Each element costs far more in memory than its smallest encoding on
/// disk (one byte for a `u8`), so this bounds memory where the file's length alone would not.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// How deep arrays of arrays may nest.
pub const MAX_NESTING: usize = 8;

/// The smallest encodings: a metadata entry (empty key, type, one byte of value) and a tensor entry (empty name,
/// no dimensions, type, offset).
const MIN_ENTRY_BYTES: u64 = 8 + 4 + 1;
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;
/// Lists are preallocated up to this many items at most; beyond it they grow as items are actually read.
const PREALLOCATE: u64 = 4096;

/// Reads and checks the header of a GGUF file held in memory (`bytes` is the whole file, or at least its header
/// with `bytes.len()` then taken as the file's length). Never panics and never allocates beyond what `bytes`
/// could hold (and the constant limits above).
pub fn read_header(bytes: &[u8]) -> Result<Header, GgufError> {
    read_header_from(bytes, bytes.len() as u64)
}

/// Reads and checks a GGUF header from `reader`, positioned at the file's start, where `file_len` is the whole
/// file's length (the tensor data is checked against it but not read). Buffer `reader` (a header holds tens of
/// thousands of small strings).
pub fn read_header_from<R: Read>(reader: R, file_len: u64) -> Result<Header, GgufError> {
    Parser {
        input: Input {
            reader,
            pos: 0,
            len: file_len,
        },
        elements_left: MAX_ARRAY_ELEMENTS,
    }
    .header()
}

/// Reads and checks the header of the GGUF file at `path`; errors name the file.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, e))?
        .len();
    read_header_from(std::io::BufReader::with_capacity(1 << 16, file), len).map_err(|e| match e {
        GgufError::Io(e) => CheckpointError::io(path, e),
        e => CheckpointError::invalid(path, format!("not a readable GGUF file: {e}")),
    })
}

/// The file, read front to back, with the position counted so every length can be checked against what is left.
struct Input<R> {
    reader: R,
    /// Bytes consumed so far; never more than `len`.
    pos: u64,
    len: u64,
}

impl<R: Read> Input<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// Fills `buf`, or says which `field` the file is too short for.
    fn fill(&mut self, buf: &mut [u8], field: impl FnOnce() -> String) -> Result<(), GgufError> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                needed: n,
                offset: self.pos,
                file_len: self.len,
            });
        }
        self.reader.read_exact(buf)?;
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(
        &mut self,
        field: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.fill(&mut b, field)?;
        Ok(b)
    }

    fn u32(&mut self, field: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A length-prefixed string; `strict` refuses invalid UTF-8 (keys, tensor names) where values are repaired.
    fn string(&mut self, field: &dyn Fn() -> String, strict: bool) -> Result<String, GgufError> {
        let len = self.u64(|| format!("the length of {}", field()))?;
        if len > self.remaining() {
            return Err(GgufError::BeyondFile {
                field: format!("the length of {}", field()),
                count: len,
                needed: len,
                remaining: self.remaining(),
            });
        }
        // `len` fits in the file, and the file in memory or on disk; on 32-bit targets it may not fit a usize.
        let n = usize::try_from(len).map_err(|_| GgufError::OverLimit {
            field: format!("the length of {}", field()),
            count: len,
            limit: usize::MAX as u64,
        })?;
        let mut bytes = vec![0u8; n];
        self.fill(&mut bytes, field)?;
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) if strict => Err(GgufError::NotUtf8 { field: field() }),
            Err(e) => Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }
}

struct Parser<R> {
    input: Input<R>,
    /// Of [`MAX_ARRAY_ELEMENTS`], how many array elements the rest of the header may still hold.
    elements_left: u64,
}

impl<R: Read> Parser<R> {
    fn header(mut self) -> Result<Header, GgufError> {
        let magic: [u8; 4] = self.input.array(|| "the magic".into())?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                found: magic.escape_ascii().to_string(),
            });
        }
        let version = self.input.u32(|| "the version".into())?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            let hint = if SUPPORTED_VERSIONS.contains(&version.swap_bytes()) {
                " and this file looks big-endian, which is not supported either"
            } else if version == 1 {
                "; version 1 is llama.cpp's format of 2023: convert the model again"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion {
                found: version,
                hint,
            });
        }
        let tensor_count = self.input.u64(|| "the tensor count".into())?;
        let entry_count = self.input.u64(|| "the metadata entry count".into())?;
        self.counts_fit(entry_count, tensor_count)?;

        let metadata = self.metadata(entry_count)?;
        let alignment = alignment(&metadata)?;
        let tensors = self.tensors(tensor_count, alignment)?;
        let data_offset = self
            .input
            .pos
            .checked_next_multiple_of(alignment)
            .unwrap_or(u64::MAX);
        check_data_ranges(&tensors, data_offset, self.input.len)?;
        Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len: self.input.len,
        })
    }

    /// The stated counts against the bytes left (each entry takes some) and against the limits.
    fn counts_fit(&self, entries: u64, tensors: u64) -> Result<(), GgufError> {
        let remaining = self.input.remaining();
        let entry_bytes = entries.saturating_mul(MIN_ENTRY_BYTES);
        if entry_bytes > remaining {
            return Err(GgufError::BeyondFile {
                field: "the metadata entry count".into(),
                count: entries,
                needed: entry_bytes,
                remaining,
            });
        }
        let all_bytes = tensors
            .saturating_mul(MIN_TENSOR_BYTES)
            .saturating_add(entry_bytes);
        if all_bytes > remaining {
            return Err(GgufError::BeyondFile {
                field: "the tensor count".into(),
                count: tensors,
                needed: all_bytes,
                remaining,
            });
        }
        for (field, count, limit) in [
            ("the metadata entry count", entries, MAX_METADATA_ENTRIES),
            ("the tensor count", tensors, MAX_TENSORS),
        ] {
            if count > limit {
                return Err(GgufError::OverLimit {
                    field: field.into(),
                    count,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn metadata(&mut self, count: u64) -> Result<Vec<(String, Value)>, GgufError> {
        let mut out = Vec::with_capacity(count.min(PREALLOCATE) as usize);
        let mut seen: HashMap<String, u64> = HashMap::with_capacity(out.capacity());
        for i in 0..count {
            let key = self
                .input
                .string(&|| format!("the key of metadata entry {i}"), true)?;
            if let Some(&first) = seen.get(&key) {
                return Err(GgufError::DuplicateKey {
                    key,
                    first,
                    second: i,
                });
            }
            let id = self
                .input
                .u32(|| format!("the value type of metadata key {key:?}"))?;
            let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                field: format!("metadata key {key:?}"),
                id,
            })?;
            let value = self.value(ty, &key, 0)?;
            seen.insert(key.clone(), i);
            out.push((key, value));
        }
        Ok(out)
    }

    /// A value of type `ty` of metadata key `key`, inside `depth` arrays.
    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufError> {
        let field = || format!("the value of metadata key {key:?}");
        let input = &mut self.input;
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(input.array(field)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(input.array(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(input.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(input.array(field)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(input.array(field)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(input.array(field)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(input.array(field)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(input.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(input.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(input.array(field)?)),
            ValueType::Bool => match input.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(GgufError::BadBool {
                        field: field(),
                        byte,
                    })
                }
            },
            ValueType::String => Value::String(input.string(&field, false)?),
            ValueType::Array => self.array(key, depth)?,
        })
    }

    fn array(&mut self, key: &str, depth: usize) -> Result<Value, GgufError> {
        if depth >= MAX_NESTING {
            return Err(GgufError::TooDeep { key: key.into() });
        }
        let id = self
            .input
            .u32(|| format!("the element type of metadata key {key:?}"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            field: format!("the elements of metadata key {key:?}"),
            id,
        })?;
        let len = self
            .input
            .u64(|| format!("the array length of metadata key {key:?}"))?;
        let needed = len.saturating_mul(ty.min_bytes());
        if needed > self.input.remaining() {
            return Err(GgufError::BeyondFile {
                field: format!("the array length of metadata key {key:?}"),
                count: len,
                needed,
                remaining: self.input.remaining(),
            });
        }
        if len > self.elements_left {
            return Err(GgufError::TooManyArrayElements {
                key: key.into(),
                count: len,
            });
        }
        self.elements_left -= len;
        let mut items = Vec::with_capacity(len.min(PREALLOCATE) as usize);
        for j in 0..len {
            let item = match ty {
                // Strings dominate real headers (the vocabulary); each element names its index on error.
                ValueType::String => Value::String(
                    self.input
                        .string(&|| format!("element {j} of metadata key {key:?}"), false)?,
                ),
                ty => self.value(ty, key, depth + 1)?,
            };
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn tensors(&mut self, count: u64, alignment: u64) -> Result<Vec<TensorInfo>, GgufError> {
        let mut out: Vec<TensorInfo> = Vec::with_capacity(count.min(PREALLOCATE) as usize);
        let mut seen: HashMap<String, u64> = HashMap::with_capacity(out.capacity());
        for i in 0..count {
            let name = self
                .input
                .string(&|| format!("the name of tensor entry {i}"), true)?;
            if let Some(&first) = seen.get(&name) {
                return Err(GgufError::DuplicateTensor {
                    name,
                    first,
                    second: i,
                });
            }
            let info = self.tensor(name, alignment)?;
            seen.insert(info.name.clone(), i);
            out.push(info);
        }
        Ok(out)
    }

    /// The rest of tensor `name`'s entry, checked on its own (its data range is checked once all are read).
    fn tensor(&mut self, name: String, alignment: u64) -> Result<TensorInfo, GgufError> {
        let n_dims = self
            .input
            .u32(|| format!("tensor {name:?}'s number of dimensions"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for index in 0..n_dims as usize {
            let d = self
                .input
                .u64(|| format!("tensor {name:?}'s dimension {index}"))?;
            if d == 0 {
                return Err(GgufError::ZeroDim { name, index });
            }
            dims.push(d);
        }
        let id = self.input.u32(|| format!("tensor {name:?}'s ggml type"))?;
        let Some(ggml_type) = GgmlType::from_id(id) else {
            return Err(GgufError::UnknownType { name, id });
        };
        let offset = self.input.u64(|| format!("tensor {name:?}'s offset"))?;
        let Some(elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
            return Err(GgufError::ShapeOverflow { name, dims });
        };
        // ggml quantizes each row on its own, so a row (the innermost dimension) holds whole blocks.
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_size) {
            return Err(GgufError::NotWholeBlocks {
                name,
                row,
                type_name: ggml_type.name,
                block_size: ggml_type.block_size,
            });
        }
        let Some(n_bytes) = (elements / ggml_type.block_size).checked_mul(ggml_type.block_bytes)
        else {
            return Err(GgufError::ShapeOverflow { name, dims });
        };
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::Unaligned {
                name,
                offset,
                alignment,
            });
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}

/// `general.alignment`, checked: an unsigned integer, a power of two, at most [`MAX_ALIGNMENT`].
fn alignment(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
        Some(a) => Err(GgufError::BadAlignment {
            found: a.to_string(),
        }),
        None => Err(GgufError::BadAlignment {
            found: match value {
                Value::String(s) => format!("the string {s:?}"),
                Value::Array(_) => "an array".into(),
                v => format!("{v:?}"),
            },
        }),
    }
}

/// Every tensor's data lies inside the file, and no two overlap.
fn check_data_ranges(
    tensors: &[TensorInfo],
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let start = data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes);
        if end > file_len {
            return Err(GgufError::PastEnd {
                name: t.name.clone(),
                start,
                end,
                file_len,
            });
        }
        ranges.push((start, end, i));
    }
    ranges.sort_unstable();
    // Sorted by start, a range overlaps an earlier one exactly when it starts before the furthest end so far.
    let mut furthest: Option<(u64, u64, usize)> = None;
    for &(start, end, i) in &ranges {
        if let Some((f_start, f_end, f)) = furthest {
            if start < f_end {
                return Err(GgufError::Overlap {
                    first: tensors[f].name.clone(),
                    first_start: f_start,
                    first_end: f_end,
                    second: tensors[i].name.clone(),
                    second_start: start,
                    second_end: end,
                });
            }
        }
        if furthest.is_none_or(|(_, f_end, _)| end > f_end) {
            furthest = Some((start, end, i));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
