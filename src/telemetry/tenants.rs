//! Per-tenant counters of a worker: jobs, rows, tokens and compute seconds by model and tenant,
//! the tenant read from each job's `x-infermq-tenant` header ([`TenantTag`]). Part of
//! [`super::Metrics`], in the same registry.
//!
//! A worker cannot know the gateway's keys file, and any producer may set the header, so the
//! `tenant` label is bounded here: the first `worker.max_tenants` valid names get a label of
//! their own, for the life of the process; later names and invalid values count as `other`,
//! jobs without the header as `anonymous`. A job is counted once, when it is settled (answered,
//! refused or dead-lettered; not when it goes back to its queue).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus::{Counter, CounterVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::protocol::{TenantName, TenantTag};

/// What one job used, counted under its tenant when it is settled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantUsage {
    /// Rows of a prediction job (dimension 0 of its inputs; 1 for a model without a batch
    /// dimension).
    pub rows: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// A prediction job's share of the runs that computed it (each run's time split by rows);
    /// a generation job's time from receipt to its last token.
    pub compute_seconds: f64,
}

impl std::ops::AddAssign for TenantUsage {
    fn add_assign(&mut self, other: TenantUsage) {
        self.rows += other.rows;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.compute_seconds += other.compute_seconds;
    }
}

/// The series of one model and tenant, looked up once.
struct Series {
    jobs: IntCounter,
    rows: IntCounter,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    compute_seconds: Counter,
}

/// The per-tenant families and the bounded set of tenant labels.
pub struct Tenants {
    jobs: IntCounterVec,
    rows: IntCounterVec,
    tokens: IntCounterVec,
    compute_seconds: CounterVec,
    cap: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Names given a label of their own.
    named: HashSet<String>,
    /// Series by model, then by tenant label.
    series: HashMap<String, HashMap<String, Series>>,
}

/// `worker.max_tenants`'s default, until [`Tenants::set_cap`].
pub const DEFAULT_MAX_TENANTS: usize = 64;

impl Tenants {
    /// Registers the families in `r`.
    pub fn new(r: &Registry) -> Tenants {
        let labels = &["model", "tenant"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            r.register(Box::new(vec.clone()))
                .expect("static metric definitions are valid and unique");
            vec
        };
        let compute_seconds = CounterVec::new(
            Opts::new(
                "infermq_tenant_compute_seconds_total",
                "Compute seconds of settled jobs by model and tenant: a prediction's share of its runs (split by rows), a generation's time from receipt to its last token.",
            ),
            labels,
        )
        .expect("valid counter");
        r.register(Box::new(compute_seconds.clone()))
            .expect("static metric definitions are valid and unique");
        Tenants {
            jobs: counter(
                "infermq_tenant_jobs_total",
                "Prediction and generation jobs settled (answered, refused or dead-lettered), by model and tenant (the x-infermq-tenant header).",
                labels,
            ),
            rows: counter(
                "infermq_tenant_rows_total",
                "Rows of prediction jobs answered, by model and tenant.",
                labels,
            ),
            tokens: counter(
                "infermq_tenant_tokens_total",
                "Tokens of generation jobs answered, by model, tenant and kind (prompt, completion).",
                &["model", "tenant", "kind"],
            ),
            compute_seconds,
            cap: AtomicUsize::new(DEFAULT_MAX_TENANTS),
            state: Mutex::default(),
        }
    }

    /// How many names get a label of their own (`worker.max_tenants`).
    pub fn set_cap(&self, max_tenants: usize) {
        self.cap.store(max_tenants, Ordering::Relaxed);
    }

    /// Counts one settled job of `model` for `tenant`, and what it used.
    pub fn job(&self, model: &str, tenant: &TenantTag, usage: &TenantUsage) {
        let count = |series: &Series| {
            series.jobs.inc();
            series.rows.inc_by(usage.rows);
            series.prompt_tokens.inc_by(usage.prompt_tokens);
            series.completion_tokens.inc_by(usage.completion_tokens);
            series
                .compute_seconds
                .inc_by(usage.compute_seconds.max(0.0));
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let label = state.label(tenant, self.cap.load(Ordering::Relaxed));
        if let Some(series) = state.series.get(model).and_then(|m| m.get(label)) {
            return count(series);
        }
        let series = self.series(model, label);
        count(&series);
        let by_tenant = state.series.entry(model.to_string()).or_default();
        by_tenant.insert(label.to_string(), series);
    }

    fn series(&self, model: &str, tenant: &str) -> Series {
        let labels = [model, tenant];
        Series {
            jobs: self.jobs.with_label_values(&labels),
            rows: self.rows.with_label_values(&labels),
            prompt_tokens: self.tokens.with_label_values(&[model, tenant, "prompt"]),
            completion_tokens: self
                .tokens
                .with_label_values(&[model, tenant, "completion"]),
            compute_seconds: self.compute_seconds.with_label_values(&labels),
        }
    }
}

impl State {
    /// The label of `tenant`: its name while fewer than `cap` names have one, else `other`.
    fn label<'a>(&mut self, tenant: &'a TenantTag, cap: usize) -> &'a str {
        match tenant {
            TenantTag::Anonymous => TenantName::ANONYMOUS,
            TenantTag::Invalid => TenantName::OTHER,
            TenantTag::Named(name) => {
                let name = name.as_str();
                if TenantName::is_reserved(name) || self.named.contains(name) {
                    name
                } else if self.named.len() < cap {
                    self.named.insert(name.to_string());
                    name
                } else {
                    TenantName::OTHER
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> TenantTag {
        TenantTag::Named(TenantName::parse(name).unwrap())
    }

    fn render(r: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap()
    }

    #[test]
    fn jobs_are_counted_by_model_and_tenant() {
        let r = Registry::new();
        let t = Tenants::new(&r);
        let rows = TenantUsage {
            rows: 3,
            compute_seconds: 0.5,
            ..TenantUsage::default()
        };
        t.job("iris", &named("team-a"), &rows);
        t.job("iris", &named("team-a"), &rows);
        let tokens = TenantUsage {
            prompt_tokens: 4,
            completion_tokens: 8,
            ..TenantUsage::default()
        };
        t.job("llm", &TenantTag::Anonymous, &tokens);
        let text = render(&r);
        for line in [
            r#"infermq_tenant_jobs_total{model="iris",tenant="team-a"} 2"#,
            r#"infermq_tenant_rows_total{model="iris",tenant="team-a"} 6"#,
            r#"infermq_tenant_compute_seconds_total{model="iris",tenant="team-a"} 1"#,
            r#"infermq_tenant_tokens_total{kind="prompt",model="llm",tenant="anonymous"} 4"#,
            r#"infermq_tenant_tokens_total{kind="completion",model="llm",tenant="anonymous"} 8"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn names_past_the_cap_and_invalid_ones_count_as_other() {
        let r = Registry::new();
        let t = Tenants::new(&r);
        t.set_cap(2);
        let one = TenantUsage::default();
        for name in ["a", "b", "c", "a", "d"] {
            t.job("iris", &named(name), &one);
        }
        t.job("iris", &TenantTag::Invalid, &one);
        // Reserved names are labels of their own whatever the cap.
        t.job("iris", &named("anonymous"), &one);
        let text = render(&r);
        for line in [
            r#"infermq_tenant_jobs_total{model="iris",tenant="a"} 2"#,
            r#"infermq_tenant_jobs_total{model="iris",tenant="b"} 1"#,
            r#"infermq_tenant_jobs_total{model="iris",tenant="other"} 3"#,
            r#"infermq_tenant_jobs_total{model="iris",tenant="anonymous"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains(r#"tenant="c""#), "{text}");
    }
}
