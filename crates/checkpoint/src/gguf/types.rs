//! What a GGUF header holds once read and checked: metadata values and their types, the ggml tensor types with
//! their block sizes, the tensor table, and the errors that say what is wrong with a file.

use super::{MAX_ALIGNMENT, MAX_ARRAY_ELEMENTS, MAX_DIMS, MAX_NESTING};

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
    pub(super) fn min_bytes(self) -> u64 {
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
    /// `general.alignment`, or [`DEFAULT_ALIGNMENT`](super::DEFAULT_ALIGNMENT).
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
