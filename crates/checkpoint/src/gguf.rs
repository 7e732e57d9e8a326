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

/// The type of a metadata value, by its id in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
    String,
    Array,
}

impl ValueType {
    /// The type with GGUF id `id`, `None` for an id the format does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes on disk (a string's length, an array's type and length).
    fn min_bytes(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 4 + 8,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// Invalid UTF-8 in a value is replaced (U+FFFD), as llama.cpp's exporters have written such strings; trailing
    /// NUL bytes, which some writers add, are dropped.
    String(String),
    /// Every element has the same type (the file states it once).
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is an integer of any width that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// A ggml tensor type: how many elements a block holds and how many bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    /// The id in the file (ggml's `enum ggml_type`).
    pub id: u32,
    /// ggml's name for it (`Q4_1`, `Q6_K`, ...).
    pub name: &'static str,
    /// Elements per block (1 for plain floats and integers).
    pub block_size: u64,
    /// Bytes per block.
    pub block_bytes: u64,
}

const fn ty(id: u32, name: &'static str, block_size: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_size,
        block_bytes,
    }
}

/// Every type ggml writes into GGUF files. Ids 4 and 5 (Q4_2, Q4_3) and 31 to 33 and 36 to 38 (the repacked
/// Q4_0 and IQ4_NL layouts) were removed from the format and are refused like any unknown id.
pub const GGML_TYPES: &[GgmlType] = &[
    ty(0, "F32", 1, 4),
    ty(1, "F16", 1, 2),
    ty(2, "Q4_0", 32, 2 + 16),
    ty(3, "Q4_1", 32, 2 + 2 + 16),
    ty(6, "Q5_0", 32, 2 + 4 + 16),
    ty(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    ty(8, "Q8_0", 32, 2 + 32),
    ty(9, "Q8_1", 32, 2 + 2 + 32),
    ty(10, "Q2_K", 256, 16 + 64 + 2 + 2),
    ty(11, "Q3_K", 256, 32 + 64 + 12 + 2),
    ty(12, "Q4_K", 256, 2 + 2 + 12 + 128),
    ty(13, "Q5_K", 256, 2 + 2 + 12 + 32 + 128),
    ty(14, "Q6_K", 256, 128 + 64 + 16 + 2),
    ty(15, "Q8_K", 256, 4 + 256 + 32),
    ty(16, "IQ2_XXS", 256, 2 + 64),
    ty(17, "IQ2_XS", 256, 2 + 64 + 8),
    ty(18, "IQ3_XXS", 256, 2 + 96),
    ty(19, "IQ1_S", 256, 2 + 32 + 16),
    ty(20, "IQ4_NL", 32, 2 + 16),
    ty(21, "IQ3_S", 256, 2 + 64 + 8 + 32 + 4),
    ty(22, "IQ2_S", 256, 2 + 64 + 16),
    ty(23, "IQ4_XS", 256, 2 + 2 + 4 + 128),
    ty(24, "I8", 1, 1),
    ty(25, "I16", 1, 2),
    ty(26, "I32", 1, 4),
    ty(27, "I64", 1, 8),
    ty(28, "F64", 1, 8),
    ty(29, "IQ1_M", 256, 32 + 16 + 8),
    ty(30, "BF16", 1, 2),
    ty(34, "TQ1_0", 256, 48 + 4 + 2),
    ty(35, "TQ2_0", 256, 64 + 2),
    ty(39, "MXFP4", 32, 1 + 16),
];

impl GgmlType {
    /// The type with id `id`, `None` for an id ggml does not (or no longer) define.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES.iter().find(|t| t.id == id).copied()
    }
}

/// One entry of the tensor table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// The dimensions as the file stores them: innermost (contiguous) first, as ggml's `ne`. Each is at least 1.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Where the data starts, from the start of the data section (a multiple of the alignment).
    pub offset: u64,
    /// How many bytes the data takes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape outermost first (as Hugging Face and candle write it): `dims` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A checked header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    /// In file order; keys are unique.
    pub metadata: Vec<(String, Value)>,
    /// In file order; names are unique, data ranges inside the file and disjoint.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub alignment: u64,
    /// Where the data section starts in the file: the end of the tensor table rounded up to the alignment.
    pub data_offset: u64,
    /// The length the file was read with.
    pub file_len: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// What is wrong with a GGUF header. Each names the field, key or tensor at fault; the caller adds the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { found: String },
    #[error("GGUF version {found} is not supported (supported: 2 and 3){hint}")]
    UnsupportedVersion { found: u32, hint: &'static str },
    #[error(
        "the header is cut off: {field} needs {needed} bytes at offset {offset}, but the file ends at byte \
         {file_len} (truncated, or still being written?)"
    )]
    Truncated {
        field: String,
        needed: u64,
        offset: u64,
        file_len: u64,
    },
    #[error(
        "{field} is {count}, which needs at least {needed} bytes, but only {remaining} remain in the file \
         (corrupt header?)"
    )]
    BeyondFile {
        field: String,
        count: u64,
        needed: u64,
        remaining: u64,
    },
    #[error("{field} is {count}, more than the limit of {limit} (corrupt header?)")]
    OverLimit {
        field: String,
        count: u64,
        limit: u64,
    },
    #[error(
        "metadata key {key:?}: an array of {count} elements would bring the header's arrays to more than \
         {MAX_ARRAY_ELEMENTS} elements in all (corrupt header?)"
    )]
    TooManyArrayElements { key: String, count: u64 },
    #[error("{field}: unknown value type {id} (GGUF defines 0 to 12)")]
    UnknownValueType { field: String, id: u32 },
    #[error("{field}: a bool must be the byte 0 or 1, not {byte}")]
    BadBool { field: String, byte: u8 },
    #[error("metadata key {key:?}: arrays nest more than {MAX_NESTING} deep")]
    TooDeep { key: String },
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: String },
    #[error(
        "metadata key {key:?} appears twice (entries {first} and {second}); keys must be unique"
    )]
    DuplicateKey {
        key: String,
        first: u64,
        second: u64,
    },
    #[error(
        "`general.alignment` is {found}; it must be a power of two from 1 to {MAX_ALIGNMENT} (an unsigned integer)"
    )]
    BadAlignment { found: String },
    #[error(
        "tensor {name:?} appears twice (tensor entries {first} and {second}); tensor names must be unique"
    )]
    DuplicateTensor {
        name: String,
        first: u64,
        second: u64,
    },
    #[error("tensor {name:?} has {n_dims} dimensions; at most {MAX_DIMS} are supported")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor {name:?}: dimension {index} is 0 (every dimension must be at least 1)")]
    ZeroDim { name: String, index: usize },
    #[error(
        "tensor {name:?}: dimensions {dims:?} hold more elements or bytes than 64 bits can count"
    )]
    ShapeOverflow { name: String, dims: Vec<u64> },
    #[error("tensor {name:?}: unknown ggml type id {id}")]
    UnknownType { name: String, id: u32 },
    #[error(
        "tensor {name:?}: its rows of {row} elements are not a whole number of {type_name} blocks of {block_size}"
    )]
    NotWholeBlocks {
        name: String,
        row: u64,
        type_name: &'static str,
        block_size: u64,
    },
    #[error(
        "tensor {name:?}: its offset {offset} is not a multiple of `general.alignment` ({alignment})"
    )]
    Unaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?}: its data needs bytes {start}..{end} of the file, which has only {file_len} \
         (truncated, or still being written?)"
    )]
    PastEnd {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error(
        "tensors {first:?} (bytes {first_start}..{first_end}) and {second:?} (bytes {second_start}..{second_end}) overlap"
    )]
    Overlap {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },
    #[error("reading the header: {0}")]
    Io(#[from] std::io::Error),
}

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
mod tests {
    use super::*;

    // A small GGUF writer: values and tensor entries encoded by hand, so every field can be made wrong.

    fn string(s: &[u8]) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s);
        b
    }

    /// A value: its type id, then its encoding.
    fn typed(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = id.to_le_bytes().to_vec();
        b.extend(payload);
        b
    }

    fn u32_value(v: u32) -> Vec<u8> {
        typed(4, &v.to_le_bytes())
    }

    fn string_value(s: &str) -> Vec<u8> {
        typed(8, &string(s.as_bytes()))
    }

    fn string_array(items: &[&str]) -> Vec<u8> {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for s in items {
            b.extend(string(s.as_bytes()));
        }
        typed(9, &b)
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut b = string(key.as_bytes());
        b.extend(value);
        b
    }

    /// A tensor entry: `dims` innermost first, as the file stores them.
    fn tensor(name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Vec<u8> {
        let mut b = string(name.as_bytes());
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ggml_type.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b
    }

    struct Gguf {
        version: u32,
        entries: Vec<Vec<u8>>,
        tensors: Vec<Vec<u8>>,
        /// The padding the writer applies before the data section.
        align: usize,
        data: usize,
    }

    impl Gguf {
        fn new() -> Self {
            Gguf {
                version: 3,
                entries: Vec::new(),
                tensors: Vec::new(),
                align: 32,
                data: 0,
            }
        }

        fn entry(mut self, key: &str, value: Vec<u8>) -> Self {
            self.entries.push(entry(key, &value));
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
            self.tensors.push(tensor(name, dims, ggml_type, offset));
            self
        }

        fn data(mut self, n: usize) -> Self {
            self.data = n;
            self
        }

        fn bytes_with_counts(&self, tensors: u64, entries: u64) -> Vec<u8> {
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
        fn header_len(&self) -> usize {
            24 + self
                .entries
                .iter()
                .chain(&self.tensors)
                .map(Vec::len)
                .sum::<usize>()
        }

        fn bytes(&self) -> Vec<u8> {
            self.bytes_with_counts(self.tensors.len() as u64, self.entries.len() as u64)
        }

        fn read(&self) -> Result<Header, GgufError> {
            read_header(&self.bytes())
        }
    }

    /// Two F32 tensors of 8 and 4 elements, the second 32 bytes into the data section.
    fn valid() -> Gguf {
        Gguf::new()
            .entry("general.architecture", string_value("llama"))
            .entry("general.alignment", u32_value(32))
            .entry("tokenizer.ggml.tokens", string_array(&["a", "b", "<0x0A>"]))
            .tensor("a.weight", &[8], 0, 0)
            .tensor("b.weight", &[2, 2], 0, 32)
            .data(48)
    }

    fn error(g: &Gguf) -> String {
        match g.read() {
            Ok(h) => panic!("read but should not: {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_mentions(err: &str, parts: &[&str]) {
        for p in parts {
            assert!(err.contains(p), "error {err:?} should mention {p:?}");
        }
    }

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
}
