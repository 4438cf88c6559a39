//! What the batching policy knows of an item's shape: which items may share a batch, and the
//! item's lengths in the dimensions that are padded to the batch's longest.
//!
//! An exact key (the non-batch dimensions of every input, for a model without pad values)
//! batches only with an equal key. A [`LengthsKey`] batches with any key whose `exact` part is
//! equal, whatever its `lengths`: the batch is padded to the longest of each length, and
//! [`PadLimits`] bound what that padding costs.

/// An item's shape as the policy sees it.
pub trait BatchKey: Clone {
    /// True when items with keys `self` and `other` may share a batch (padding aside).
    fn batches_with(&self, other: &Self) -> bool;

    /// The item's length in each padded dimension (one per symbolic dimension, in a fixed
    /// order); empty when nothing is padded.
    fn lengths(&self) -> &[usize] {
        &[]
    }
}

/// Keys that batch only with an equal key and pad nothing.
macro_rules! exact_keys {
    ($($t:ty),*) => {
        $(impl BatchKey for $t {
            fn batches_with(&self, other: &Self) -> bool {
                self == other
            }
        })*
    };
}

exact_keys!(u8, u16, u32, u64, usize, String, Vec<usize>);

/// A key whose items are padded: `exact` must be equal for two items to share a batch, their
/// `lengths` may differ (every item of one model has as many lengths).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LengthsKey<K> {
    pub exact: K,
    pub lengths: Vec<usize>,
}

impl<K: PartialEq + Clone> BatchKey for LengthsKey<K> {
    fn batches_with(&self, other: &Self) -> bool {
        self.exact == other.exact
    }

    fn lengths(&self) -> &[usize] {
        &self.lengths
    }
}

/// What padding may cost: both limits are optional (empty, 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PadLimits {
    /// Upper bounds of the length buckets, ascending, each ≥ 1: a batch holds items of one
    /// bucket only (per padded dimension; lengths above the last bound form a bucket of their
    /// own). Empty: one bucket.
    pub length_buckets: Vec<usize>,
    /// Most padded elements per batch: rows × the product of the batch's longest lengths.
    /// 0: no limit. An item over the limit on its own runs alone.
    pub max_batch_elements: usize,
}

impl PadLimits {
    /// Normalises the buckets: sorted, deduplicated, zeros dropped.
    pub fn new(length_buckets: &[usize], max_batch_elements: usize) -> PadLimits {
        let mut length_buckets: Vec<usize> =
            length_buckets.iter().copied().filter(|&b| b >= 1).collect();
        length_buckets.sort_unstable();
        length_buckets.dedup();
        PadLimits {
            length_buckets,
            max_batch_elements,
        }
    }

    /// The bucket of each length: the index of the first bound at or above it (the number of
    /// bounds when it is above them all). Empty when there are no buckets.
    pub fn bucket(&self, lengths: &[usize]) -> Vec<usize> {
        if self.length_buckets.is_empty() {
            return Vec::new();
        }
        lengths
            .iter()
            .map(|&len| self.length_buckets.partition_point(|&b| b < len))
            .collect()
    }

    /// True when `rows` rows padded to `longest` (raised to `lengths`) stay within the
    /// element budget.
    pub fn fits(&self, rows: usize, longest: &[usize], lengths: &[usize]) -> bool {
        self.max_batch_elements == 0
            || padded_elements(rows, longest, lengths) <= self.max_batch_elements
    }
}

/// `rows` × the product of the element-wise maximum of `longest` and `lengths` (a missing
/// entry of `longest` counts as 0), saturating.
pub fn padded_elements(rows: usize, longest: &[usize], lengths: &[usize]) -> usize {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| len.max(longest.get(i).copied().unwrap_or(0)))
        .fold(rows, usize::saturating_mul)
}

/// Raises `longest` to `lengths`, element-wise.
pub fn raise(longest: &mut Vec<usize>, lengths: &[usize]) {
    if longest.len() < lengths.len() {
        longest.resize(lengths.len(), 0);
    }
    for (l, &len) in longest.iter_mut().zip(lengths) {
        *l = (*l).max(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_lengths_up_to_their_bound() {
        let limits = PadLimits::new(&[64, 16, 0, 32, 16], 0);
        assert_eq!(limits.length_buckets, vec![16, 32, 64]);
        assert_eq!(limits.bucket(&[1, 16, 17, 64, 65]), vec![0, 0, 1, 2, 3]);
        assert!(PadLimits::default().bucket(&[5]).is_empty());
    }

    #[test]
    fn elements_are_rows_times_the_padded_lengths() {
        assert_eq!(padded_elements(4, &[10], &[12]), 48);
        assert_eq!(padded_elements(4, &[10, 3], &[2, 5]), 4 * 10 * 5);
        assert_eq!(padded_elements(4, &[], &[7]), 28);
        assert_eq!(
            padded_elements(4, &[], &[]),
            4,
            "nothing padded: one element a row"
        );
        assert_eq!(padded_elements(usize::MAX, &[], &[2]), usize::MAX);
        let limits = PadLimits::new(&[], 100);
        assert!(limits.fits(10, &[10], &[3]));
        assert!(!limits.fits(10, &[10], &[11]));
        assert!(PadLimits::default().fits(usize::MAX, &[], &[usize::MAX]));
        let mut longest = Vec::new();
        raise(&mut longest, &[3, 1]);
        raise(&mut longest, &[2, 4]);
        assert_eq!(longest, vec![3, 4]);
    }

    #[test]
    fn padded_keys_batch_on_their_exact_part() {
        let a = LengthsKey {
            exact: vec![1usize],
            lengths: vec![5],
        };
        let b = LengthsKey {
            exact: vec![1usize],
            lengths: vec![9],
        };
        let c = LengthsKey {
            exact: vec![2usize],
            lengths: vec![5],
        };
        assert!(a.batches_with(&b) && !a.batches_with(&c));
        assert_eq!(b.lengths(), &[9]);
        assert!(3u8.batches_with(&3) && !3u8.batches_with(&4));
        assert!(vec![1usize].lengths().is_empty());
    }
}
