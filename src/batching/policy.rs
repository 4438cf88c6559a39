//! The batching policy: pure decisions over a queue of pending items, with `now` passed in.
//!
//! Items are jobs (or chunks of jobs larger than `max_batch_size`), each with a row count and a
//! shape key ([`BatchKey`]): items whose non-batch dimensions differ get different keys and are
//! never mixed, except in padded dimensions. Items whose keys differ only there
//! ([`LengthsKey`]) share a batch padded to its longest item, within [`PadLimits`]: a batch
//! holds one length bucket only, and stops before rows × padded length exceeds
//! `max_batch_elements` (a long item never pads many short ones past the budget; it goes first
//! in the next batch instead). Items of one group (same key class and bucket) are taken in
//! arrival order.
//!
//! The policy is work-conserving. When an instance is idle it gets a batch at once, made of
//! everything that is waiting (up to `max_batch_size` rows): under light load a job runs alone
//! without waiting out a delay, and under heavy load jobs pile up while every instance is busy,
//! so batches grow by themselves. The only time an idle instance waits is when the model asks for
//! `preferred_batch_sizes`: then a batch smaller than the smallest preferred size waits for more
//! jobs, but never longer than `max_queue_delay` after its oldest job arrived.
//!
//! No item starves. A full group (one whose next batch is limited by rows or elements, not by
//! what is waiting) may go before the oldest group, but at most [`MAX_BYPASS`] times in a row;
//! then the oldest group's batch is taken. Every take from the oldest group removes the oldest
//! pending item, so an item pushed while `P` others wait is taken within
//! `(P + 1) × (MAX_BYPASS + 1)` takes (property-tested in `policy/tests.rs`).

mod key;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[cfg(test)]
use key::padded_elements;
pub use key::{BatchKey, LengthsKey, PadLimits};

/// How many takes in a row a full group may go before the oldest group.
pub const MAX_BYPASS: usize = 1;

/// The limits of one model version's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// Rows per batch; 0 means the model has no batch dimension: one item per batch.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// Sorted ascending, each ≤ `max_batch_size`.
    pub preferred_batch_sizes: Vec<usize>,
    /// Buckets and element budget of padded items (no effect on keys without lengths).
    pub padding: PadLimits,
}

impl BatchLimits {
    /// Normalises the preferred sizes: sorted, deduplicated, within `1..=max_batch_size`.
    pub fn new(
        max_batch_size: usize,
        max_queue_delay: Duration,
        preferred: &[usize],
    ) -> BatchLimits {
        let mut preferred: Vec<usize> = preferred
            .iter()
            .copied()
            .filter(|&p| p >= 1 && (max_batch_size == 0 || p <= max_batch_size))
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
        if max_batch_size == 0 {
            preferred.clear();
        }
        BatchLimits {
            max_batch_size,
            max_queue_delay,
            preferred_batch_sizes: preferred,
            padding: PadLimits::default(),
        }
    }

    /// The same limits with `padding` for padded items.
    pub fn with_padding(self, padding: PadLimits) -> BatchLimits {
        BatchLimits { padding, ..self }
    }
}

/// Splits `rows` into consecutive chunks of at most `max` rows (one chunk when `max` is 0).
pub fn split_rows(rows: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    if max == 0 || rows <= max {
        #[allow(clippy::single_range_in_vec_init)]
        return vec![0..rows];
    }
    (0..rows)
        .step_by(max)
        .map(|start| start..(start + max).min(rows))
        .collect()
}

/// One pending unit of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<K, T> {
    pub key: K,
    pub rows: usize,
    pub arrived: Instant,
    pub payload: T,
}

/// What the batch task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take a batch now and hand it to an idle instance.
    Dispatch,
    /// Nothing to do until an item arrives or an instance becomes idle.
    Idle,
    /// Wait for more items, but dispatch at this instant at the latest.
    WaitUntil(Instant),
}

/// An item and its place in the push order.
#[derive(Debug)]
struct Queued<K, T> {
    seq: u64,
    item: Item<K, T>,
}

/// Items that may share a batch: one key class and one length bucket, in push order.
#[derive(Debug)]
struct Group<K, T> {
    key: K,
    bucket: Vec<usize>,
    rows: usize,
    items: VecDeque<Queued<K, T>>,
}

impl<K, T> Group<K, T> {
    fn front_seq(&self) -> u64 {
        self.items.front().map_or(u64::MAX, |q| q.seq)
    }
}

/// Pending items of one model version, grouped by key class and bucket, oldest group first.
#[derive(Debug)]
pub struct Batcher<K, T> {
    limits: BatchLimits,
    groups: Vec<Group<K, T>>,
    items: usize,
    /// Push counter: the order groups are kept in.
    pushed: u64,
    /// Takes in a row that went to a full group before the oldest.
    bypassed: usize,
}

impl<K: BatchKey, T> Batcher<K, T> {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            groups: Vec::new(),
            items: 0,
            pushed: 0,
            bypassed: 0,
        }
    }

    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// Number of pending items.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Adds an item behind the others of its group.
    pub fn push(&mut self, item: Item<K, T>) {
        self.items += 1;
        let seq = self.pushed;
        self.pushed += 1;
        let bucket = self.limits.padding.bucket(item.key.lengths());
        let queued = Queued { seq, item };
        match self
            .groups
            .iter_mut()
            .find(|g| g.bucket == bucket && g.key.batches_with(&queued.item.key))
        {
            Some(group) => {
                group.rows += queued.item.rows;
                group.items.push_back(queued);
            }
            None => self.groups.push(Group {
                key: queued.item.key.clone(),
                bucket,
                rows: queued.item.rows,
                items: VecDeque::from([queued]),
            }),
        }
    }

    /// True when some group holds a full batch.
    pub fn is_full(&self) -> bool {
        self.full_group().is_some()
    }

    fn full_group(&self) -> Option<usize> {
        self.groups.iter().position(|g| self.group_is_full(g))
    }

    /// True when the group's next batch is limited by rows or by the element budget rather
    /// than by what is waiting.
    fn group_is_full(&self, group: &Group<K, T>) -> bool {
        let max = self.limits.max_batch_size;
        if max == 0 || group.rows >= max {
            return true;
        }
        let padding = &self.limits.padding;
        if padding.max_batch_elements == 0 || group.key.lengths().is_empty() {
            return false;
        }
        // Fewer than `max` rows wait: full only if the budget stops them first.
        let mut rows = 0;
        let mut longest = Vec::new();
        for q in &group.items {
            let lengths = q.item.key.lengths();
            if !padding.fits(rows + q.item.rows, &longest, lengths) {
                return true;
            }
            rows += q.item.rows;
            key::raise(&mut longest, lengths);
        }
        false
    }

    /// The group whose front item was pushed first (groups are kept in that order).
    fn oldest_group(&self) -> Option<&Group<K, T>> {
        self.groups.first()
    }

    /// When the oldest pending item has waited `max_queue_delay`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.oldest_group()?.items.front()?;
        Some(oldest.item.arrived + self.limits.max_queue_delay)
    }

    /// The decision for this instant, given how many instances are idle.
    pub fn decide(&self, now: Instant, idle_instances: usize) -> Decision {
        let Some(oldest) = self.oldest_group() else {
            return Decision::Idle;
        };
        if idle_instances == 0 {
            return Decision::Idle;
        }
        let Some(&smallest_preferred) = self.limits.preferred_batch_sizes.first() else {
            return Decision::Dispatch;
        };
        if self.is_full() || oldest.rows >= smallest_preferred {
            return Decision::Dispatch;
        }
        match self.next_deadline() {
            Some(deadline) if now < deadline => Decision::WaitUntil(deadline),
            _ => Decision::Dispatch,
        }
    }

    /// The group the next batch comes from: a full one if there is one (but not more than
    /// [`MAX_BYPASS`] times in a row before the oldest), else the oldest.
    fn next_group(&mut self) -> Option<usize> {
        if self.groups.is_empty() {
            return None;
        }
        match self.full_group() {
            Some(index) if index > 0 && self.bypassed < MAX_BYPASS => {
                self.bypassed += 1;
                Some(index)
            }
            _ => {
                self.bypassed = 0;
                Some(0)
            }
        }
    }

    /// Removes and returns the next batch (see [`Batcher::next_group`]): items in arrival
    /// order, at least one, never more rows than the limit (an item is never larger than
    /// `max_batch_size`: larger jobs are split before they are pushed), the largest preferred
    /// size that fits when preferred sizes are set, and within the element budget unless its
    /// one item is over it alone.
    pub fn take(&mut self) -> Vec<Item<K, T>> {
        let Some(index) = self.next_group() else {
            return Vec::new();
        };
        let max = self.limits.max_batch_size;
        let padding = &self.limits.padding;
        let group = &mut self.groups[index];
        let target = if max == 0 {
            0
        } else {
            let available = group.rows.min(max);
            self.limits
                .preferred_batch_sizes
                .iter()
                .rev()
                .find(|&&p| p <= available)
                .copied()
                .unwrap_or(available)
        };
        let mut batch = Vec::new();
        let mut rows = 0;
        let mut longest = Vec::new();
        while let Some(front) = group.items.front() {
            let item_rows = front.item.rows;
            let lengths = front.item.key.lengths();
            let fits =
                rows + item_rows <= target && padding.fits(rows + item_rows, &longest, lengths);
            if !batch.is_empty() && (max == 0 || !fits) {
                break;
            }
            key::raise(&mut longest, lengths);
            let queued = group.items.pop_front().expect("front exists");
            rows += queued.item.rows;
            batch.push(queued.item);
            if max == 0 {
                break;
            }
        }
        group.rows -= rows;
        self.items -= batch.len();
        if group.items.is_empty() {
            self.groups.remove(index);
        } else {
            // Keep groups ordered by their front item's push order.
            self.groups.sort_by_key(Group::front_seq);
        }
        batch
    }
}

#[cfg(test)]
mod padded_tests;
#[cfg(test)]
mod tests;
