//! Pure accounting for one load run: which jobs were published, which were answered (once, twice,
//! never), how long each answer took, and the report that sums it up.
//!
//! No I/O and no clock of its own: every event carries the `Instant` it happened at, so the
//! accounting is tested with made-up times.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One result as the reply consumer saw it, already decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The job index from `correlation_id`; `None` when it was missing or not a number.
    pub index: Option<u64>,
    /// When the result arrived.
    pub at: Instant,
    /// `x-error-code` (or the body's `code`) for an error result.
    pub error_code: Option<String>,
    /// `parameters.batch_size` of a successful result, when the worker sent one.
    pub batch_size: Option<f64>,
}

/// What [`Tracker::on_result`] made of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// The first result for a job that was published.
    First,
    /// Another result for a job that was already answered (or already failed to publish).
    Duplicate,
    /// A result whose correlation id names no published job.
    Unexpected,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The summary of one run against one queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// `echo` or `model`.
    pub label: String,
    /// The queue the jobs went to.
    pub queue: String,
    /// `window=W` or `rate=J/s`.
    pub mode: String,
    /// Jobs asked for.
    pub jobs: u64,
    /// Rows per job.
    pub rows_per_job: u64,
    /// Rows asked for (`jobs × rows_per_job`).
    pub rows: u64,
    /// Jobs published (fewer than `jobs` only when the run gave up).
    pub published: u64,
    /// Jobs with at least one result, successful or not.
    pub answered: u64,
    /// Jobs whose first result was successful; throughput and latency count only these.
    pub ok: u64,
    /// From the first publish to the last first-result.
    pub duration_s: f64,
    pub jobs_per_s: f64,
    pub rows_per_s: f64,
    /// Achieved publish rate (jobs/s) from the first to the last publish.
    pub publish_rate: f64,
    pub latency_ms: LatencyMs,
    /// Error results by `x-error-code`, plus `publish_returned` / `publish_nacked` for jobs the
    /// broker refused.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Published jobs without any result when the run ended.
    pub lost: u64,
    /// Results beyond the first for a job.
    pub duplicated: u64,
    /// Results whose correlation id names no published job.
    pub unexpected: u64,
    /// Mean of `parameters.batch_size` over successful results that carry it.
    pub batch_size_mean: Option<f64>,
}

/// Running account of a load run.
#[derive(Debug)]
pub struct Tracker {
    sent: Vec<Option<Instant>>,
    /// Results (or publish failures) seen per job, saturating.
    seen: Vec<u8>,
    latencies_us: Vec<u64>,
    errors_by_code: BTreeMap<String, u64>,
    published: u64,
    settled: u64,
    answered: u64,
    duplicated: u64,
    unexpected: u64,
    batch_sum: f64,
    batch_count: u64,
    first_publish: Option<Instant>,
    last_publish: Option<Instant>,
    last_first_result: Option<Instant>,
}

/// A job ends (frees its window slot) at its first result or when the broker refuses it.
impl Tracker {
    pub fn new(jobs: u64) -> Self {
        let n = usize::try_from(jobs).unwrap_or(usize::MAX);
        Tracker {
            sent: vec![None; n],
            seen: vec![0; n],
            latencies_us: Vec::with_capacity(n),
            errors_by_code: BTreeMap::new(),
            published: 0,
            settled: 0,
            answered: 0,
            duplicated: 0,
            unexpected: 0,
            batch_sum: 0.0,
            batch_count: 0,
            first_publish: None,
            last_publish: None,
            last_first_result: None,
        }
    }

    pub fn jobs(&self) -> u64 {
        self.sent.len() as u64
    }

    /// Published jobs that have neither a result nor a publish failure yet.
    pub fn outstanding(&self) -> u64 {
        self.published - self.settled
    }

    /// Every job published and settled.
    pub fn is_complete(&self) -> bool {
        self.published == self.jobs() && self.outstanding() == 0
    }

    /// Records that job `index` was handed to the broker at `at`. Indices outside the run or
    /// published twice are ignored.
    pub fn on_publish(&mut self, index: u64, at: Instant) {
        let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.sent.get_mut(i))
        else {
            return;
        };
        if slot.is_some() {
            return;
        }
        *slot = Some(at);
        self.published += 1;
        self.first_publish.get_or_insert(at);
        self.last_publish = Some(at);
    }

    /// Records that the broker refused job `index` (returned or nacked); it will get no result.
    pub fn on_publish_failed(&mut self, index: u64, code: &str) {
        let Some(i) = self.published_slot(index) else {
            return;
        };
        if self.seen[i] == 0 {
            self.settled += 1;
        }
        self.seen[i] = self.seen[i].saturating_add(1);
        *self.errors_by_code.entry(code.to_owned()).or_insert(0) += 1;
    }

    /// Records a result and says whether it settled a job.
    pub fn on_result(&mut self, outcome: &Outcome) -> ResultKind {
        let Some(i) = outcome.index.and_then(|index| self.published_slot(index)) else {
            self.unexpected += 1;
            return ResultKind::Unexpected;
        };
        let before = self.seen[i];
        self.seen[i] = before.saturating_add(1);
        if before > 0 {
            self.duplicated += 1;
            return ResultKind::Duplicate;
        }
        self.settled += 1;
        self.answered += 1;
        self.last_first_result = Some(outcome.at);
        match &outcome.error_code {
            Some(code) => *self.errors_by_code.entry(code.clone()).or_insert(0) += 1,
            None => {
                let sent = self.sent[i].unwrap_or(outcome.at);
                let micros = outcome.at.saturating_duration_since(sent).as_micros();
                self.latencies_us
                    .push(u64::try_from(micros).unwrap_or(u64::MAX));
                if let Some(size) = outcome.batch_size.filter(|s| s.is_finite()) {
                    self.batch_sum += size;
                    self.batch_count += 1;
                }
            }
        }
        ResultKind::First
    }

    fn published_slot(&self, index: u64) -> Option<usize> {
        let i = usize::try_from(index).ok()?;
        self.sent.get(i)?.as_ref()?;
        Some(i)
    }

    /// Sums the run up. `now` is used for the duration only when no job was ever answered.
    pub fn report(
        mut self,
        label: &str,
        queue: &str,
        mode: &str,
        rows_per_job: u64,
        now: Instant,
    ) -> BenchReport {
        let ok = self.latencies_us.len() as u64;
        let duration = match (self.first_publish, self.last_first_result) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            (Some(first), None) => now.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        let duration_s = duration.as_secs_f64();
        let per_s = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            }
        };
        let publish_rate = match (self.first_publish, self.last_publish) {
            (Some(first), Some(last)) if self.published > 1 && last > first => {
                (self.published - 1) as f64 / last.duration_since(first).as_secs_f64()
            }
            _ => 0.0,
        };
        self.latencies_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let latency_ms = LatencyMs {
            p50: ms(percentile(&self.latencies_us, 50.0)),
            p90: ms(percentile(&self.latencies_us, 90.0)),
            p99: ms(percentile(&self.latencies_us, 99.0)),
            max: ms(self.latencies_us.last().copied().unwrap_or(0)),
        };
        BenchReport {
            label: label.to_owned(),
            queue: queue.to_owned(),
            mode: mode.to_owned(),
            jobs: self.jobs(),
            rows_per_job,
            rows: self.jobs() * rows_per_job,
            published: self.published,
            answered: self.answered,
            ok,
            duration_s,
            jobs_per_s: per_s(ok),
            rows_per_s: per_s(ok * rows_per_job),
            publish_rate,
            latency_ms,
            errors_by_code: self.errors_by_code,
            lost: self.published - self.settled,
            duplicated: self.duplicated,
            unexpected: self.unexpected,
            batch_size_mean: (self.batch_count > 0)
                .then(|| self.batch_sum / self.batch_count as f64),
        }
    }
}

/// Nearest-rank percentile of an ascending slice (`p` in 0..=100); 0 for an empty slice.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(index: u64, at: Instant) -> Outcome {
        Outcome {
            index: Some(index),
            at,
            error_code: None,
            batch_size: None,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 51.0), 3);
    }

    #[test]
    fn latencies_and_throughput_come_from_publish_and_arrival_times() {
        let t0 = Instant::now();
        let mut t = Tracker::new(4);
        for i in 0..4 {
            t.on_publish(i, t0 + Duration::from_millis(i * 10));
        }
        // Job i answered (i + 1) * 5 ms after its publish.
        for i in 0..4 {
            let at = t0 + Duration::from_millis(i * 10 + (i + 1) * 5);
            assert_eq!(t.on_result(&ok(i, at)), ResultKind::First);
        }
        assert!(t.is_complete());
        let r = t.report("echo", "q", "window=4", 3, t0 + Duration::from_secs(9));
        assert_eq!((r.ok, r.answered, r.lost, r.duplicated), (4, 4, 0, 0));
        assert_eq!(
            r.latency_ms,
            LatencyMs {
                p50: 10.0,
                p90: 20.0,
                p99: 20.0,
                max: 20.0
            }
        );
        // Last answer at 30 + 20 = 50 ms after the first publish.
        assert!((r.duration_s - 0.050).abs() < 1e-9);
        assert!((r.jobs_per_s - 80.0).abs() < 1e-6);
        assert!((r.rows_per_s - 240.0).abs() < 1e-6);
        // Four publishes 10 ms apart: 3 intervals in 30 ms.
        assert!((r.publish_rate - 100.0).abs() < 1e-6);
        assert_eq!(r.rows, 12);
    }

    #[test]
    fn duplicates_lost_and_unexpected_are_counted_apart() {
        let t0 = Instant::now();
        let mut t = Tracker::new(5);
        for i in 0..4 {
            t.on_publish(i, t0);
        }
        t.on_publish(2, t0); // a second publish of the same index is ignored
        assert_eq!(t.published, 4);
        assert_eq!(t.on_result(&ok(0, t0)), ResultKind::First);
        assert_eq!(t.on_result(&ok(0, t0)), ResultKind::Duplicate);
        assert_eq!(t.on_result(&ok(0, t0)), ResultKind::Duplicate);
        assert_eq!(t.on_result(&ok(4, t0)), ResultKind::Unexpected); // never published
        assert_eq!(t.on_result(&ok(99, t0)), ResultKind::Unexpected);
        let no_id = Outcome {
            index: None,
            ..ok(0, t0)
        };
        assert_eq!(t.on_result(&no_id), ResultKind::Unexpected);
        t.on_publish_failed(1, "publish_returned");
        assert_eq!(t.on_result(&ok(1, t0)), ResultKind::Duplicate);
        assert_eq!(t.outstanding(), 2);
        assert!(!t.is_complete());
        let r = t.report("model", "q", "window=2", 1, t0);
        assert_eq!(r.lost, 2);
        assert_eq!(r.duplicated, 3);
        assert_eq!(r.unexpected, 3);
        assert_eq!(r.answered, 1);
        assert_eq!(r.published, 4);
        assert_eq!(r.errors_by_code.get("publish_returned"), Some(&1));
    }

    #[test]
    fn errors_are_counted_by_code_and_excluded_from_latency() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3);
        for i in 0..3 {
            t.on_publish(i, t0);
        }
        let err = |i| Outcome {
            error_code: Some("unknown_model".into()),
            ..ok(i, t0 + Duration::from_millis(50))
        };
        t.on_result(&err(0));
        t.on_result(&err(1));
        t.on_result(&Outcome {
            batch_size: Some(8.0),
            ..ok(2, t0 + Duration::from_millis(1))
        });
        let r = t.report("model", "q", "rate=10/s", 1, t0);
        assert_eq!(r.errors_by_code.get("unknown_model"), Some(&2));
        assert_eq!((r.ok, r.answered, r.lost), (1, 3, 0));
        assert_eq!(r.latency_ms.max, 1.0);
        assert_eq!(r.batch_size_mean, Some(8.0));
    }

    #[test]
    fn batch_size_mean_is_over_results_that_carry_it() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3);
        for (i, size) in [(0, Some(4.0)), (1, None), (2, Some(8.0))] {
            t.on_publish(i, t0);
            t.on_result(&Outcome {
                batch_size: size,
                ..ok(i, t0)
            });
        }
        assert_eq!(t.report("m", "q", "", 1, t0).batch_size_mean, Some(6.0));
        assert_eq!(
            Tracker::new(0).report("m", "q", "", 1, t0).batch_size_mean,
            None
        );
    }

    #[test]
    fn nothing_answered_reports_everything_lost() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3);
        t.on_publish(0, t0);
        t.on_publish(1, t0);
        let r = t.report("model", "q", "", 1, t0 + Duration::from_secs(2));
        assert_eq!((r.lost, r.ok, r.published), (2, 0, 2));
        assert_eq!(r.jobs_per_s, 0.0);
        assert!((r.duration_s - 2.0).abs() < 1e-9);
    }
}
