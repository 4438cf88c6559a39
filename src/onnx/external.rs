//! ONNX external data: reading a tensor's `location`/`offset`/`length` entries, the bytes a
//! tensor's shape needs, and writing models whose weights sit in a file beside `model.onnx`.
//!
//! Pure: nothing here opens a file. Whether a location stays inside its version directory and
//! whether the file holds the bytes is checked where files are read
//! (`repository::external`).

use super::proto::{elem, ModelProto, StringStringEntryProto, TensorProto, EXTERNAL};
use super::scan::TensorEntry;

/// Offsets written by [`ExternalLayout`] are multiples of this (a page), so ONNX Runtime can
/// map each tensor straight from the file.
pub const ALIGN: u64 = 4096;

/// Where one tensor's data lives, as its `external_data` entries say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// The file, relative to the model's directory, as written.
    pub location: String,
    pub offset: u64,
    /// `None`: to the end of the file.
    pub length: Option<u64>,
}

/// Why a tensor's `external_data` entries were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalDataError {
    #[error("tensor {tensor:?}: external_data has no location")]
    MissingLocation { tensor: String },
    #[error("tensor {tensor:?}: external_data key {key:?} is given twice")]
    Duplicate { tensor: String, key: String },
    #[error("tensor {tensor:?}: external_data {key} {value:?} is not a byte count")]
    NotANumber {
        tensor: String,
        key: &'static str,
        value: String,
    },
}

impl ExternalData {
    /// The external data of `tensor`, `None` when its data is inside the model.
    ///
    /// A key given twice is refused rather than resolved, since ONNX Runtime might read the
    /// other one than a check did. Keys other than `location`, `offset` and `length` (such as
    /// `checksum`) are left to ONNX Runtime.
    pub fn of(tensor: &TensorEntry) -> Result<Option<ExternalData>, ExternalDataError> {
        if tensor.data_location != EXTERNAL && tensor.external_data.is_empty() {
            return Ok(None);
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut location = None;
        let mut offset = 0;
        let mut length = None;
        for (key, value) in &tensor.external_data {
            if seen.contains(&key.as_str()) {
                return Err(ExternalDataError::Duplicate {
                    tensor: tensor.name.clone(),
                    key: key.clone(),
                });
            }
            seen.push(key);
            match key.as_str() {
                "location" => location = Some(value.clone()),
                "offset" => offset = number(&tensor.name, "offset", value)?,
                "length" => length = Some(number(&tensor.name, "length", value)?),
                _ => {}
            }
        }
        match location.filter(|l| !l.is_empty()) {
            Some(location) => Ok(Some(ExternalData {
                location,
                offset,
                length,
            })),
            None => Err(ExternalDataError::MissingLocation {
                tensor: tensor.name.clone(),
            }),
        }
    }
}

fn number(tensor: &str, key: &'static str, value: &str) -> Result<u64, ExternalDataError> {
    // Decimal digits only: no sign, no spaces, no hexadecimal.
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| ExternalDataError::NotANumber {
            tensor: tensor.to_string(),
            key,
            value: value.chars().take(64).collect(),
        })
}

/// Bits per element of a `TensorProto.DataType`; `None` for strings and unknown types.
pub fn element_bits(data_type: i32) -> Option<u64> {
    Some(match data_type {
        // FLOAT, INT32, UINT32
        1 | 6 | 12 => 32,
        // UINT8, INT8, BOOL, FLOAT8 variants
        2 | 3 | 9 | 17..=20 => 8,
        // UINT16, INT16, FLOAT16, BFLOAT16
        4 | 5 | 10 | 16 => 16,
        // INT64, DOUBLE, UINT64, COMPLEX64
        7 | 11 | 13 | 14 => 64,
        // COMPLEX128
        15 => 128,
        // UINT4, INT4, FLOAT4E2M1
        21..=23 => 4,
        _ => return None,
    })
}

/// The bytes a tensor's shape and type need; `None` for strings, unknown types, negative
/// dimensions or a product that overflows.
pub fn data_bytes(data_type: i32, dims: &[i64]) -> Option<u64> {
    let bits = element_bits(data_type)?;
    let count = dims.iter().try_fold(1u64, |n, &d| {
        u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })?;
    Some(count.checked_mul(bits)?.div_ceil(8))
}

/// Lays tensors out in one external file at [`ALIGN`]ed offsets.
#[derive(Debug, Clone)]
pub struct ExternalLayout {
    location: String,
    end: u64,
}

impl ExternalLayout {
    /// A layout for the file `location` (relative to the model's directory).
    pub fn new(location: &str) -> ExternalLayout {
        ExternalLayout {
            location: location.to_string(),
            end: 0,
        }
    }

    /// Reserves `length` bytes for a tensor: the tensor (its data external) and its offset.
    pub fn tensor(
        &mut self,
        name: &str,
        data_type: i32,
        dims: &[i64],
        length: u64,
    ) -> (TensorProto, u64) {
        let offset = self.end.div_ceil(ALIGN) * ALIGN;
        self.end = offset + length;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.to_string(),
            value,
        };
        let tensor = TensorProto {
            name: name.to_string(),
            data_type,
            dims: dims.to_vec(),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            data_location: EXTERNAL,
            ..Default::default()
        };
        (tensor, offset)
    }

    /// The file's length so far.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }
}

/// Moves the `raw_data` of every graph initializer of at least `min_bytes` into one external
/// file `location`; returns that file's bytes (zeros between tensors). For small models:
/// the whole file is built in memory.
pub fn externalize(model: &mut ModelProto, location: &str, min_bytes: usize) -> Vec<u8> {
    let mut layout = ExternalLayout::new(location);
    let mut file = Vec::new();
    let Some(graph) = model.graph.as_mut() else {
        return file;
    };
    for tensor in graph.initializer.iter_mut() {
        if tensor.raw_data.len() < min_bytes.max(1) || tensor.data_type == elem::STRING {
            continue;
        }
        let raw = std::mem::take(&mut tensor.raw_data);
        let (moved, offset) = layout.tensor(
            &tensor.name,
            tensor.data_type,
            &tensor.dims,
            raw.len() as u64,
        );
        file.resize(offset as usize, 0);
        file.extend_from_slice(&raw);
        *tensor = moved;
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pairs: &[(&str, &str)]) -> TensorEntry {
        TensorEntry {
            name: name.to_string(),
            data_location: EXTERNAL,
            external_data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_are_read_and_bad_ones_name_the_tensor() {
        let ok = entry(
            "w",
            &[
                ("location", "weights.bin"),
                ("offset", "4096"),
                ("length", "16"),
            ],
        );
        assert_eq!(
            ExternalData::of(&ok),
            Ok(Some(ExternalData {
                location: "weights.bin".into(),
                offset: 4096,
                length: Some(16)
            }))
        );
        let bare = entry("w", &[("location", "w.bin"), ("checksum", "x")]);
        assert_eq!(ExternalData::of(&bare).unwrap().unwrap().length, None);
        assert_eq!(ExternalData::of(&TensorEntry::default()), Ok(None));
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("offset", "0")],
                "tensor \"w\": external_data has no location",
            ),
            (
                &[("location", "")],
                "tensor \"w\": external_data has no location",
            ),
            (
                &[("location", "a"), ("location", "b")],
                "tensor \"w\": external_data key \"location\" is given twice",
            ),
            (
                &[("location", "a"), ("offset", "-1")],
                "tensor \"w\": external_data offset \"-1\" is not a byte count",
            ),
            (
                &[("location", "a"), ("length", "99999999999999999999")],
                "tensor \"w\": external_data length \"99999999999999999999\" is not a byte count",
            ),
        ];
        for (pairs, message) in cases {
            let error = ExternalData::of(&entry("w", pairs)).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn data_bytes_follow_type_and_shape() {
        assert_eq!(data_bytes(elem::FLOAT, &[4096, 4096]), Some(64 << 20));
        assert_eq!(data_bytes(elem::FLOAT, &[]), Some(4));
        assert_eq!(data_bytes(21, &[3]), Some(2));
        assert_eq!(data_bytes(elem::STRING, &[3]), None);
        assert_eq!(data_bytes(elem::FLOAT, &[-1, 3]), None);
        assert_eq!(data_bytes(elem::DOUBLE, &[i64::MAX, 4]), None);
    }

    #[test]
    fn a_layout_aligns_every_offset() {
        let mut layout = ExternalLayout::new("weights.bin");
        let (_, a) = layout.tensor("a", elem::FLOAT, &[3], 12);
        let (t, b) = layout.tensor("b", elem::FLOAT, &[2], 8);
        assert_eq!((a, b, layout.len()), (0, ALIGN, ALIGN + 8));
        assert_eq!(t.external_data[1].value, ALIGN.to_string());
        assert_eq!(t.data_location, EXTERNAL);
    }
}
