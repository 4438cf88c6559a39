//! The value padding fills in: one element of the input's datatype, made from the literal a
//! model's configuration gives (`pad_value = 0`, `-inf`, `false`, `""`).

use super::{inconsistent, PadError};
use crate::protocol::tensor::TensorData;
use crate::protocol::DataType;
use half::f16;

pub use crate::repository::inputs::PadLiteral;

/// One element of a datatype: little-endian bytes, or a BYTES element.
#[derive(Debug, Clone, PartialEq)]
pub struct PadValue {
    datatype: DataType,
    element: Vec<u8>,
}

/// A literal that is no element of the input's datatype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pad_value: expected {expected} for a {datatype} input, got {got}")]
pub struct PadValueError {
    pub datatype: DataType,
    pub expected: &'static str,
    pub got: String,
}

impl PadValue {
    /// The element `literal` stands for in `datatype`: integers in range for integer types,
    /// `true`/`false` (or 0/1) for BOOL, any number for FP16/FP32/FP64 (rounded), a string for
    /// BYTES.
    pub fn new(datatype: DataType, literal: &PadLiteral) -> Result<PadValue, PadValueError> {
        let refuse = |expected: &'static str| PadValueError {
            datatype,
            expected,
            got: match literal {
                PadLiteral::Text(s) => crate::protocol::text::quoted(s),
                PadLiteral::Bool(b) => b.to_string(),
                PadLiteral::Int(i) => i.to_string(),
                PadLiteral::Float(f) => f.to_string(),
            },
        };
        let element = match (datatype, literal) {
            (DataType::Bytes, PadLiteral::Text(s)) => s.as_bytes().to_vec(),
            (DataType::Bytes, _) => return Err(refuse("a string")),
            (DataType::Bool, PadLiteral::Bool(b)) => vec![u8::from(*b)],
            (DataType::Bool, PadLiteral::Int(i @ (0 | 1))) => vec![*i as u8],
            (DataType::Bool, _) => return Err(refuse("true, false, 0 or 1")),
            (DataType::F16 | DataType::F32 | DataType::F64, literal) => {
                let x = match literal {
                    PadLiteral::Float(f) => *f,
                    PadLiteral::Int(i) => *i as f64,
                    _ => return Err(refuse("a number")),
                };
                match datatype {
                    DataType::F16 => f16::from_f64(x).to_le_bytes().to_vec(),
                    DataType::F32 => (x as f32).to_le_bytes().to_vec(),
                    _ => x.to_le_bytes().to_vec(),
                }
            }
            (_, PadLiteral::Int(i)) => {
                integer(datatype, *i).ok_or_else(|| refuse(range(datatype)))?
            }
            (_, _) => return Err(refuse(range(datatype))),
        };
        Ok(PadValue { datatype, element })
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// `count` copies of the value, as the data of a `datatype` tensor.
    pub(super) fn filled(&self, datatype: DataType, count: usize) -> Result<TensorData, PadError> {
        if datatype != self.datatype {
            return Err(inconsistent(format!(
                "a {} pad value for a {datatype} input",
                self.datatype
            )));
        }
        Ok(match datatype.element_size() {
            None => TensorData::Bytes(vec![self.element.clone(); count]),
            Some(_) if self.element.iter().all(|&b| b == 0) => {
                TensorData::Fixed(vec![0; count * self.element.len()])
            }
            Some(_) => TensorData::Fixed(self.element.repeat(count)),
        })
    }
}

/// The little-endian bytes of `value` as an integer `datatype`, if in range.
fn integer(datatype: DataType, value: i64) -> Option<Vec<u8>> {
    Some(match datatype {
        DataType::U8 => u8::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::U16 => u16::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::U32 => u32::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::U64 => u64::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::I8 => i8::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::I16 => i16::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::I32 => i32::try_from(value).ok()?.to_le_bytes().to_vec(),
        DataType::I64 => value.to_le_bytes().to_vec(),
        _ => return None,
    })
}

fn range(datatype: DataType) -> &'static str {
    match datatype {
        DataType::U8 => "an integer in 0..=255",
        DataType::U16 => "an integer in 0..=65535",
        DataType::U32 => "an integer in 0..=4294967295",
        DataType::U64 => "a non-negative integer",
        DataType::I8 => "an integer in -128..=127",
        DataType::I16 => "an integer in -32768..=32767",
        DataType::I32 => "an integer in -2147483648..=2147483647",
        _ => "an integer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(datatype: DataType, literal: PadLiteral) -> Result<Vec<u8>, String> {
        PadValue::new(datatype, &literal)
            .map(|v| v.element)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn literals_become_elements_of_the_datatype() {
        use PadLiteral::*;
        assert_eq!(
            value(DataType::I64, Int(-2)),
            Ok((-2i64).to_le_bytes().to_vec())
        );
        assert_eq!(value(DataType::U8, Int(255)), Ok(vec![255]));
        assert_eq!(value(DataType::Bool, Bool(true)), Ok(vec![1]));
        assert_eq!(value(DataType::Bool, Int(0)), Ok(vec![0]));
        assert_eq!(
            value(DataType::F32, Float(f64::NEG_INFINITY)),
            Ok(f32::NEG_INFINITY.to_le_bytes().to_vec())
        );
        assert_eq!(
            value(DataType::F64, Int(3)),
            Ok(3f64.to_le_bytes().to_vec())
        );
        assert_eq!(value(DataType::F16, Float(1.0)), Ok(vec![0x00, 0x3c]));
        assert_eq!(
            value(DataType::Bytes, Text("[PAD]".into())),
            Ok(b"[PAD]".to_vec())
        );
    }

    #[test]
    fn literals_outside_the_datatype_are_refused_naming_it() {
        use PadLiteral::*;
        let cases = [
            (
                DataType::U8,
                Int(256),
                "expected an integer in 0..=255 for a UINT8 input, got 256",
            ),
            (
                DataType::U64,
                Int(-1),
                "non-negative integer for a UINT64 input, got -1",
            ),
            (DataType::I32, Float(0.5), "for a INT32 input, got 0.5"),
            (
                DataType::Bool,
                Int(2),
                "true, false, 0 or 1 for a BOOL input, got 2",
            ),
            (
                DataType::F32,
                Text("x".into()),
                "a number for a FP32 input, got \"x\"",
            ),
            (DataType::Bytes, Int(0), "a string for a BYTES input, got 0"),
        ];
        for (datatype, literal, want) in cases {
            let got = value(datatype, literal).unwrap_err();
            assert!(
                got.starts_with("pad_value: expected") && got.contains(want),
                "{got}"
            );
        }
    }

    #[test]
    fn literals_read_from_toml() {
        #[derive(serde::Deserialize)]
        struct Input {
            pad_value: PadLiteral,
        }
        let read = |s: &str| toml::from_str::<Input>(s).unwrap().pad_value;
        assert_eq!(read("pad_value = 0"), PadLiteral::Int(0));
        assert_eq!(
            read("pad_value = -inf"),
            PadLiteral::Float(f64::NEG_INFINITY)
        );
        assert_eq!(read("pad_value = false"), PadLiteral::Bool(false));
        assert_eq!(read("pad_value = \"\""), PadLiteral::Text(String::new()));
    }
}
