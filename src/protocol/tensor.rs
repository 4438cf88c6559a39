//! Tensors as the codec hands them over: name, datatype, shape and packed little-endian data.
//!
//! The batcher concatenates jobs along dimension 0 with [`Tensor::concat_rows`] and splits
//! results (or oversized jobs) back with [`Tensor::slice_rows`]; both copy whole rows of
//! bytes and never look at element values.

use std::borrow::Borrow;

use super::error::ProtocolError;
use super::types::DataType;
use half::f16;

/// The elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, packed little-endian; BOOL is one byte 0/1, FP16 is IEEE half.
    Fixed(Vec<u8>),
    /// BYTES elements, one `Vec<u8>` each.
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// Number of bytes (Fixed) or elements (Bytes) the data holds.
    fn units(&self) -> usize {
        match self {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }
}

/// One named tensor of a request or a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Product of `dims`, `None` on overflow.
pub(crate) fn checked_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Number of elements: the product of the shape (1 for a scalar).
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of rows along dimension 0 (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The dimensions after the first: jobs with equal row shapes can share a batch.
    pub fn row_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Data units (bytes for fixed-size datatypes, elements for BYTES) in one row.
    fn row_units(&self) -> usize {
        let per_row: usize = self.row_shape().iter().product();
        per_row * self.datatype.element_size().unwrap_or(1)
    }

    /// Checks that the data matches the datatype and shape (what the codec guarantees
    /// for every decoded tensor).
    pub fn is_consistent(&self) -> bool {
        let Some(count) = checked_count(&self.shape) else {
            return false;
        };
        match (&self.data, self.datatype.element_size()) {
            (TensorData::Fixed(b), Some(size)) => Some(b.len()) == count.checked_mul(size),
            (TensorData::Bytes(v), None) => v.len() == count,
            _ => false,
        }
    }

    /// Rows `start..end` along dimension 0, copied.
    ///
    /// # Panics
    /// If the tensor is a scalar or `start > end` or `end > rows`: the caller (the batcher)
    /// computes these bounds from shapes the codec already checked.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        assert!(!self.shape.is_empty(), "slice_rows on a scalar tensor");
        assert!(
            start <= end && end <= self.shape[0],
            "slice_rows {start}..{end} out of 0..{}",
            self.shape[0]
        );
        let unit = self.row_units();
        let data = match &self.data {
            TensorData::Fixed(b) => TensorData::Fixed(b[start * unit..end * unit].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start * unit..end * unit].to_vec()),
        };
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Tensor {
            name: self.name.clone(),
            datatype: self.datatype,
            shape,
            data,
        }
    }

    /// Joins `parts` along dimension 0, in order: the inverse of [`Tensor::slice_rows`].
    /// The parts must agree on name, datatype and every dimension but the first.
    /// Takes owned tensors or references (`&[Tensor]`, `&[&Tensor]`).
    pub fn concat_rows<T: Borrow<Tensor>>(parts: &[T]) -> Result<Tensor, ProtocolError> {
        let first = parts.first().ok_or(ProtocolError::EmptyConcat)?.borrow();
        let mismatch = |index: usize, expected: String, got: String| {
            Err(ProtocolError::ConcatMismatch {
                index,
                expected,
                got,
            })
        };
        if first.shape.is_empty() {
            return mismatch(0, "rank >= 1".into(), "a scalar".into());
        }
        let mut rows = 0usize;
        let mut units = 0usize;
        for (i, p) in parts.iter().map(Borrow::borrow).enumerate() {
            if p.name != first.name {
                return mismatch(i, format!("name {:?}", first.name), format!("{:?}", p.name));
            }
            if p.datatype != first.datatype {
                return mismatch(
                    i,
                    format!("datatype {}", first.datatype),
                    p.datatype.to_string(),
                );
            }
            if p.shape.len() != first.shape.len() || p.shape[1..] != first.shape[1..] {
                return mismatch(
                    i,
                    format!("shape [_, {:?}]", &first.shape[1..]),
                    format!("{:?}", p.shape),
                );
            }
            if !p.is_consistent() {
                return mismatch(
                    i,
                    "data matching its shape".into(),
                    "inconsistent data".into(),
                );
            }
            rows += p.shape[0];
            units += p.data.units();
        }
        let data = match &first.data {
            TensorData::Fixed(_) => {
                let mut out = Vec::with_capacity(units);
                for p in parts {
                    if let TensorData::Fixed(b) = &p.borrow().data {
                        out.extend_from_slice(b);
                    }
                }
                TensorData::Fixed(out)
            }
            TensorData::Bytes(_) => {
                let mut out = Vec::with_capacity(units);
                for p in parts {
                    if let TensorData::Bytes(v) = &p.borrow().data {
                        out.extend(v.iter().cloned());
                    }
                }
                TensorData::Bytes(out)
            }
        };
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor {
            name: first.name.clone(),
            datatype: first.datatype,
            shape,
            data,
        })
    }

    /// A tensor of fixed-size elements from packed little-endian bytes.
    ///
    /// # Panics
    /// If `datatype` is BYTES or the byte count does not match the shape.
    pub fn from_raw(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<usize>,
        raw: Vec<u8>,
    ) -> Tensor {
        let t = Tensor {
            name: name.into(),
            datatype,
            shape,
            data: TensorData::Fixed(raw),
        };
        assert!(
            t.is_consistent(),
            "from_raw: data does not match {} {:?}",
            datatype,
            t.shape
        );
        t
    }

    /// An FP32 tensor. Panics if `values` does not match the shape.
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Tensor {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(name, DataType::F32, shape, raw)
    }

    /// An INT64 tensor. Panics if `values` does not match the shape.
    pub fn from_i64(name: impl Into<String>, shape: Vec<usize>, values: &[i64]) -> Tensor {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(name, DataType::I64, shape, raw)
    }

    /// A BOOL tensor. Panics if `values` does not match the shape.
    pub fn from_bool(name: impl Into<String>, shape: Vec<usize>, values: &[bool]) -> Tensor {
        let raw = values.iter().map(|&v| u8::from(v)).collect();
        Tensor::from_raw(name, DataType::Bool, shape, raw)
    }

    /// A BYTES tensor. Panics if `values` does not match the shape.
    pub fn from_bytes(name: impl Into<String>, shape: Vec<usize>, values: Vec<Vec<u8>>) -> Tensor {
        let t = Tensor {
            name: name.into(),
            datatype: DataType::Bytes,
            shape,
            data: TensorData::Bytes(values),
        };
        assert!(
            t.is_consistent(),
            "from_bytes: data does not match shape {:?}",
            t.shape
        );
        t
    }

    /// The elements as `f32`, for FP16, FP32 and FP64 tensors (FP64 rounded); `None` otherwise.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        let TensorData::Fixed(b) = &self.data else {
            return None;
        };
        match self.datatype {
            DataType::F16 => Some(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            DataType::F32 => Some(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DataType::F64 => Some(b.chunks_exact(8).map(|c| le_f64(c) as f32).collect()),
            _ => None,
        }
    }

    /// The elements as `i64`, for integer tensors (and BOOL as 0/1); `None` for other
    /// datatypes or a UINT64 value above `i64::MAX`.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let TensorData::Fixed(b) = &self.data else {
            return None;
        };
        let size = self.datatype.element_size()?;
        b.chunks_exact(size)
            .map(|c| match self.datatype {
                DataType::Bool | DataType::U8 => Some(i64::from(c[0])),
                DataType::I8 => Some(i64::from(c[0] as i8)),
                DataType::U16 => Some(i64::from(u16::from_le_bytes([c[0], c[1]]))),
                DataType::I16 => Some(i64::from(i16::from_le_bytes([c[0], c[1]]))),
                DataType::U32 => Some(i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                DataType::I32 => Some(i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                DataType::U64 => i64::try_from(le_u64(c)).ok(),
                DataType::I64 => Some(le_u64(c) as i64),
                _ => None,
            })
            .collect()
    }
}

fn le_u64(c: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&c[..8]);
    u64::from_le_bytes(a)
}

fn le_f64(c: &[u8]) -> f64 {
    f64::from_bits(le_u64(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn concat_rejects_mismatches() {
        let a = Tensor::from_f32("x", vec![1, 2], &[1.0, 2.0]);
        let cases = [
            (Tensor::from_f32("y", vec![1, 2], &[1.0, 2.0]), "name \"x\""),
            (Tensor::from_i64("x", vec![1, 2], &[1, 2]), "datatype FP32"),
            (
                Tensor::from_f32("x", vec![1, 3], &[1.0, 2.0, 3.0]),
                "shape [_, [2]]",
            ),
            (
                Tensor::from_f32("x", vec![2], &[1.0, 2.0]),
                "shape [_, [2]]",
            ),
        ];
        for (b, expected) in cases {
            let err = Tensor::concat_rows(&[a.clone(), b])
                .unwrap_err()
                .to_string();
            assert!(err.contains("parts[1]") && err.contains(expected), "{err}");
        }
        assert!(matches!(
            Tensor::concat_rows::<Tensor>(&[]),
            Err(ProtocolError::EmptyConcat)
        ));
    }

    #[test]
    fn conversions() {
        let t = Tensor::from_bool("b", vec![3], &[true, false, true]);
        assert_eq!(t.to_i64_vec(), Some(vec![1, 0, 1]));
        assert_eq!(t.to_f32_vec(), None);
        let t = Tensor::from_i64("i", vec![2], &[-5, 7]);
        assert_eq!(t.to_i64_vec(), Some(vec![-5, 7]));
        let t = Tensor::from_raw("u", DataType::U64, vec![1], u64::MAX.to_le_bytes().to_vec());
        assert_eq!(t.to_i64_vec(), None);
    }

    fn tensor_strategy() -> impl Strategy<Value = (Tensor, Vec<usize>)> {
        (
            1usize..4,
            0usize..5,
            prop::collection::vec(0usize..6, 1..6),
            any::<bool>(),
        )
            .prop_flat_map(|(inner, _, cuts, bytes)| {
                let rows: usize = cuts.iter().sum();
                let n = rows * inner;
                let data = if bytes {
                    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), n)
                        .prop_map(move |v| Tensor::from_bytes("t", vec![rows, inner], v))
                        .boxed()
                } else {
                    prop::collection::vec(any::<f32>(), n)
                        .prop_map(move |v| Tensor::from_f32("t", vec![rows, inner], &v))
                        .boxed()
                };
                (data, Just(cuts))
            })
    }

    proptest! {
        #[test]
        fn slice_then_concat_is_identity((t, cuts) in tensor_strategy()) {
            let mut parts = Vec::new();
            let mut start = 0;
            for c in &cuts {
                parts.push(t.slice_rows(start, start + c));
                start += c;
            }
            for p in &parts {
                prop_assert!(p.is_consistent());
            }
            let joined = Tensor::concat_rows(&parts).unwrap();
            // Compare bytes, not floats: NaN payloads must survive too.
            prop_assert_eq!(joined, t);
        }
    }
}
