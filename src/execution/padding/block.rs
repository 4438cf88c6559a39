//! Copying a block of elements between tensors of different shapes: what padding and cutting
//! back do to the data, one contiguous run of the innermost axis at a time.

use super::{inconsistent, PadError};
use crate::protocol::tensor::TensorData;
use crate::protocol::DataType;

/// Where a block starts in a tensor's data: the tensor's shape, and the element offset.
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    pub shape: &'a [usize],
    pub offset: usize,
}

/// Copies the block `region` (a shape no larger than either tensor's) from `src` at `from` to
/// `dst` at `to`; both hold `datatype` elements.
pub(super) fn copy_region(
    src: &TensorData,
    from: Place,
    dst: &mut TensorData,
    to: Place,
    region: &[usize],
    datatype: DataType,
) -> Result<(), PadError> {
    match (src, dst) {
        (TensorData::Fixed(s), TensorData::Fixed(d)) => {
            let unit = datatype.element_size().unwrap_or(1);
            copy_block(s, from, d, to, region, unit);
            Ok(())
        }
        (TensorData::Bytes(s), TensorData::Bytes(d)) => {
            copy_block(s, from, d, to, region, 1);
            Ok(())
        }
        _ => Err(inconsistent("BYTES and fixed-size data mixed")),
    }
}

/// `copy_region` on slices of units (`unit` slice entries per element): an odometer over every
/// axis but the last, one contiguous copy per innermost run. The callers check the shapes.
fn copy_block<E: Clone>(
    src: &[E],
    from: Place,
    dst: &mut [E],
    to: Place,
    region: &[usize],
    unit: usize,
) {
    let rank = region.len();
    if region.contains(&0) {
        return;
    }
    let strides = |shape: &[usize]| -> Vec<usize> {
        let mut s = vec![unit; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    };
    let ss = strides(from.shape);
    let ds = strides(to.shape);
    let run = region.last().map_or(1, |&l| l) * unit;
    let mut index = vec![0usize; rank.saturating_sub(1)];
    loop {
        let at = |strides: &[usize]| index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        let a = from.offset * unit + at(&ss);
        let b = to.offset * unit + at(&ds);
        dst[b..b + run].clone_from_slice(&src[a..a + run]);
        // The next index, the axis before the innermost fastest.
        let mut axis = index.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            if index[axis] < region[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

/// `count` elements of `datatype`, zeroed (empty strings for BYTES).
pub(super) fn blank(datatype: DataType, count: usize) -> TensorData {
    match datatype.element_size() {
        Some(size) => TensorData::Fixed(vec![0; count * size]),
        None => TensorData::Bytes(vec![Vec::new(); count]),
    }
}
