//! The key/value caches of the rows a decoder runs together, as the bytes of its cache tensors
//! (FP32 or FP16 alike): one buffer per cache input, each `[rows, kv heads, width, head size]`.
//!
//! A row holds `len` positions of its buffers' `width` (the longest row's length). Where depends
//! on the layout: at the right end when rows are left-padded (their mask 0 on the padding), at
//! the start when the mask's row sum gives each row's length. When rows join or leave, the
//! buffers are made anew from the rows that stay ([`Caches::gather`]); between, each run's
//! present caches are the next run's past ones, with no copy.

use ort::value::DynValue;

use super::spec::CacheLayout;
use crate::protocol::{DataType, Tensor, TensorData};
use crate::runtime::value_view;

/// One cache buffer (or run output): bytes gathered by the engine, a value as an ONNX Runtime
/// run returned it (kept so that it is the next run's input without a copy), or a tensor as a
/// backend returned it.
pub enum Buffer {
    Host(Vec<u8>),
    Value(DynValue),
    Returned(Tensor),
}

impl Buffer {
    /// Its bytes (a value's are copied).
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Buffer::Host(bytes) => bytes,
            Buffer::Returned(Tensor {
                data: TensorData::Fixed(bytes),
                ..
            }) => bytes,
            other => other.bytes().to_vec(),
        }
    }

    /// Its bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Host(bytes) => bytes,
            Buffer::Value(value) => value_view(value).map(|v| v.2).unwrap_or(&[]),
            Buffer::Returned(tensor) => match &tensor.data {
                TensorData::Fixed(bytes) => bytes,
                TensorData::Bytes(_) => &[],
            },
        }
    }

    /// A run output's shape, datatype and bytes (a host buffer's shape is the caller's).
    pub fn view(&self) -> Result<(Vec<usize>, DataType, &[u8]), String> {
        match self {
            Buffer::Host(_) => Err("a gathered buffer has no shape of its own".into()),
            Buffer::Value(value) => value_view(value).map_err(|e| e.to_string()),
            Buffer::Returned(tensor) => match &tensor.data {
                TensorData::Fixed(bytes) => Ok((tensor.shape.clone(), tensor.datatype, bytes)),
                TensorData::Bytes(_) => Err(format!("decoder returned {} as strings", tensor.name)),
            },
        }
    }
}

/// Where a row's positions sit in its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kv_heads: usize,
    /// Bytes of one position of one head (`head size × element size`).
    pub position_bytes: usize,
    pub layout: CacheLayout,
}

/// The caches of `rows` rows.
#[derive(Default)]
pub struct Caches {
    pub buffers: Vec<Buffer>,
    pub rows: usize,
    pub width: usize,
}

impl Caches {
    /// `buffers` buffers of `rows` rows of `width` zero positions.
    pub fn zeros(buffers: usize, rows: usize, width: usize, geometry: &Geometry) -> Caches {
        let bytes = rows * geometry.kv_heads * width * geometry.position_bytes;
        Caches {
            buffers: (0..buffers).map(|_| Buffer::Host(vec![0; bytes])).collect(),
            rows,
            width,
        }
    }

    /// New caches of `width` holding, in order, the rows `sources` name: (caches, row, its
    /// length). Each row keeps its `len` positions, placed where the layout wants them.
    pub fn gather(
        sources: &[(&Caches, usize, usize)],
        width: usize,
        geometry: &Geometry,
    ) -> Caches {
        let buffers = sources.first().map_or(0, |s| s.0.buffers.len());
        let mut out = Caches::zeros(buffers, sources.len(), width, geometry);
        let pb = geometry.position_bytes;
        let heads = geometry.kv_heads;
        for (b, buffer) in out.buffers.iter_mut().enumerate() {
            let Buffer::Host(buffer) = buffer else {
                unreachable!("zeros() makes host buffers")
            };
            for (r, &(from, row, len)) in sources.iter().enumerate() {
                let len = len.min(width).min(from.width);
                let (src_start, dst_start) = match geometry.layout {
                    CacheLayout::LeftPadded => (from.width - len, width - len),
                    CacheLayout::RowLengths => (0, 0),
                };
                // A value's bytes are asked of ONNX Runtime: once per row, not per head.
                let from_bytes = from.buffers[b].bytes();
                for h in 0..heads {
                    let src = ((row * heads + h) * from.width + src_start) * pb;
                    let dst = ((r * heads + h) * width + dst_start) * pb;
                    buffer[dst..dst + len * pb].copy_from_slice(&from_bytes[src..src + len * pb]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One buffer, one head, one byte per position: row `r`'s bytes are `r*10 + position`.
    fn caches(rows: usize, width: usize) -> Caches {
        let data = (0..rows)
            .flat_map(|r| (0..width).map(move |p| (r * 10 + p) as u8))
            .collect();
        Caches {
            buffers: vec![Buffer::Host(data)],
            rows,
            width,
        }
    }

    fn geometry(layout: CacheLayout) -> Geometry {
        Geometry {
            kv_heads: 1,
            position_bytes: 1,
            layout,
        }
    }

    #[test]
    fn left_padded_rows_stay_at_the_end() {
        let g = geometry(CacheLayout::LeftPadded);
        let old = caches(2, 4);
        let new = caches(1, 2);
        // Row 1 of `old` holds its last 3 positions, the joining row its 2.
        let out = Caches::gather(&[(&old, 1, 3), (&new, 0, 2)], 3, &g);
        assert_eq!(out.buffers[0].bytes(), [11, 12, 13, 0, 0, 1]);
        assert_eq!((out.rows, out.width), (2, 3));
    }

    #[test]
    fn row_length_rows_stay_at_the_start() {
        let g = geometry(CacheLayout::RowLengths);
        let old = caches(2, 4);
        let out = Caches::gather(&[(&old, 1, 2), (&old, 0, 3)], 4, &g);
        assert_eq!(out.buffers[0].bytes(), [10, 11, 0, 0, 0, 1, 2, 0]);
    }
}
