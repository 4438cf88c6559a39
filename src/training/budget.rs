//! What one training job may cost: the worker's `[training]` limits, as pure policy.
//!
//! Before training, [`Budget::check`] refuses a job whose network or work is too large (it needs
//! only the job and the data's shape). While training, the engine asks [`Progress`] whether an
//! epoch's report is sent (the first, then at most one per `progress_interval`, and always the
//! last) and keeps the history in a [`History`] that never holds more than twice `max_history`
//! entries and ends with at most `max_history`; it ends the run when `max_duration` has passed.

use std::time::{Duration, Instant};

use crate::onnx::Signature;

use super::error::TrainingError;
use super::files::DataLimits;
use super::job::TrainJob;
use super::spec::Layer;

/// What the worker allows one job: where its data may come from, what it may cost, and the
/// signature its model version must keep (see `admission.rs`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub data: DataLimits,
    pub budget: Budget,
    /// The signature of the model's newest version; `None` for a new model.
    pub served: Option<Signature>,
}

impl Rules {
    /// Any file, no budget, any signature (tools and tests that train their own jobs).
    pub fn unrestricted() -> Rules {
        Rules {
            data: DataLimits::unrestricted(),
            budget: Budget::unlimited(),
            served: None,
        }
    }
}

/// The worker's training limits (`training.max_*`, `training.progress_interval_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Weights and biases of the dense network.
    pub max_parameters: u64,
    /// Training rows × epochs × parameters.
    pub max_work: u64,
    /// Wall time of one job, from the start of training to its last epoch.
    pub max_duration: Duration,
    /// Least time between two progress messages (the first and last epochs are always sent).
    pub progress_interval: Duration,
    /// Most entries in a result's `history`; at least 2.
    pub max_history: usize,
}

impl Default for Budget {
    /// The defaults of `config/default.toml`.
    fn default() -> Budget {
        Budget {
            max_parameters: 10_000_000,
            max_work: 1_000_000_000_000,
            max_duration: Duration::from_secs(3600),
            progress_interval: Duration::from_secs(1),
            max_history: 1000,
        }
    }
}

impl From<&crate::config::TrainingSettings> for Budget {
    fn from(s: &crate::config::TrainingSettings) -> Budget {
        Budget {
            max_parameters: s.max_parameters,
            max_work: s.max_work,
            max_duration: Duration::from_millis(s.max_duration_ms),
            progress_interval: Duration::from_millis(s.progress_interval_ms),
            max_history: s.max_history,
        }
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn over(field: &str, message: String) -> TrainingError {
    TrainingError::OverBudget {
        field: field.to_string(),
        message,
    }
}

/// Weights and biases of a dense network on `features` inputs (exact: no overflow in u128).
pub fn parameters(features: usize, layers: &[Layer]) -> u128 {
    let mut inputs = features as u128;
    let mut total = 0u128;
    for layer in layers {
        let units = layer.units as u128;
        total += inputs * units + units;
        inputs = units;
    }
    total
}

impl Budget {
    /// No limits, every epoch reported and kept (tools and tests that train their own jobs).
    pub fn unlimited() -> Budget {
        Budget {
            max_parameters: u64::MAX,
            max_work: u64::MAX,
            max_duration: Duration::MAX,
            progress_interval: Duration::ZERO,
            max_history: usize::MAX,
        }
    }

    /// Refuses a job whose network or work exceeds the limits, for data of `rows` rows with
    /// `features` columns; the message names the configuration key.
    pub fn check(&self, job: &TrainJob, rows: usize, features: usize) -> Result<(), TrainingError> {
        let params = parameters(features, &job.layers);
        if params > u128::from(self.max_parameters) {
            return Err(over(
                "layers",
                format!(
                    "{} parameters exceed training.max_parameters = {}",
                    grouped(params),
                    self.max_parameters
                ),
            ));
        }
        let work = (rows as u128) * (job.epochs as u128) * params;
        if work > u128::from(self.max_work) {
            return Err(over(
                "epochs",
                format!(
                    "{} rows × {} epochs × {} parameters = {} exceed training.max_work = {}",
                    grouped(rows as u128),
                    grouped(job.epochs as u128),
                    grouped(params),
                    grouped(work),
                    self.max_work
                ),
            ));
        }
        Ok(())
    }

    /// The error that ends a job past `max_duration`.
    pub fn timed_out(&self, epochs_done: usize, epochs: usize) -> TrainingError {
        over(
            "epochs",
            format!(
                "exceeded training.max_duration_ms = {} after {epochs_done} of {epochs} epochs",
                self.max_duration.as_millis()
            ),
        )
    }
}

/// Which epochs' reports are sent as progress messages.
#[derive(Debug)]
pub struct Progress {
    interval: Duration,
    last_sent: Option<Instant>,
}

impl Progress {
    pub fn new(interval: Duration) -> Progress {
        Progress {
            interval,
            last_sent: None,
        }
    }

    /// Whether an epoch's report ending at `now` is sent: the first, then one per interval.
    /// The caller sends the last epoch's report regardless (see [`Progress::sent_last`]).
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if due {
            self.last_sent = Some(now);
        }
        due
    }
}

/// A run's history, thinned as it grows: entries are kept every `stride` epochs, and the stride
/// doubles whenever more than `2 × max` are held.
#[derive(Debug)]
pub struct History<T> {
    max: usize,
    stride: usize,
    entries: Vec<(usize, T)>,
    last: Option<(usize, T)>,
}

impl<T> History<T> {
    pub fn new(max: usize) -> History<T> {
        History {
            max: max.max(2),
            stride: 1,
            entries: Vec::new(),
            last: None,
        }
    }

    /// Adds epoch `index` (0-based, in order).
    pub fn push(&mut self, index: usize, entry: T) {
        if !index.is_multiple_of(self.stride) {
            self.last = Some((index, entry));
            return;
        }
        self.last = None;
        self.entries.push((index, entry));
        if self.entries.len() > self.max.saturating_mul(2) {
            self.stride = self.stride.saturating_mul(2);
            let stride = self.stride;
            if !index.is_multiple_of(stride) {
                self.last = self.entries.pop();
            }
            self.entries.retain(|(i, _)| i.is_multiple_of(stride));
        }
    }

    /// At most `max` entries, evenly spread, always with the first and the last.
    pub fn finish(mut self) -> Vec<T> {
        self.entries.extend(self.last.take());
        let n = self.entries.len();
        if n <= self.max {
            return self.entries.into_iter().map(|(_, e)| e).collect();
        }
        let m = self.max;
        let keep: Vec<usize> = (0..m)
            .map(|k| (k * (n - 1) + (m - 1) / 2) / (m - 1))
            .collect();
        let mut next = 0;
        self.entries
            .into_iter()
            .enumerate()
            .filter_map(|(i, (_, e))| {
                (next < keep.len() && keep[next] == i).then(|| {
                    next += 1;
                    e
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
