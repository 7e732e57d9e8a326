//! A checked GGUF header ([`vibecheck_checkpoint::gguf`]) as candle's `gguf_file::Content`, which the loader, the
//! tokenizer and the converter read. candle's own reader is not used: it divides by `general.alignment` (0
//! panicked) and sizes what it allocates by the file's claims.

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use vibecheck_checkpoint::gguf::{self, GgmlType, Header};

/// candle's type for a ggml type, `None` for those candle cannot hold (the IQ, TQ and MXFP4 families, integers,
/// F64).
fn candle_dtype(t: GgmlType) -> Option<GgmlDType> {
    Some(match t.id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

fn candle_value(v: gguf::Value) -> Value {
    match v {
        gguf::Value::U8(x) => Value::U8(x),
        gguf::Value::I8(x) => Value::I8(x),
        gguf::Value::U16(x) => Value::U16(x),
        gguf::Value::I16(x) => Value::I16(x),
        gguf::Value::U32(x) => Value::U32(x),
        gguf::Value::I32(x) => Value::I32(x),
        gguf::Value::U64(x) => Value::U64(x),
        gguf::Value::I64(x) => Value::I64(x),
        gguf::Value::F32(x) => Value::F32(x),
        gguf::Value::F64(x) => Value::F64(x),
        gguf::Value::Bool(x) => Value::Bool(x),
        gguf::Value::String(x) => Value::String(x),
        gguf::Value::Array(xs) => Value::Array(xs.into_iter().map(candle_value).collect()),
    }
}

/// The header as candle's `Content`; a tensor of a type candle cannot hold is an error naming it.
pub(crate) fn to_content(header: Header) -> Result<Content, String> {
    let magic = match header.version {
        2 => VersionedMagic::GgufV2,
        _ => VersionedMagic::GgufV3,
    };
    let mut tensor_infos = std::collections::HashMap::with_capacity(header.tensors.len());
    for t in header.tensors {
        let ggml_dtype = candle_dtype(t.ggml_type).ok_or_else(|| {
            format!(
                "tensor {:?} is {} (ggml type {}), which this engine cannot load (it loads F32, F16, BF16, \
                 Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q2_K to Q8_K)",
                t.name, t.ggml_type.name, t.ggml_type.id
            )
        })?;
        let dims = t
            .shape()
            .into_iter()
            .map(usize::try_from)
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| format!("tensor {:?} is too large for this machine", t.name))?;
        tensor_infos.insert(
            t.name,
            TensorInfo {
                ggml_dtype,
                shape: dims.into(),
                offset: t.offset,
            },
        );
    }
    Ok(Content {
        magic,
        metadata: header
            .metadata
            .into_iter()
            .map(|(k, v)| (k, candle_value(v)))
            .collect(),
        tensor_infos,
        tensor_data_offset: header.data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our table's block sizes and bytes per block are candle's, for every type candle holds.
    #[test]
    fn the_ggml_type_table_agrees_with_candle() {
        let mut mapped = 0;
        for t in gguf::GGML_TYPES {
            if let Some(d) = candle_dtype(*t) {
                assert_eq!(d.block_size() as u64, t.block_size, "{}", t.name);
                assert_eq!(d.type_size() as u64, t.block_bytes, "{}", t.name);
                assert_eq!(format!("{d:?}").replace('_', ""), t.name.replace('_', ""));
                mapped += 1;
            }
        }
        assert_eq!(mapped, 15);
    }
}
