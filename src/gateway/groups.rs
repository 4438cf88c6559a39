//! When gathered requests leave (pure, generic over the key and the request): per key, at most
//! `window` jobs are in flight; a request that finds fewer goes at once (a lone request is never
//! delayed, unless `gather_delay_us` asks for a hold); the others wait, and when a job of their
//! key is answered, everything waiting leaves as one job, bounded by the model's
//! `max_batch_size` rows, a byte budget and a number of requests. The caller passes `now` and owns the I/O.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What a group may hold: rows (the model's `max_batch_size`), bytes of inputs, and requests
/// (each traced request is one span link of the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_requests: usize,
}

/// What to do with a request that arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Publish these now (one job).
    Send(Vec<T>),
    /// Wait: a job of the same key will take it when it is answered.
    Wait,
    /// Wait until this instant, then call [`Gathering::release`] (`gather_delay_us`).
    Hold(Instant),
}

struct Waiting<T> {
    item: T,
    rows: usize,
    bytes: usize,
}

struct Group<T> {
    in_flight: usize,
    waiting: VecDeque<Waiting<T>>,
    limits: Limits,
    rows: usize,
    bytes: usize,
    held: bool,
}

impl<T> Group<T> {
    fn full(&self) -> bool {
        self.rows >= self.limits.max_rows
            || self.bytes >= self.limits.max_bytes
            || self.waiting.len() >= self.limits.max_requests
    }

    /// The waiting items that fit one job, oldest first (always at least one).
    fn take(&mut self) -> Vec<T> {
        let mut rows = 0;
        let mut bytes = 0;
        let mut out = Vec::new();
        while let Some(next) = self.waiting.front() {
            let fits = rows + next.rows <= self.limits.max_rows
                && bytes + next.bytes <= self.limits.max_bytes
                && out.len() < self.limits.max_requests;
            if !out.is_empty() && !fits {
                break;
            }
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            rows += w.rows;
            bytes += w.bytes;
            out.push(w.item);
        }
        self.rows -= rows;
        self.bytes -= bytes;
        self.in_flight += 1;
        out
    }
}

/// Per key: jobs in flight and the requests waiting to go together.
pub struct Gathering<K, T> {
    window: usize,
    delay: Duration,
    groups: HashMap<K, Group<T>>,
}

impl<K: Hash + Eq + Clone, T> Gathering<K, T> {
    /// At most `window` jobs in flight per key; a request that finds fewer goes at once, or is
    /// held `delay` for others.
    pub fn new(window: usize, delay: Duration) -> Gathering<K, T> {
        Gathering {
            window: window.max(1),
            delay,
            groups: HashMap::new(),
        }
    }

    /// A request of `rows` rows and `bytes` bytes arrived for `key`.
    pub fn arrive(
        &mut self,
        key: &K,
        item: T,
        rows: usize,
        bytes: usize,
        limits: Limits,
        now: Instant,
    ) -> Arrival<T> {
        let window = self.window;
        let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
            in_flight: 0,
            waiting: VecDeque::new(),
            limits,
            rows: 0,
            bytes: 0,
            held: false,
        });
        group.limits = limits;
        group.waiting.push_back(Waiting { item, rows, bytes });
        group.rows += rows;
        group.bytes += bytes;
        if group.in_flight >= window {
            return Arrival::Wait;
        }
        if self.delay.is_zero() || group.full() {
            group.held = false;
            return Arrival::Send(group.take());
        }
        if group.held {
            return Arrival::Wait;
        }
        group.held = true;
        Arrival::Hold(now + self.delay)
    }

    /// The hold of `key` ended: what waits goes, if a job may leave.
    pub fn release(&mut self, key: &K) -> Option<Vec<T>> {
        let window = self.window;
        let group = self.groups.get_mut(key)?;
        if !group.held {
            return None;
        }
        group.held = false;
        (group.in_flight < window && !group.waiting.is_empty()).then(|| group.take())
    }

    /// A job of `key` was answered: the jobs to publish now from what waits.
    pub fn finished(&mut self, key: &K) -> Vec<Vec<T>> {
        let window = self.window;
        let Some(group) = self.groups.get_mut(key) else {
            return Vec::new();
        };
        group.in_flight = group.in_flight.saturating_sub(1);
        let mut jobs = Vec::new();
        while group.in_flight < window && !group.waiting.is_empty() {
            jobs.push(group.take());
        }
        group.held = false;
        if group.in_flight == 0 && group.waiting.is_empty() {
            self.groups.remove(key);
        }
        jobs
    }

    /// Keys with jobs in flight or requests waiting.
    #[cfg(test)]
    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
#[path = "groups_tests.rs"]
mod tests;
