//! Metrics over predictions: `accuracy` for classification losses, `mse` and `mae` for `mse`.
//!
//! Accuracy is the share of rows whose arg-max matches the target's for softmax outputs, and the
//! share of outputs on the right side of 0.5 for sigmoid (binary) outputs.

use std::collections::BTreeMap;

use super::job::Loss;

/// Running sums over the batches of one pass.
#[derive(Debug, Clone)]
pub struct Accumulator {
    loss: Loss,
    units: usize,
    rows: usize,
    loss_sum: f64,
    hits: f64,
    hit_count: f64,
    abs_sum: f64,
    sq_sum: f64,
}

impl Accumulator {
    pub fn new(loss: Loss, units: usize) -> Self {
        Accumulator {
            loss,
            units,
            rows: 0,
            loss_sum: 0.0,
            hits: 0.0,
            hit_count: 0.0,
            abs_sum: 0.0,
            sq_sum: 0.0,
        }
    }

    /// Adds one batch: its mean loss, predictions and targets (both `rows × units`).
    pub fn add(&mut self, batch_loss: f64, pred: &[f32], target: &[f32]) {
        let rows = pred.len() / self.units.max(1);
        self.rows += rows;
        self.loss_sum += batch_loss * rows as f64;
        match self.loss {
            Loss::Mse => {
                for (&p, &t) in pred.iter().zip(target) {
                    let d = (p - t) as f64;
                    self.abs_sum += d.abs();
                    self.sq_sum += d * d;
                }
            }
            Loss::BinaryCrossentropy => {
                for (&p, &t) in pred.iter().zip(target) {
                    self.hits += f64::from(u8::from((p >= 0.5) == (t >= 0.5)));
                    self.hit_count += 1.0;
                }
            }
            Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy => {
                for (p, t) in pred.chunks(self.units).zip(target.chunks(self.units)) {
                    self.hits += f64::from(u8::from(argmax(p) == argmax(t)));
                    self.hit_count += 1.0;
                }
            }
        }
    }

    /// Mean loss over the rows seen.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }

    /// `loss` and the loss's metrics, keys prefixed with `prefix` (`""` or `"val_"`).
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        m.insert(format!("{prefix}loss"), self.loss());
        if self.loss == Loss::Mse {
            let n = (self.rows * self.units).max(1) as f64;
            m.insert(format!("{prefix}mse"), self.sq_sum / n);
            m.insert(format!("{prefix}mae"), self.abs_sum / n);
        } else {
            m.insert(
                format!("{prefix}accuracy"),
                self.hits / self.hit_count.max(1.0),
            );
        }
        m
    }
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_accuracy_counts_argmax_hits() {
        let mut a = Accumulator::new(Loss::SparseCategoricalCrossentropy, 3);
        a.add(
            0.5,
            &[0.7, 0.2, 0.1, 0.1, 0.1, 0.8],
            &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        a.add(1.5, &[0.1, 0.1, 0.8], &[0.0, 0.0, 1.0]);
        let m = a.metrics("val_");
        assert_eq!(m["val_accuracy"], 2.0 / 3.0);
        assert!((m["val_loss"] - (0.5 * 2.0 + 1.5) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn regression_reports_mse_and_mae() {
        let mut a = Accumulator::new(Loss::Mse, 1);
        a.add(2.5, &[1.0, 3.0], &[2.0, 1.0]);
        let m = a.metrics("");
        assert_eq!((m["mse"], m["mae"]), (2.5, 1.5));
        assert!(!m.contains_key("accuracy"));
    }

    #[test]
    fn binary_accuracy_thresholds_at_one_half() {
        let mut a = Accumulator::new(Loss::BinaryCrossentropy, 1);
        a.add(0.1, &[0.9, 0.4, 0.6, 0.2], &[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(a.metrics("")["accuracy"], 0.5);
    }
}
