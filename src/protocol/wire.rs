//! The tensor objects shared by requests (`inputs`) and results (`outputs`): their serde
//! shape on the way in, and a direct JSON writer on the way out.
//!
//! A tensor's `data` is captured as raw JSON text and only parsed once its datatype and
//! shape are known; binary tensors take their bytes from the body after the JSON header,
//! in order, and the sizes must add up exactly.

use super::binary::{binary_len, read_binary, write_binary};
use super::data::parse_json_data;
use super::data_write::{json_size_hint, write_json_data, write_str};
use super::error::ProtocolError;
use super::tensor::{checked_count, Tensor};
use super::types::DataType;
use serde::Deserialize;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::value::RawValue;

/// A tensor object as it appears on the wire, before its data is parsed.
#[derive(Deserialize)]
pub(crate) struct RawTensor<'a> {
    name: String,
    /// Borrowed from the body unless it has escapes: only parsed, never kept.
    #[serde(borrow)]
    datatype: std::borrow::Cow<'a, str>,
    shape: Vec<i64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<TensorParams>,
}

#[derive(Deserialize, Default)]
struct TensorParams {
    #[serde(default)]
    binary_data_size: Option<u64>,
}

/// Splits a body into its JSON header and the binary data that follows it.
pub(crate) fn split_body(
    body: &[u8],
    binary_header_len: Option<usize>,
) -> Result<(&[u8], Option<&[u8]>), ProtocolError> {
    match binary_header_len {
        None => Ok((body, None)),
        Some(n) if n > body.len() => Err(ProtocolError::HeaderLengthOutOfBounds {
            header_len: n,
            body_len: body.len(),
        }),
        Some(n) => Ok((&body[..n], Some(&body[n..]))),
    }
}

/// Parses `raw` tensors (`kind` is `"inputs"` or `"outputs"`, for error paths), taking
/// binary data from `binary` in order.
pub(crate) fn decode_tensors(
    raw: Vec<RawTensor<'_>>,
    kind: &str,
    binary: Option<&[u8]>,
) -> Result<Vec<Tensor>, ProtocolError> {
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let path = IndexPath::new(kind, i);
        out.push(decode_tensor(t, path.as_str(), binary, &mut offset)?);
    }
    let rest = binary.map_or(0, <[u8]>::len);
    if offset != rest {
        return Err(ProtocolError::TrailingBinaryData {
            expected: offset,
            got: rest,
        });
    }
    Ok(out)
}

/// `inputs[3]`: a tensor's path for its errors, written on the stack; it is made for every
/// tensor of every job and almost never shown, so it costs no formatting and no allocation.
struct IndexPath {
    buf: [u8; 40],
    len: usize,
}

impl IndexPath {
    /// `kind` is this module's `"inputs"` or `"outputs"` (at most 16 bytes are kept).
    fn new(kind: &str, index: usize) -> IndexPath {
        let mut path = IndexPath {
            buf: [0; 40],
            len: 0,
        };
        path.push(&kind.as_bytes()[..kind.len().min(16)]);
        path.push(b"[");
        path.push(itoa::Buffer::new().format(index).as_bytes());
        path.push(b"]");
        path
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("tensor")
    }
}

fn decode_tensor(
    t: RawTensor<'_>,
    path: &str,
    binary: Option<&[u8]>,
    offset: &mut usize,
) -> Result<Tensor, ProtocolError> {
    let datatype = DataType::parse(&t.datatype).ok_or_else(|| ProtocolError::UnknownDatatype {
        path: path.to_string(),
        got: t.datatype.to_string(),
    })?;
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| ProtocolError::InvalidShape {
            path: path.to_string(),
            got: t.shape.clone(),
        })?;
    let expected = checked_count(&shape).ok_or_else(|| ProtocolError::InvalidShape {
        path: path.to_string(),
        got: t.shape.clone(),
    })?;
    let binary_size = t.parameters.and_then(|p| p.binary_data_size);
    let (data, got) = match (t.data, binary_size) {
        (Some(_), Some(_)) => {
            return Err(ProtocolError::ConflictingData {
                path: path.to_string(),
            })
        }
        (None, None) => {
            return Err(ProtocolError::MissingData {
                path: path.to_string(),
            })
        }
        (Some(raw), None) => parse_json_data(raw.get(), path, datatype, expected)?,
        (None, Some(size)) => {
            let bytes = take_binary(binary, path, offset, size)?;
            (
                read_binary(bytes, path, datatype, &shape, expected)?,
                expected,
            )
        }
    };
    if got != expected {
        return Err(ProtocolError::ElementCountMismatch {
            path: path.to_string(),
            expected,
            shape,
            got,
        });
    }
    Ok(Tensor {
        name: t.name,
        datatype,
        shape,
        data,
    })
}

fn take_binary<'b>(
    binary: Option<&'b [u8]>,
    path: &str,
    offset: &mut usize,
    size: u64,
) -> Result<&'b [u8], ProtocolError> {
    let rest = binary.ok_or_else(|| ProtocolError::BinaryWithoutHeader {
        path: path.to_string(),
    })?;
    let remaining = rest.len() - *offset;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > remaining {
        return Err(ProtocolError::BinaryDataTruncated {
            path: path.to_string(),
            remaining,
            got: size,
        });
    }
    let bytes = &rest[*offset..*offset + size];
    *offset += size;
    Ok(bytes)
}

/// Writes one tensor object: with `data` inline, or with `parameters.binary_data_size`
/// when `binary` (the caller appends the bytes after the header).
pub(crate) fn write_tensor(buf: &mut Vec<u8>, t: &Tensor, binary: bool) {
    buf.extend_from_slice(b"{\"name\":");
    write_str(buf, &t.name);
    buf.extend_from_slice(b",\"datatype\":\"");
    buf.extend_from_slice(t.datatype.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"shape\":[");
    for (i, d) in t.shape.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_usize(buf, *d);
    }
    buf.push(b']');
    if binary {
        buf.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
        write_usize(buf, binary_len(&t.data));
        buf.extend_from_slice(b"}}");
    } else {
        buf.extend_from_slice(b",\"data\":");
        write_json_data(buf, t.datatype, &t.data);
        buf.push(b'}');
    }
}

/// Header size guess for pre-sizing: the JSON data of non-binary tensors plus slack.
pub(crate) fn header_size_hint<'t>(tensors: impl Iterator<Item = (&'t Tensor, bool)>) -> usize {
    tensors
        .map(|(t, binary)| {
            64 + t.name.len()
                + if binary {
                    0
                } else {
                    json_size_hint(t.datatype, &t.data)
                }
        })
        .sum::<usize>()
        + 128
}

/// Content type of a body: JSON, or octet-stream when binary data follows the header.
pub(crate) fn content_type(binary: bool) -> &'static str {
    if binary {
        "application/octet-stream"
    } else {
        "application/json"
    }
}

/// Appends the binary data of `tensors` marked binary, in order.
pub(crate) fn append_binary<'t>(
    buf: &mut Vec<u8>,
    tensors: impl Iterator<Item = (&'t Tensor, bool)>,
) {
    for (t, binary) in tensors {
        if binary {
            write_binary(buf, &t.data);
        }
    }
}

/// Writes an unsigned integer.
pub(crate) fn write_usize(buf: &mut Vec<u8>, n: usize) {
    // Writing into a Vec<u8> cannot fail.
    let _ = CompactFormatter.write_u64(buf, n as u64);
}

#[cfg(test)]
mod tests {
    use super::IndexPath;

    #[test]
    fn index_paths_read_as_formatted() {
        for (kind, i) in [
            ("inputs", 0),
            ("outputs", 7),
            ("inputs", 10),
            ("inputs", usize::MAX),
        ] {
            assert_eq!(IndexPath::new(kind, i).as_str(), format!("{kind}[{i}]"));
        }
    }
}
