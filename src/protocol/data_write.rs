//! Writing tensor `data` as JSON, straight into the output buffer with serde_json's number
//! formatter (no `serde_json::Value`). Conventions (non-finite floats as strings, BYTES as
//! UTF-8 strings) are described in `data.rs`, which reads what this writes.

use super::tensor::TensorData;
use super::types::DataType;
use half::f16;
use serde_json::ser::{CompactFormatter, Formatter};
/// Bytes the JSON text of `data` will roughly take, to pre-size the output buffer.
pub(crate) fn json_size_hint(datatype: DataType, data: &TensorData) -> usize {
    match data {
        TensorData::Fixed(b) => {
            let n = b.len() / datatype.element_size().unwrap_or(1);
            n * match datatype {
                DataType::Bool => 6,
                DataType::F32 | DataType::F16 => 14,
                DataType::F64 | DataType::U64 | DataType::I64 => 22,
                _ => 8,
            }
        }
        TensorData::Bytes(v) => v.iter().map(|e| e.len() + 3).sum(),
    }
}

/// Writes `data` as a flat JSON array.
pub(crate) fn write_json_data(buf: &mut Vec<u8>, datatype: DataType, data: &TensorData) {
    buf.reserve(json_size_hint(datatype, data) + 2);
    buf.push(b'[');
    match data {
        TensorData::Fixed(b) => write_fixed(buf, datatype, b),
        TensorData::Bytes(v) => {
            for (i, e) in v.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_str(buf, &String::from_utf8_lossy(e));
            }
        }
    }
    buf.push(b']');
}

/// Writes a JSON string, escaped.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec<u8> cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn write_fixed(buf: &mut Vec<u8>, datatype: DataType, b: &[u8]) {
    let mut f = CompactFormatter;
    // One monomorphised loop per datatype: no per-element dispatch on the datatype.
    // Writing into a Vec<u8> cannot fail; the io::Results are ignored.
    match datatype {
        DataType::Bool => each::<1>(buf, b, |buf, c| f.write_bool(buf, c[0] != 0)),
        DataType::U8 => each::<1>(buf, b, |buf, c| f.write_u8(buf, c[0])),
        DataType::I8 => each::<1>(buf, b, |buf, c| f.write_i8(buf, c[0] as i8)),
        DataType::U16 => each::<2>(buf, b, |buf, c| f.write_u16(buf, u16::from_le_bytes(c))),
        DataType::I16 => each::<2>(buf, b, |buf, c| f.write_i16(buf, i16::from_le_bytes(c))),
        DataType::U32 => each::<4>(buf, b, |buf, c| f.write_u32(buf, u32::from_le_bytes(c))),
        DataType::I32 => each::<4>(buf, b, |buf, c| f.write_i32(buf, i32::from_le_bytes(c))),
        DataType::U64 => each::<8>(buf, b, |buf, c| f.write_u64(buf, u64::from_le_bytes(c))),
        DataType::I64 => each::<8>(buf, b, |buf, c| f.write_i64(buf, i64::from_le_bytes(c))),
        DataType::F16 => each::<2>(buf, b, |buf, c| {
            write_f32(buf, f16::from_le_bytes(c).to_f32())
        }),
        DataType::F32 => each::<4>(buf, b, |buf, c| write_f32(buf, f32::from_le_bytes(c))),
        DataType::F64 => each::<8>(buf, b, |buf, c| write_f64(buf, f64::from_le_bytes(c))),
        DataType::Bytes => {}
    }
}

/// Writes each `N`-byte element of `b` with `write`, comma-separated.
fn each<const N: usize>(
    buf: &mut Vec<u8>,
    b: &[u8],
    mut write: impl FnMut(&mut Vec<u8>, [u8; N]) -> std::io::Result<()>,
) {
    for (i, c) in b.chunks_exact(N).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        let _ = write(buf, a);
    }
}

fn write_f32(buf: &mut Vec<u8>, v: f32) -> std::io::Result<()> {
    if v.is_finite() {
        CompactFormatter.write_f32(buf, v)
    } else {
        write_non_finite(buf, v.is_nan(), v > 0.0);
        Ok(())
    }
}

fn write_f64(buf: &mut Vec<u8>, v: f64) -> std::io::Result<()> {
    if v.is_finite() {
        CompactFormatter.write_f64(buf, v)
    } else {
        write_non_finite(buf, v.is_nan(), v > 0.0);
        Ok(())
    }
}

fn write_non_finite(buf: &mut Vec<u8>, nan: bool, positive: bool) {
    buf.extend_from_slice(match (nan, positive) {
        (true, _) => b"\"NaN\"",
        (false, true) => b"\"Infinity\"",
        (false, false) => b"\"-Infinity\"",
    });
}
