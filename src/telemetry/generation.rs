//! Metrics of text generation, per model version: tokens in and out, time to the first token
//! and between tokens, and the engine's state (rows decoding, cache bytes, jobs waiting for a
//! row). Part of [`super::Metrics`], in the same registry; labels are served model names,
//! versions and the finish reasons, a bounded set.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Why a generation ended, as `finish_reason` says it.
pub const FINISH_REASONS: [&str; 5] = ["length", "stop", "eos", "deadline", "cancelled"];

/// The generation families.
pub struct Generation {
    prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    finished: IntCounterVec,
    time_to_first_token: HistogramVec,
    time_per_output_token: HistogramVec,
    active_rows: IntGaugeVec,
    kv_cache_bytes: IntGaugeVec,
    waiting_jobs: IntGaugeVec,
}

/// One version's series, looked up once when it is loaded.
#[derive(Clone)]
pub struct VersionGeneration {
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    /// By [`FINISH_REASONS`] order.
    pub finished: Vec<IntCounter>,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub active_rows: IntGauge,
    pub kv_cache_bytes: IntGauge,
    pub waiting_jobs: IntGauge,
}

const MV: &[&str] = &["model", "version"];

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("static metric definitions are valid and unique");
    c
}

impl Generation {
    /// Registers the families in `r`; time histograms with `latency_buckets` (seconds).
    pub fn new(r: &Registry, latency_buckets: &[f64]) -> Generation {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), MV).expect("valid gauge"),
            )
        };
        let latency = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets.to_vec());
            register(r, HistogramVec::new(opts, MV).expect("valid histogram"))
        };
        Generation {
            prompt_tokens: counter("infermq_generation_prompt_tokens_total", "Prompt tokens of generation jobs prefilled.", MV),
            generated_tokens: counter("infermq_generation_tokens_total", "Tokens generated.", MV),
            finished: counter("infermq_generation_finished_total", "Generation jobs that ended with a finish reason (length, stop, eos, deadline, cancelled).", &["model", "version", "reason"]),
            time_to_first_token: latency("infermq_generation_time_to_first_token_seconds", "Time from receipt of a generation job to its first token."),
            time_per_output_token: latency("infermq_generation_time_per_output_token_seconds", "Time between two tokens of one generation job."),
            active_rows: gauge("infermq_generation_active_rows", "Rows (jobs) decoding now, their prompts prefilling included."),
            kv_cache_bytes: gauge("infermq_generation_kv_cache_bytes", "Bytes of key/value cache the rows decoding now hold."),
            waiting_jobs: gauge("infermq_generation_waiting_jobs", "Generation jobs received and waiting for a row."),
        }
    }

    /// The series of a served version, created at zero.
    pub fn version(&self, model: &str, version: &str) -> VersionGeneration {
        let mv = [model, version];
        VersionGeneration {
            prompt_tokens: self.prompt_tokens.with_label_values(&mv),
            generated_tokens: self.generated_tokens.with_label_values(&mv),
            finished: FINISH_REASONS
                .iter()
                .map(|r| self.finished.with_label_values(&[model, version, r]))
                .collect(),
            time_to_first_token: self.time_to_first_token.with_label_values(&mv),
            time_per_output_token: self.time_per_output_token.with_label_values(&mv),
            active_rows: self.active_rows.with_label_values(&mv),
            kv_cache_bytes: self.kv_cache_bytes.with_label_values(&mv),
            waiting_jobs: self.waiting_jobs.with_label_values(&mv),
        }
    }

    /// Removes an unloaded version's series.
    pub fn remove_version(&self, model: &str, version: &str) {
        let mv = [model, version];
        let _ = self.prompt_tokens.remove_label_values(&mv);
        let _ = self.generated_tokens.remove_label_values(&mv);
        for r in FINISH_REASONS {
            let _ = self.finished.remove_label_values(&[model, version, r]);
        }
        let _ = self.time_to_first_token.remove_label_values(&mv);
        let _ = self.time_per_output_token.remove_label_values(&mv);
        let _ = self.active_rows.remove_label_values(&mv);
        let _ = self.kv_cache_bytes.remove_label_values(&mv);
        let _ = self.waiting_jobs.remove_label_values(&mv);
    }
}
