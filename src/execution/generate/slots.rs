//! In-place caches for decoders whose attention writes the new position into its past buffer
//! (onnxruntime-genai's GroupQueryAttention with a past and present shared): one buffer per
//! cache input of `max_active_rows` slots of `context_length` positions, bound to each decode
//! step as both past and present, so that a step writes one position per row and copies
//! nothing (the concatenating path copies every row's caches into a buffer one position longer
//! at every step, in ONNX Runtime).
//!
//! The rows decoding are the first slots, in the engine's order of rows: a step runs on a view
//! of the first `rows` slots of each buffer. A row that ends frees its slot and the last row
//! moves into it ([`Slots::move_row`]: its own positions only); a job whose prompt is prefilled
//! is copied into the next free slot ([`Slots::put`]). A row's positions are at the start of its
//! slot, its mask sum long, as the layout [`super::spec::CacheLayout::RowLengths`] wants.
//!
//! The memory is what admission counts for the version's caches; pages a row never reaches are
//! never touched.

use super::caches::{Caches, Geometry};
use crate::protocol::DataType;
use crate::runtime::TensorView;

pub struct Slots {
    /// One per cache input, in the order of `Caches::buffers`; `u64` for 8-byte alignment.
    buffers: Vec<Vec<u64>>,
    capacity: usize,
    context: usize,
    geometry: Geometry,
    datatype: DataType,
}

impl Slots {
    /// `buffers` buffers of `capacity` slots of `context` positions, zero.
    pub fn new(
        buffers: usize,
        capacity: usize,
        context: usize,
        geometry: Geometry,
        datatype: DataType,
    ) -> Slots {
        let bytes = capacity * geometry.kv_heads * context * geometry.position_bytes;
        Slots {
            buffers: (0..buffers)
                .map(|_| vec![0u64; bytes.div_ceil(8)])
                .collect(),
            capacity,
            context,
            geometry,
            datatype,
        }
    }

    /// Bytes of one slot of one buffer.
    fn slot_bytes(&self) -> usize {
        self.geometry.kv_heads * self.context * self.geometry.position_bytes
    }

    /// Views of the first `rows` slots of every buffer, `[rows, kv heads, context, head size]`.
    pub fn views(&mut self, rows: usize) -> Result<Vec<TensorView<'_>>, String> {
        if rows > self.capacity {
            return Err(format!("{rows} rows in {} slots", self.capacity));
        }
        let len = rows * self.slot_bytes();
        let shape = [
            rows,
            self.geometry.kv_heads,
            self.context,
            self.geometry.position_bytes / self.datatype.element_size().unwrap_or(4),
        ];
        let datatype = self.datatype;
        self.buffers
            .iter_mut()
            .map(|buffer| TensorView::new(&mut bytes_of(buffer)[..len], &shape, datatype))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    }

    /// Writes the first `len` positions of row `row` of `from` (a prefilled prompt's caches)
    /// into slot `slot`.
    pub fn put(&mut self, slot: usize, from: &Caches, row: usize, len: usize) {
        let pb = self.geometry.position_bytes;
        let heads = self.geometry.kv_heads;
        let slot_bytes = self.slot_bytes();
        let context = self.context;
        let len = len.min(from.width).min(context);
        for (buffer, source) in self.buffers.iter_mut().zip(&from.buffers) {
            let source = source.bytes();
            let buffer = bytes_of(buffer);
            for h in 0..heads {
                let src = ((row * heads + h) * from.width) * pb;
                let dst = slot * slot_bytes + h * context * pb;
                buffer[dst..dst + len * pb].copy_from_slice(&source[src..src + len * pb]);
            }
        }
    }

    /// Moves the first `len` positions of slot `from` to slot `to`.
    pub fn move_row(&mut self, from: usize, to: usize, len: usize) {
        let pb = self.geometry.position_bytes;
        let slot_bytes = self.slot_bytes();
        let context = self.context;
        let len = len.min(context);
        for buffer in &mut self.buffers {
            let buffer = bytes_of(buffer);
            for h in 0..self.geometry.kv_heads {
                let src = from * slot_bytes + h * context * pb;
                let dst = to * slot_bytes + h * context * pb;
                buffer.copy_within(src..src + len * pb, dst);
            }
        }
    }
}

fn bytes_of(buffer: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 memory is initialized, and u8 has no alignment or validity requirement; the
    // slice covers exactly the same bytes and borrows `buffer` mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<u8>(), buffer.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::generate::caches::Buffer;
    use crate::execution::generate::spec::CacheLayout;

    fn geometry() -> Geometry {
        Geometry {
            kv_heads: 2,
            position_bytes: 1,
            layout: CacheLayout::RowLengths,
        }
    }

    /// One buffer, two heads, one byte per position, context 4: slot `s` head `h` position
    /// `p` at `s*8 + h*4 + p`.
    fn slots() -> Slots {
        Slots::new(1, 3, 4, geometry(), DataType::U8)
    }

    fn bytes(slots: &mut Slots) -> Vec<u8> {
        bytes_of(&mut slots.buffers[0])[..24].to_vec()
    }

    #[test]
    fn a_prefilled_row_lands_at_the_start_of_each_head_of_its_slot() {
        let mut s = slots();
        // A prefill of 3 positions: head 0 holds 1,2,3, head 1 holds 4,5,6.
        let from = Caches {
            buffers: vec![Buffer::Host(vec![1, 2, 3, 4, 5, 6])],
            rows: 1,
            width: 3,
        };
        s.put(1, &from, 0, 3);
        assert_eq!(
            bytes(&mut s),
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_moved_row_keeps_its_positions_and_nothing_else_moves() {
        let mut s = slots();
        let from = Caches {
            buffers: vec![Buffer::Host(vec![1, 2, 4, 5])],
            rows: 1,
            width: 2,
        };
        s.put(2, &from, 0, 2);
        s.move_row(2, 0, 2);
        let b = bytes(&mut s);
        assert_eq!(&b[..8], [1, 2, 0, 0, 4, 5, 0, 0]);
    }

    #[test]
    fn views_cover_the_rows_asked_and_no_more_than_the_slots() {
        crate::runtime::env::init(None).expect("ONNX Runtime loads (make setup installs it)");
        let mut s = Slots::new(2, 3, 4, geometry(), DataType::U8);
        assert_eq!(s.views(2).unwrap().len(), 2);
        assert!(s.views(4).is_err());
    }
}
