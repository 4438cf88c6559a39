//! The binary tensor extension: raw little-endian bytes after the JSON header; BYTES
//! elements as a 4-byte little-endian length followed by the bytes.
//!
//! BYTES elements are kept exactly as sent, whatever the bytes; `validate.rs` refuses those
//! that are not UTF-8 before a job goes to a model.

use super::error::ProtocolError;
use super::tensor::TensorData;
use super::types::DataType;

/// Reads a binary tensor's bytes (already cut to its `binary_data_size`).
pub(crate) fn read_binary(
    bytes: &[u8],
    path: &str,
    datatype: DataType,
    shape: &[usize],
    count: usize,
) -> Result<TensorData, ProtocolError> {
    let Some(size) = datatype.element_size() else {
        return read_binary_bytes(bytes, path, count).map(TensorData::Bytes);
    };
    let expected = count.saturating_mul(size);
    if bytes.len() != expected {
        return Err(ProtocolError::BinarySizeMismatch {
            path: path.to_string(),
            datatype,
            shape: shape.to_vec(),
            expected,
            got: bytes.len(),
        });
    }
    Ok(TensorData::Fixed(bytes.to_vec()))
}

fn read_binary_bytes(
    mut bytes: &[u8],
    path: &str,
    count: usize,
) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let framing = |detail: String| ProtocolError::InvalidBytesFraming {
        path: path.to_string(),
        detail,
    };
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        let index = out.len();
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| {
            framing(format!(
                "element {index}: expected a 4-byte length, got {} bytes",
                bytes.len()
            ))
        })?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(framing(format!(
                "element {index}: expected {len} bytes, got {}",
                rest.len()
            )));
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    if out.len() != count {
        return Err(framing(format!(
            "expected {count} elements for its shape, got {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Bytes `data` takes in the binary extension.
pub(crate) fn binary_len(data: &TensorData) -> usize {
    match data {
        TensorData::Fixed(b) => b.len(),
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
    }
}

/// Appends `data` in the binary extension's layout.
pub(crate) fn write_binary(buf: &mut Vec<u8>, data: &TensorData) {
    match data {
        TensorData::Fixed(b) => buf.extend_from_slice(b),
        TensorData::Bytes(v) => {
            for e in v {
                buf.extend_from_slice(&(e.len() as u32).to_le_bytes());
                buf.extend_from_slice(e);
            }
        }
    }
}
