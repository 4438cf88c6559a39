//! Prometheus metrics of a worker: one [`Metrics`] owns one `prometheus::Registry`.
//!
//! Shared as `Arc<Metrics>` (no globals), so a test can build its own and assert on
//! [`Metrics::render`]. The hot path (decode → batch → run → publish) goes through a
//! [`ModelMetrics`] resolved once per model version: every child series is looked up when the
//! version is loaded, never per job. Labels are `model`, `version` and `outcome`, and the
//! bounded `tenant` of [`super::tenants`]; job ids never become labels. `docs/METRICS.md`
//! lists every series and example queries.

pub use super::outcome::Outcome;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

/// Latency buckets (seconds) shared by every per-job timing: fixed, 100 µs … 30 s, so that
/// histograms from a whole fleet sum before `histogram_quantile`.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Model load time buckets (seconds): large models can take a minute.
pub const LOAD_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Training duration buckets (seconds): a toy job takes a second, a real one an hour.
pub const TRAINING_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Every metric family of a worker, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    rows: IntCounterVec,
    batch_rows: HistogramVec,
    queue_wait: HistogramVec,
    batch_assembly: HistogramVec,
    compute: HistogramVec,
    publish: HistogramVec,
    end_to_end: HistogramVec,
    pending: IntGaugeVec,
    inflight: IntGaugeVec,
    model_load: HistogramVec,
    model_load_failures: IntCounterVec,
    warmup_failures: IntCounterVec,
    model_loaded: IntGaugeVec,
    broker_connected: IntGauge,
    broker_reconnects: IntCounter,
    /// `infermq_broker_node_info`: the node connected to.
    pub broker_node: super::broker_node::BrokerNode,
    results_returned: IntCounterVec,
    redeliveries: IntCounterVec,
    training_jobs: IntCounterVec,
    training_samples: IntCounterVec,
    training_seconds: HistogramVec,
    training_in_progress: IntGauge,
    /// Consumer restarts, refused queue declarations, instance restarts.
    pub supervision: super::supervision::Supervision,
    /// Jobs held, job slots, instance busy time: the autoscaling signal.
    pub load: super::load::Load,
    /// Tokens, time to first token and per token, the generation engines' state.
    pub generation: super::generation::Generation,
    /// Jobs, rows, tokens and compute seconds by model and tenant.
    pub tenants: super::tenants::Tenants,
}

const MV: &[&str] = &["model", "version"];

/// Registers a collector; the names and label sets are static, so a failure is a bug here.
fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("static metric definitions are valid and unique");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter opts");
    reg(r, vec)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge opts");
    reg(r, vec)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let vec = HistogramVec::new(opts, labels).expect("valid histogram opts");
    reg(r, vec)
}

fn latency(r: &Registry, name: &str, help: &str) -> HistogramVec {
    histogram_vec(r, name, help, LATENCY_BUCKETS.to_vec(), MV)
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, … of this process, read from
/// `/proc` at each scrape (Linux only; elsewhere there is no such collector).
fn register_process_collector(r: &Registry) {
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("the process collector registers once per registry");
    #[cfg(not(target_os = "linux"))]
    let _ = r;
}

impl Metrics {
    /// Registers every family and the `process_*` collector (CPU, memory, open files of this
    /// process) and sets `infermq_build_info{version, ort_version} 1`.
    pub fn new(build_version: &str, ort_version: &str) -> Metrics {
        let r = Registry::new();
        register_process_collector(&r);
        let batch_buckets = exponential_buckets(1.0, 2.0, 11).expect("1, 2, 4 … 1024");
        let build_info = gauge_vec(
            &r,
            "infermq_build_info",
            "Build of this worker; always 1, the labels carry the versions.",
            &["version", "ort_version"],
        );
        build_info
            .with_label_values(&[build_version, ort_version])
            .set(1);
        Metrics {
            jobs: counter_vec(&r, "infermq_jobs_total", "Prediction jobs handled, by outcome: success, the error code answered, requeued or dead_lettered.", &["model", "version", "outcome"]),
            rows: counter_vec(&r, "infermq_rows_total", "Rows (dimension 0) of prediction jobs run.", MV),
            batch_rows: histogram_vec(&r, "infermq_batch_rows", "Rows per batch run on ONNX Runtime.", batch_buckets, MV),
            queue_wait: latency(&r, "infermq_queue_wait_seconds", "Time from receipt of a job to the start of the batch that runs it."),
            batch_assembly: latency(&r, "infermq_batch_assembly_seconds", "Time to concatenate a batch's jobs into input tensors."),
            compute: latency(&r, "infermq_compute_seconds", "ONNX Runtime run time per batch."),
            publish: latency(&r, "infermq_publish_seconds", "Time to publish a result until the broker confirms it."),
            end_to_end: latency(&r, "infermq_end_to_end_seconds", "Time from receipt of a job to its confirmed result."),
            pending: gauge_vec(&r, "infermq_pending_jobs", "Jobs received by this worker and not yet answered.", MV),
            inflight: gauge_vec(&r, "infermq_inflight_batches", "Batches running on ONNX Runtime now.", MV),
            model_load: histogram_vec(&r, "infermq_model_load_seconds", "Time to load a model version into ONNX Runtime sessions.", LOAD_BUCKETS.to_vec(), MV),
            model_load_failures: counter_vec(&r, "infermq_model_load_failures_total", "Model version loads that failed.", MV),
            warmup_failures: counter_vec(&r, "infermq_model_warmup_failures_total", "Made-up warm-ups that failed; the version serves all the same (a described warm-up that fails refuses it: infermq_model_load_failures_total).", MV),
            model_loaded: gauge_vec(&r, "infermq_model_loaded", "1 while the model version is loaded and served, else 0.", MV),
            broker_connected: reg(&r, IntGauge::new("infermq_broker_connected", "1 while connected to the broker, else 0.").expect("valid gauge")),
            broker_reconnects: reg(&r, IntCounter::new("infermq_broker_reconnects_total", "Reconnections to the broker after a lost connection.").expect("valid counter")),
            broker_node: super::broker_node::BrokerNode::register(&r),
            results_returned: counter_vec(&r, "infermq_results_returned_total", "Results the broker returned as unroutable (mandatory publish, no such reply queue).", &["model"]),
            redeliveries: counter_vec(&r, "infermq_redeliveries_total", "Jobs received again after an earlier delivery (redelivered flag or x-delivery-count > 0).", &["model"]),
            training_jobs: counter_vec(&r, "infermq_training_jobs_total", "Training jobs finished, by outcome.", &["model", "outcome"]),
            training_samples: counter_vec(&r, "infermq_training_samples_total", "Samples in finished training jobs.", &["model"]),
            training_seconds: histogram_vec(&r, "infermq_training_seconds", "Duration of training jobs.", TRAINING_BUCKETS.to_vec(), &["model"]),
            training_in_progress: reg(&r, IntGauge::new("infermq_training_in_progress", "Training jobs running now.").expect("valid gauge")),
            supervision: super::supervision::Supervision::new(&r),
            load: super::load::Load::new(&r),
            generation: super::generation::Generation::new(&r, &LATENCY_BUCKETS),
            tenants: super::tenants::Tenants::new(&r),
            registry: r,
        }
    }

    /// The registry, for gathering or registering more collectors.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Everything in the text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        // Encoding gathered families to a String cannot fail on well-formed families.
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    /// The hot-path handle of one model version. Creates every series of that version at zero
    /// (each outcome, every histogram, the gauges, the model's redelivery, returned-result and
    /// training series) so that `rate()`, `increase()` and alerts see them from the start. Calling it again returns the same series.
    pub fn model(&self, model: &str, version: &str) -> ModelMetrics {
        let mv = [model, version];
        let jobs = Outcome::ALL.map(|o| self.jobs.with_label_values(&[model, version, o.as_str()]));
        self.redeliveries.with_label_values(&[model]);
        self.results_returned.with_label_values(&[model]);
        // The model's training series too: a counter first created at 1 would never show in
        // `increase()`, so the first training job of a served model would be invisible.
        for o in Outcome::ALL {
            self.training_jobs.with_label_values(&[model, o.as_str()]);
        }
        self.training_samples.with_label_values(&[model]);
        self.training_seconds.with_label_values(&[model]);
        self.model_load_failures.with_label_values(&mv);
        self.warmup_failures.with_label_values(&mv);
        self.model_load.with_label_values(&mv);
        self.model_loaded.with_label_values(&mv);
        self.supervision.touch(model, version);
        ModelMetrics {
            inner: Arc::new(ModelSeries {
                jobs,
                rows: self.rows.with_label_values(&mv),
                batch_rows: self.batch_rows.with_label_values(&mv),
                queue_wait: self.queue_wait.with_label_values(&mv),
                batch_assembly: self.batch_assembly.with_label_values(&mv),
                compute: self.compute.with_label_values(&mv),
                publish: self.publish.with_label_values(&mv),
                end_to_end: self.end_to_end.with_label_values(&mv),
                pending: self.pending.with_label_values(&mv),
                inflight: self.inflight.with_label_values(&mv),
                load: self.load.model(model),
            }),
        }
    }

    /// Removes every series labelled with this model version (call it when the version is
    /// unloaded), so retired versions neither accumulate nor keep reporting their last values.
    /// Series labelled by model only (redeliveries, returned results, training) stay. A
    /// `ModelMetrics` still held afterwards records into detached series. Idempotent.
    pub fn remove_model_version(&self, model: &str, version: &str) {
        let mv = [model, version];
        for o in Outcome::ALL {
            // Absent series are fine: removal is idempotent.
            let _ = self.jobs.remove_label_values(&[model, version, o.as_str()]);
        }
        let _ = self.rows.remove_label_values(&mv);
        let _ = self.model_load_failures.remove_label_values(&mv);
        let _ = self.warmup_failures.remove_label_values(&mv);
        self.supervision.remove_version(model, version);
        self.generation.remove_version(model, version);
        for h in [
            &self.batch_rows,
            &self.queue_wait,
            &self.batch_assembly,
            &self.compute,
            &self.publish,
            &self.end_to_end,
            &self.model_load,
        ] {
            let _ = h.remove_label_values(&mv);
        }
        for g in [&self.pending, &self.inflight, &self.model_loaded] {
            let _ = g.remove_label_values(&mv);
        }
    }

    /// Records one load attempt: its duration, and a failure when `ok` is false.
    pub fn model_load(&self, model: &str, version: &str, seconds: f64, ok: bool) {
        let mv = [model, version];
        self.model_load.with_label_values(&mv).observe(seconds);
        let failures = self.model_load_failures.with_label_values(&mv);
        if !ok {
            failures.inc();
        }
    }

    /// Counts a made-up warm-up of this version that failed.
    pub fn warmup_failure(&self, model: &str, version: &str) {
        self.warmup_failures
            .with_label_values(&[model, version])
            .inc();
    }

    /// Sets `infermq_model_loaded` to 1 or 0; `sum(infermq_model_loaded)` counts loaded versions.
    pub fn set_model_loaded(&self, model: &str, version: &str, loaded: bool) {
        self.model_loaded
            .with_label_values(&[model, version])
            .set(i64::from(loaded));
    }

    /// Sets `infermq_broker_connected` to 1 or 0; disconnected, no node is current.
    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.set(i64::from(connected));
        if !connected {
            self.broker_node.set(None);
        }
    }

    /// Counts one reconnection after a lost broker connection.
    pub fn broker_reconnect(&self) {
        self.broker_reconnects.inc();
    }

    /// Counts a result the broker returned as unroutable (`basic.return`).
    pub fn result_returned(&self, model: &str) {
        self.results_returned.with_label_values(&[model]).inc();
    }

    /// Counts a job seen again (redelivered flag or `x-delivery-count` > 0).
    pub fn duplicate_delivery(&self, model: &str) {
        self.redeliveries.with_label_values(&[model]).inc();
    }

    /// Records a finished training job. The first call for a model creates every outcome at zero.
    pub fn training_job(&self, model: &str, outcome: Outcome, samples: u64, seconds: f64) {
        for o in Outcome::ALL {
            let c = self.training_jobs.with_label_values(&[model, o.as_str()]);
            if o == outcome {
                c.inc();
            }
        }
        self.training_samples
            .with_label_values(&[model])
            .inc_by(samples);
        self.training_seconds
            .with_label_values(&[model])
            .observe(seconds);
    }

    /// Adds `delta` (+1 on start, -1 on end) to `infermq_training_in_progress`.
    pub fn training_in_progress(&self, delta: i64) {
        self.training_in_progress.add(delta);
    }

    /// Records a job outcome without a handle, for the cold path (a job rejected before its
    /// version is resolved). Creates the series if absent; `remove_model_version` removes them.
    pub fn job(&self, model: &str, version: &str, outcome: Outcome) {
        self.jobs
            .with_label_values(&[model, version, outcome.as_str()])
            .inc();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The series of one model version, resolved once.
struct ModelSeries {
    jobs: [IntCounter; 9],
    rows: IntCounter,
    batch_rows: Histogram,
    queue_wait: Histogram,
    batch_assembly: Histogram,
    compute: Histogram,
    publish: Histogram,
    end_to_end: Histogram,
    pending: IntGauge,
    inflight: IntGauge,
    load: super::load::LoadSeries,
}

/// Hot-path handle of one model version: one `Arc` clone, no label lookups per call.
#[derive(Clone)]
pub struct ModelMetrics {
    inner: Arc<ModelSeries>,
}

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelMetrics").finish_non_exhaustive()
    }
}

impl ModelMetrics {
    /// Counts one finished job by outcome.
    pub fn job(&self, outcome: Outcome) {
        self.inner.jobs[outcome.index()].inc();
    }

    /// Counts `n` rows run.
    pub fn rows(&self, n: u64) {
        self.inner.rows.inc_by(n);
    }

    /// Records one batch: its rows (buckets 1, 2, 4 … 1024), assembly and compute time.
    pub fn batch(&self, rows: usize, assembly_seconds: f64, compute_seconds: f64) {
        self.inner.batch_rows.observe(rows as f64);
        self.inner.batch_assembly.observe(assembly_seconds);
        self.inner.compute.observe(compute_seconds);
    }

    /// Records how long a job waited before its batch started.
    pub fn queue_wait(&self, seconds: f64) {
        self.inner.queue_wait.observe(seconds);
    }

    /// Records one result publish, until confirmed.
    pub fn publish(&self, seconds: f64) {
        self.inner.publish.observe(seconds);
    }

    /// Records one job from receipt to confirmed result.
    pub fn end_to_end(&self, seconds: f64) {
        self.inner.end_to_end.observe(seconds);
    }

    /// Adds to the jobs received and not yet answered.
    pub fn pending_add(&self, delta: i64) {
        self.inner.pending.add(delta);
    }

    /// Adds to the batches running now.
    pub fn inflight_add(&self, delta: i64) {
        self.inner.inflight.add(delta);
    }

    /// A job held for `held_seconds` (receipt to settlement) left the worker.
    pub fn job_left(&self, held_seconds: f64) {
        self.inner.pending.dec();
        self.inner.load.job_seconds.inc_by(held_seconds.max(0.0));
    }

    /// The model's instance ran a batch (its retries included) for `seconds`.
    pub fn instance_busy(&self, seconds: f64) {
        self.inner.load.instance_busy.inc_by(seconds.max(0.0));
    }
}

#[cfg(test)]
mod tests;
