//! The batching policy: pure decisions over a queue of pending items, with `now` passed in.
//!
//! Items are jobs (or chunks of jobs larger than `max_batch_size`), each with a row count and a
//! shape key: items whose non-batch dimensions differ get different keys and are never mixed.
//!
//! The policy is work-conserving. When an instance is idle it gets a batch at once, made of
//! everything that is waiting (up to `max_batch_size` rows): under light load a job runs alone
//! without waiting out a delay, and under heavy load jobs pile up while every instance is busy,
//! so batches grow by themselves. The only time an idle instance waits is when the model asks for
//! `preferred_batch_sizes`: then a batch smaller than the smallest preferred size waits for more
//! jobs, but never longer than `max_queue_delay` after its oldest job arrived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The limits of one model version's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// Rows per batch; 0 means the model has no batch dimension: one item per batch.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// Sorted ascending, each ≤ `max_batch_size`.
    pub preferred_batch_sizes: Vec<usize>,
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
        }
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

#[derive(Debug)]
struct Group<K, T> {
    key: K,
    rows: usize,
    items: VecDeque<Item<K, T>>,
}

/// Pending items of one model version, grouped by shape key, oldest group first.
#[derive(Debug)]
pub struct Batcher<K, T> {
    limits: BatchLimits,
    groups: Vec<Group<K, T>>,
    items: usize,
}

impl<K: PartialEq + Clone, T> Batcher<K, T> {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            groups: Vec::new(),
            items: 0,
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

    /// Adds an item behind the others of its key.
    pub fn push(&mut self, item: Item<K, T>) {
        self.items += 1;
        match self.groups.iter_mut().find(|g| g.key == item.key) {
            Some(group) => {
                group.rows += item.rows;
                group.items.push_back(item);
            }
            None => self.groups.push(Group {
                key: item.key.clone(),
                rows: item.rows,
                items: VecDeque::from([item]),
            }),
        }
    }

    /// True when some group holds a full batch.
    pub fn is_full(&self) -> bool {
        self.full_group().is_some()
    }

    fn full_group(&self) -> Option<usize> {
        let max = self.limits.max_batch_size;
        self.groups.iter().position(|g| max == 0 || g.rows >= max)
    }

    /// The group whose front item is oldest (groups are kept in that order).
    fn oldest_group(&self) -> Option<&Group<K, T>> {
        self.groups.first()
    }

    /// When the oldest pending item has waited `max_queue_delay`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.oldest_group()?.items.front()?;
        Some(oldest.arrived + self.limits.max_queue_delay)
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

    /// Removes and returns the next batch: from a full group if there is one, else from the
    /// oldest; items in arrival order, at least one, never more rows than the limit (an item is
    /// never larger than `max_batch_size`: larger jobs are split before they are pushed), and the
    /// largest preferred size that fits when preferred sizes are set.
    pub fn take(&mut self) -> Vec<Item<K, T>> {
        let Some(index) = self.full_group().or(if self.groups.is_empty() {
            None
        } else {
            Some(0)
        }) else {
            return Vec::new();
        };
        let max = self.limits.max_batch_size;
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
        while let Some(front) = group.items.front() {
            let fits = rows + front.rows <= target;
            if !batch.is_empty() && (max == 0 || !fits) {
                break;
            }
            let item = group.items.pop_front().expect("front exists");
            rows += item.rows;
            batch.push(item);
            if max == 0 {
                break;
            }
        }
        group.rows -= rows;
        self.items -= batch.len();
        if group.items.is_empty() {
            self.groups.remove(index);
        } else {
            // Keep groups ordered by their front item's arrival.
            self.groups
                .sort_by_key(|g| g.items.front().map(|i| i.arrived));
        }
        batch
    }
}

#[cfg(test)]
mod tests;
