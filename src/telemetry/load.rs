//! The load of a worker per model, as an autoscaler needs it (docs/OPERATIONS.md, Autoscaling):
//! how long jobs are held, how many it can hold, how long its instances are busy. Part of
//! [`super::Metrics`], in the same registry.
//!
//! Labelled by model only (a served model name, a bounded set): a new version continues the
//! series, so `rate()` over a reload stays whole. Both counters are integrals over time, read with
//! `rate()`: by Little's law `rate(infermq_job_seconds_total)` is the mean number of jobs held,
//! exact between scrapes where sampling `infermq_pending_jobs` would miss a job shorter than the
//! scrape interval.

use prometheus::{Counter, CounterVec, IntGaugeVec, Opts, Registry};

/// The load series of every model.
pub struct Load {
    job_seconds: CounterVec,
    job_slots: IntGaugeVec,
    instance_busy: CounterVec,
}

fn seconds(r: &Registry, name: &str, help: &str) -> CounterVec {
    let vec = CounterVec::new(Opts::new(name, help), &["model"]).expect("valid counter opts");
    r.register(Box::new(vec.clone()))
        .expect("static metric definitions are valid and unique");
    vec
}

impl Load {
    pub fn new(r: &Registry) -> Load {
        let job_slots = IntGaugeVec::new(Opts::new("infermq_job_slots", "Most prediction jobs of the model this worker holds at once: its consumer's prefetch."), &["model"])
            .expect("valid gauge opts");
        r.register(Box::new(job_slots.clone()))
            .expect("static metric definitions are valid and unique");
        Load {
            job_seconds: seconds(r, "infermq_job_seconds_total", "Seconds prediction jobs were held by this worker, receipt to settlement, summed over jobs; rate() is the mean number of jobs held."),
            job_slots,
            instance_busy: seconds(r, "infermq_instance_busy_seconds_total", "Seconds the model's instances spent running batches, summed over instances; rate() is the number of busy instances."),
        }
    }

    /// The counters of a served model, created at zero (the slots gauge too, until its consumer
    /// sets it).
    pub(super) fn model(&self, model: &str) -> LoadSeries {
        self.job_slots.with_label_values(&[model]);
        LoadSeries {
            job_seconds: self.job_seconds.with_label_values(&[model]),
            instance_busy: self.instance_busy.with_label_values(&[model]),
        }
    }

    /// Sets `infermq_job_slots`: the prefetch of the model's consumer.
    pub fn set_job_slots(&self, model: &str, slots: u16) {
        self.job_slots
            .with_label_values(&[model])
            .set(i64::from(slots));
    }
}

/// The load counters of one model, resolved once per loaded version.
pub(super) struct LoadSeries {
    pub(super) job_seconds: Counter,
    pub(super) instance_busy: Counter,
}
