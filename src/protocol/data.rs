//! Tensor element codecs: JSON `data` arrays to packed buffers.
//!
//! JSON is parsed straight from the raw `data` text into the packed buffer once the
//! datatype is known, never through `serde_json::Value`: numbers and BOOL by the byte
//! scanner of `data_fast.rs`, BYTES and every error case by a `DeserializeSeed`; `data_write.rs`
//! writes the same conventions back, and `binary.rs` handles the binary extension.
//!
//! Non-finite floats: JSON has no NaN or infinities, so they are written as the strings
//! `"NaN"`, `"Infinity"` and `"-Infinity"`, and those strings are accepted as FP16/FP32/FP64
//! elements on input. The bare literal `NaN` is invalid JSON and rejected.
//! Integer datatypes accept JSON integers only (`1.0` and `1.5` are rejected) within the
//! datatype's range; float datatypes accept integers and floats, and a finite value that
//! overflows the datatype (`1e39` as FP32) is rejected. BYTES elements are JSON strings;
//! on output, non-UTF-8 bytes are written lossily (U+FFFD), so use binary outputs for
//! arbitrary bytes.

use super::error::ProtocolError;
use super::tensor::TensorData;
use super::types::DataType;
use half::f16;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use std::fmt;

/// Parses the raw JSON text of a `data` field (flat or nested) for `datatype`.
/// `path` names the tensor (`inputs[0]`) in errors; `capacity` is the expected element count.
pub(crate) fn parse_json_data(
    raw: &str,
    path: &str,
    datatype: DataType,
    capacity: usize,
) -> Result<(TensorData, usize), ProtocolError> {
    if datatype != DataType::Bytes {
        if let Some((packed, count)) = super::data_fast::parse_fixed(raw, datatype, capacity) {
            return Ok((TensorData::Fixed(packed), count));
        }
    }
    // Slow path: BYTES, and anything the fast path declined (it gives the precise error).
    parse_with_serde(raw, path, datatype, capacity)
}

/// The serde visitor path alone (BYTES, errors; tests compare it with the fast path).
pub(crate) fn parse_with_serde(
    raw: &str,
    path: &str,
    datatype: DataType,
    capacity: usize,
) -> Result<(TensorData, usize), ProtocolError> {
    let mut st = State {
        path,
        datatype,
        fixed: Vec::new(),
        bytes: Vec::new(),
        count: 0,
        dims: Vec::new(),
        leaf_depth: None,
        error: None,
    };
    // Cap the pre-allocation: `capacity` comes from a producer-supplied shape.
    let cap = capacity.min(raw.len());
    match datatype.element_size() {
        Some(size) => st.fixed.reserve(cap * size),
        None => st.bytes.reserve(cap),
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let res = Node {
        st: &mut st,
        depth: 0,
    }
    .deserialize(&mut de);
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    res.map_err(|e| ProtocolError::MalformedJson {
        message: format!("{path}.data: {e}"),
    })?;
    let data = match datatype.element_size() {
        Some(_) => TensorData::Fixed(st.fixed),
        None => TensorData::Bytes(st.bytes),
    };
    Ok((data, st.count))
}

struct State<'p> {
    path: &'p str,
    datatype: DataType,
    fixed: Vec<u8>,
    bytes: Vec<Vec<u8>>,
    count: usize,
    /// Length of the first array seen at each depth; `dims.len() > d` means an array
    /// was seen at depth `d`.
    dims: Vec<Option<usize>>,
    /// Depth at which scalars were seen.
    leaf_depth: Option<usize>,
    error: Option<ProtocolError>,
}

struct Node<'s, 'p> {
    st: &'s mut State<'p>,
    depth: usize,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, e: ProtocolError) -> E {
        self.error = Some(e);
        E::custom("invalid element")
    }

    fn invalid<E: de::Error>(&mut self, got: String) -> E {
        let expected = match self.datatype {
            DataType::Bool => "a BOOL (true or false)".to_string(),
            DataType::Bytes => "a BYTES string".to_string(),
            DataType::F16 | DataType::F32 | DataType::F64 => {
                format!("an {} number", self.datatype)
            }
            d @ (DataType::I8 | DataType::I16 | DataType::I32 | DataType::I64) => {
                format!("an {d} integer")
            }
            d => format!("a {d} integer"),
        };
        let e = ProtocolError::InvalidElement {
            path: self.path.to_string(),
            index: self.count,
            expected,
            got,
        };
        self.fail(e)
    }

    fn out_of_range<E: de::Error>(&mut self, got: String) -> E {
        let e = ProtocolError::ElementOutOfRange {
            path: self.path.to_string(),
            index: self.count,
            datatype: self.datatype,
            got,
        };
        self.fail(e)
    }

    /// Checks the nesting before a scalar at `depth`.
    fn scalar_at<E: de::Error>(&mut self, depth: usize, got: &dyn fmt::Display) -> Result<(), E> {
        if depth == 0 {
            let e = ProtocolError::DataNotArray {
                path: self.path.to_string(),
                got: got.to_string(),
            };
            return Err(self.fail(e));
        }
        if self.dims.len() > depth || self.leaf_depth.is_some_and(|d| d != depth) {
            let e = ProtocolError::RaggedData {
                path: self.path.to_string(),
                detail: format!(
                    "element {} is a value at depth {depth} where others are arrays",
                    self.count
                ),
            };
            return Err(self.fail(e));
        }
        self.leaf_depth = Some(depth);
        Ok(())
    }

    fn push_int<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        let ok = match self.datatype {
            DataType::U8 => u8::try_from(v).map(|x| self.fixed.push(x)).is_ok(),
            DataType::I8 => i8::try_from(v).map(|x| self.fixed.push(x as u8)).is_ok(),
            DataType::U16 => u16::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::I16 => i16::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::U32 => u32::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::I32 => i32::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::U64 => u64::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::I64 => i64::try_from(v)
                .map(|x| self.fixed.extend(x.to_le_bytes()))
                .is_ok(),
            DataType::F16 | DataType::F32 | DataType::F64 => return self.push_float(v as f64, &v),
            DataType::Bool | DataType::Bytes => return Err(self.invalid(v.to_string())),
        };
        if !ok {
            return Err(self.out_of_range(v.to_string()));
        }
        self.count += 1;
        Ok(())
    }

    /// Pushes a float element; `got` is how the producer wrote it, for messages.
    fn push_float<E: de::Error>(&mut self, v: f64, got: &dyn fmt::Display) -> Result<(), E> {
        match self.datatype {
            DataType::F64 => self.fixed.extend(v.to_le_bytes()),
            DataType::F32 => {
                let x = v as f32;
                if v.is_finite() && !x.is_finite() {
                    return Err(self.out_of_range(got.to_string()));
                }
                self.fixed.extend(x.to_le_bytes());
            }
            DataType::F16 => {
                let x = f16::from_f64(v);
                if v.is_finite() && !x.is_finite() {
                    return Err(self.out_of_range(got.to_string()));
                }
                self.fixed.extend(x.to_le_bytes());
            }
            _ => return Err(self.invalid(got.to_string())),
        }
        self.count += 1;
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor element or an array of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.st.scalar_at(self.depth, &v)?;
        if self.st.datatype != DataType::Bool {
            return Err(self.st.invalid(v.to_string()));
        }
        self.st.fixed.push(u8::from(v));
        self.st.count += 1;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.st.scalar_at(self.depth, &v)?;
        self.st.push_int(i128::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.st.scalar_at(self.depth, &v)?;
        self.st.push_int(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // Debug keeps the decimal point: `1.0` reads back as `1.0`, not `1`.
        let got = format!("{v:?}");
        self.st.scalar_at(self.depth, &got)?;
        self.st.push_float(v, &got)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let shown = format!("string {:?}", truncate(v));
        self.st.scalar_at(self.depth, &shown)?;
        match self.st.datatype {
            DataType::Bytes => {
                self.st.bytes.push(v.as_bytes().to_vec());
                self.st.count += 1;
                Ok(())
            }
            DataType::F16 | DataType::F32 | DataType::F64 => match non_finite(v) {
                Some(x) => self.st.push_float(x, &shown),
                None => Err(self.st.invalid(shown)),
            },
            _ => Err(self.st.invalid(shown)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.st.scalar_at(self.depth, &"null")?;
        Err(self.st.invalid("null".into()))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.st.scalar_at(self.depth, &"an object")?;
        Err(self.st.invalid("an object".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if self.st.leaf_depth.is_some_and(|d| d <= depth) {
            let e = ProtocolError::RaggedData {
                path: self.st.path.to_string(),
                detail: format!(
                    "element {} is an array at depth {depth} where others are values",
                    self.st.count
                ),
            };
            return Err(self.st.fail(e));
        }
        if self.st.dims.len() <= depth {
            self.st.dims.resize(depth + 1, None);
        }
        let mut len = 0usize;
        while seq
            .next_element_seed(Node {
                st: &mut *self.st,
                depth: depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        match self.st.dims[depth] {
            Some(first) if first != len => {
                let e = ProtocolError::RaggedData {
                    path: self.st.path.to_string(),
                    detail: format!("arrays at depth {depth} have lengths {first} and {len}"),
                };
                Err(self.st.fail(e))
            }
            _ => {
                self.st.dims[depth] = Some(len);
                Ok(())
            }
        }
    }
}

fn non_finite(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
