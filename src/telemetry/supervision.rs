//! Counters of the worker's self-repair: consumers restarted, queues the broker refused to
//! declare, inference instances replaced. Part of [`super::Metrics`], in the same registry.
//!
//! Labels are served model names and versions (a bounded set, never producer text); the
//! training queue is counted under `model="training"`.

use prometheus::{IntCounterVec, Opts, Registry};

/// The supervision counters.
pub struct Supervision {
    consumer_restarts: IntCounterVec,
    queue_declare_failures: IntCounterVec,
    instance_restarts: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter opts");
    r.register(Box::new(vec.clone()))
        .expect("static metric definitions are valid and unique");
    vec
}

impl Supervision {
    pub fn new(r: &Registry) -> Supervision {
        Supervision {
            consumer_restarts: counter(r, "infermq_consumer_restarts_total", "Prediction consumers restarted after they ended on their own (channel closed or consumer cancelled by the broker).", &["model"]),
            queue_declare_failures: counter(r, "infermq_queue_declare_failures_total", "Attempts to declare a model's queue (or the training queue, model=\"training\") that the broker refused.", &["model"]),
            instance_restarts: counter(r, "infermq_instance_restarts_total", "Inference instances replaced after their thread panicked.", &["model", "version"]),
        }
    }

    /// Creates the series of a served model version at zero.
    pub fn touch(&self, model: &str, version: &str) {
        self.consumer_restarts.with_label_values(&[model]);
        self.queue_declare_failures.with_label_values(&[model]);
        self.instance_restarts.with_label_values(&[model, version]);
    }

    /// Removes the series of an unloaded version (the per-model ones stay).
    pub fn remove_version(&self, model: &str, version: &str) {
        let _ = self
            .instance_restarts
            .remove_label_values(&[model, version]);
    }

    pub fn consumer_restart(&self, model: &str) {
        self.consumer_restarts.with_label_values(&[model]).inc();
    }

    pub fn queue_declare_failure(&self, model: &str) {
        self.queue_declare_failures
            .with_label_values(&[model])
            .inc();
    }

    pub fn instance_restart(&self, model: &str, version: &str) {
        self.instance_restarts
            .with_label_values(&[model, version])
            .inc();
    }
}
