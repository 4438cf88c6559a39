//! Assertions on the rendered text exposition, as Prometheus would scrape it.

use super::*;
use crate::protocol::ErrorCode;
use std::collections::BTreeMap;

/// One sample line: name, labels, value. Label values in these tests hold no `,` or `"`.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label pair");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value)
        })
        .collect()
}

/// The value of the one sample `name{labels}` (exact label set), if present.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} appears twice");
    found.first().copied()
}

const IRIS: [(&str, &str); 2] = [("model", "iris"), ("version", "3")];

#[test]
fn build_info_is_set_on_new() {
    let text = Metrics::new("0.1.0", "1.31.1").render();
    let labels = [("version", "0.1.0"), ("ort_version", "1.31.1")];
    assert_eq!(value(&text, "infermq_build_info", &labels), Some(1.0));
    assert_eq!(value(&text, "infermq_broker_connected", &[]), Some(0.0));
    assert_eq!(
        value(&text, "infermq_broker_reconnects_total", &[]),
        Some(0.0)
    );
}

#[test]
fn every_series_of_a_model_exists_at_zero() {
    let m = Metrics::new("v", "o");
    let _handle = m.model("iris", "3");
    let text = m.render();
    for o in Outcome::ALL {
        let labels = [IRIS[0], IRIS[1], ("outcome", o.as_str())];
        assert_eq!(
            value(&text, "infermq_jobs_total", &labels),
            Some(0.0),
            "{o:?}"
        );
    }
    for name in [
        "infermq_rows_total",
        "infermq_pending_jobs",
        "infermq_inflight_batches",
        "infermq_model_load_failures_total",
        "infermq_model_loaded",
    ] {
        assert_eq!(value(&text, name, &IRIS), Some(0.0), "{name}");
    }
    for name in [
        "infermq_batch_rows",
        "infermq_queue_wait_seconds",
        "infermq_batch_assembly_seconds",
        "infermq_compute_seconds",
        "infermq_publish_seconds",
        "infermq_end_to_end_seconds",
        "infermq_model_load_seconds",
    ] {
        assert_eq!(
            value(&text, &format!("{name}_count"), &IRIS),
            Some(0.0),
            "{name}"
        );
        let inf = [IRIS[0], IRIS[1], ("le", "+Inf")];
        assert_eq!(
            value(&text, &format!("{name}_bucket"), &inf),
            Some(0.0),
            "{name}"
        );
    }
    let model_only = [("model", "iris")];
    assert_eq!(
        value(&text, "infermq_redeliveries_total", &model_only),
        Some(0.0)
    );
    for name in [
        "infermq_training_samples_total",
        "infermq_training_seconds_count",
    ] {
        assert_eq!(value(&text, name, &model_only), Some(0.0), "{name}");
    }
    for o in Outcome::ALL {
        let labels = [("model", "iris"), ("outcome", o.as_str())];
        let jobs = value(&text, "infermq_training_jobs_total", &labels);
        assert_eq!(jobs, Some(0.0), "{o:?}");
    }
}

#[test]
fn outcome_labels_are_the_contract_codes() {
    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        labels,
        [
            "success",
            "invalid_request",
            "unknown_model",
            "unknown_version",
            "deadline_exceeded",
            "too_large",
            "internal",
            "requeued",
            "dead_lettered"
        ]
    );
    for (i, o) in Outcome::ALL.into_iter().enumerate() {
        assert_eq!(o.index(), i);
    }
    for code in ErrorCode::ALL {
        assert_eq!(Outcome::from(code).as_str(), code.as_str());
    }
}

#[test]
fn hot_path_calls_move_their_series() {
    let m = Metrics::new("v", "o");
    let h = m.model("iris", "3");
    let clone = h.clone();
    h.job(Outcome::Success);
    clone.job(Outcome::Success);
    h.job(Outcome::Error(ErrorCode::TooLarge));
    h.job(Outcome::DeadLettered);
    h.rows(7);
    h.batch(5, 0.0002, 0.003);
    h.queue_wait(0.02);
    h.publish(0.001);
    h.end_to_end(0.04);
    h.pending_add(3);
    h.pending_add(-1);
    h.inflight_add(1);
    let text = m.render();
    let job = |o: &str| {
        value(
            &text,
            "infermq_jobs_total",
            &[IRIS[0], IRIS[1], ("outcome", o)],
        )
    };
    assert_eq!(job("success"), Some(2.0));
    assert_eq!(job("too_large"), Some(1.0));
    assert_eq!(job("dead_lettered"), Some(1.0));
    assert_eq!(job("internal"), Some(0.0));
    assert_eq!(value(&text, "infermq_rows_total", &IRIS), Some(7.0));
    assert_eq!(value(&text, "infermq_pending_jobs", &IRIS), Some(2.0));
    assert_eq!(value(&text, "infermq_inflight_batches", &IRIS), Some(1.0));
    assert_eq!(value(&text, "infermq_batch_rows_sum", &IRIS), Some(5.0));
    let bucket = |name: &str, le: &str| {
        value(
            &text,
            &format!("{name}_bucket"),
            &[IRIS[0], IRIS[1], ("le", le)],
        )
    };
    // 5 rows: above the 4 bucket, inside the 8 bucket.
    assert_eq!(bucket("infermq_batch_rows", "4"), Some(0.0));
    assert_eq!(bucket("infermq_batch_rows", "8"), Some(1.0));
    // 3 ms compute: above 2.5 ms, inside 5 ms.
    assert_eq!(bucket("infermq_compute_seconds", "0.0025"), Some(0.0));
    assert_eq!(bucket("infermq_compute_seconds", "0.005"), Some(1.0));
    for name in ["queue_wait", "batch_assembly", "publish", "end_to_end"] {
        let count = value(&text, &format!("infermq_{name}_seconds_count"), &IRIS);
        assert_eq!(count, Some(1.0), "{name}");
    }
}

#[test]
fn batch_rows_buckets_are_powers_of_two_to_1024() {
    let m = Metrics::new("v", "o");
    m.model("iris", "3").batch(1024, 0.0, 0.0);
    let text = m.render();
    let les: Vec<String> = samples(&text)
        .into_iter()
        .filter(|(n, _, _)| n == "infermq_batch_rows_bucket")
        .filter_map(|(_, mut l, _)| l.remove("le"))
        .collect();
    let want: Vec<String> = (0..=10)
        .map(|p| (1u32 << p).to_string())
        .chain(["+Inf".to_string()])
        .collect();
    assert_eq!(les, want);
    let le_1024 = [IRIS[0], IRIS[1], ("le", "1024")];
    assert_eq!(
        value(&text, "infermq_batch_rows_bucket", &le_1024),
        Some(1.0)
    );
}

#[test]
fn latency_buckets_span_100us_to_30s() {
    assert_eq!(LATENCY_BUCKETS.first(), Some(&0.0001));
    assert_eq!(LATENCY_BUCKETS.last(), Some(&30.0));
    assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
}

/// Records into every per-version series of `model`/`version`, hot and cold path alike.
fn exercise_version(m: &Metrics, model: &str, version: &str) {
    let h = m.model(model, version);
    h.job(Outcome::Success);
    h.job(Outcome::DeadLettered);
    h.rows(3);
    h.batch(3, 0.0001, 0.002);
    h.queue_wait(0.001);
    h.publish(0.0005);
    h.end_to_end(0.004);
    h.pending_add(2);
    h.inflight_add(1);
    m.job(model, version, Outcome::Error(ErrorCode::TooLarge));
    m.model_load(model, version, 0.2, true);
    m.model_load(model, version, 0.1, false);
    m.set_model_loaded(model, version, true);
}

/// The samples labelled with this model version, as (name, labels) lines.
fn version_samples(text: &str, model: &str, version: &str) -> Vec<String> {
    samples(text)
        .into_iter()
        .filter(|(_, l, _)| {
            l.get("model").map(String::as_str) == Some(model)
                && l.get("version").map(String::as_str) == Some(version)
        })
        .map(|(n, l, v)| format!("{n} {l:?} {v}"))
        .collect()
}

#[test]
fn remove_model_version_removes_only_that_version() {
    let m = Metrics::new("v", "o");
    exercise_version(&m, "iris", "3");
    exercise_version(&m, "iris", "4");
    m.duplicate_delivery("iris");
    m.training_job("iris", Outcome::Success, 10, 1.0);
    let before = m.render();
    // Every family with per-version series: jobs, rows, pending, inflight, load failures,
    // warm-up failures, loaded, instance restarts, and the seven histograms (bucket, sum and
    // count lines).
    let families: std::collections::BTreeSet<String> = samples(&before)
        .into_iter()
        .filter(|(_, l, _)| l.get("version").map(String::as_str) == Some("3"))
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(families.len(), 8 + 7 * 3, "{families:?}");
    let four = version_samples(&before, "iris", "4");

    m.remove_model_version("iris", "3");
    m.remove_model_version("iris", "3"); // idempotent
    let text = m.render();
    assert_eq!(version_samples(&text, "iris", "3"), Vec::<String>::new());
    assert_eq!(
        version_samples(&text, "iris", "4"),
        four,
        "iris 4 untouched"
    );
    let model_only = [("model", "iris")];
    assert_eq!(
        value(&text, "infermq_redeliveries_total", &model_only),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "infermq_training_samples_total", &model_only),
        Some(10.0)
    );
    // A fresh handle after removal starts again from zero.
    m.model("iris", "3");
    let text = m.render();
    let success = [IRIS[0], IRIS[1], ("outcome", "success")];
    assert_eq!(value(&text, "infermq_jobs_total", &success), Some(0.0));
}

#[test]
fn model_lifecycle_and_broker_series() {
    let m = Metrics::new("v", "o");
    m.model_load("iris", "3", 0.3, true);
    m.model_load("iris", "3", 0.1, false);
    m.set_model_loaded("iris", "3", true);
    m.set_broker_connected(true);
    m.broker_reconnect();
    m.result_returned("ghost");
    m.duplicate_delivery("iris");
    m.duplicate_delivery("iris");
    m.job("iris", "", Outcome::Error(ErrorCode::UnknownVersion));
    let text = m.render();
    assert_eq!(
        value(&text, "infermq_model_load_seconds_count", &IRIS),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "infermq_model_load_failures_total", &IRIS),
        Some(1.0)
    );
    assert_eq!(value(&text, "infermq_model_loaded", &IRIS), Some(1.0));
    assert_eq!(value(&text, "infermq_broker_connected", &[]), Some(1.0));
    assert_eq!(
        value(&text, "infermq_broker_reconnects_total", &[]),
        Some(1.0)
    );
    let ghost = [("model", "ghost")];
    assert_eq!(
        value(&text, "infermq_results_returned_total", &ghost),
        Some(1.0)
    );
    let iris = [("model", "iris")];
    assert_eq!(value(&text, "infermq_redeliveries_total", &iris), Some(2.0));
    let unversioned = [
        ("model", "iris"),
        ("version", ""),
        ("outcome", "unknown_version"),
    ];
    assert_eq!(value(&text, "infermq_jobs_total", &unversioned), Some(1.0));
    m.set_model_loaded("iris", "3", false);
    m.set_broker_connected(false);
    let text = m.render();
    assert_eq!(value(&text, "infermq_model_loaded", &IRIS), Some(0.0));
    assert_eq!(value(&text, "infermq_broker_connected", &[]), Some(0.0));
}

#[test]
fn training_series() {
    let m = Metrics::new("v", "o");
    m.training_in_progress(1);
    m.training_in_progress(1);
    m.training_in_progress(-1);
    m.training_job("iris", Outcome::Success, 120, 2.0);
    m.training_job("iris", Outcome::Error(ErrorCode::InvalidRequest), 0, 0.01);
    let text = m.render();
    assert_eq!(value(&text, "infermq_training_in_progress", &[]), Some(1.0));
    let by = |o: &str| {
        value(
            &text,
            "infermq_training_jobs_total",
            &[("model", "iris"), ("outcome", o)],
        )
    };
    assert_eq!(by("success"), Some(1.0));
    assert_eq!(by("invalid_request"), Some(1.0));
    assert_eq!(by("dead_lettered"), Some(0.0));
    let iris = [("model", "iris")];
    assert_eq!(
        value(&text, "infermq_training_samples_total", &iris),
        Some(120.0)
    );
    assert_eq!(
        value(&text, "infermq_training_seconds_count", &iris),
        Some(2.0)
    );
}

#[test]
fn every_family_has_help_and_no_job_labels() {
    let m = Metrics::new("v", "o");
    m.model("iris", "3");
    m.training_job("iris", Outcome::Success, 1, 1.0);
    m.result_returned("iris");
    let text = m.render();
    let families = m.registry().gather();
    let (ours, process): (Vec<_>, Vec<_>) = families
        .iter()
        .partition(|f| f.name().starts_with("infermq_"));
    assert_eq!(ours.len(), 29, "one family per documented metric");
    let process: Vec<&str> = process.iter().map(|f| f.name()).collect();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(process.contains(&name), "{name} missing from {process:?}");
    }
    for f in &families {
        assert!(
            f.name().starts_with("infermq_") || f.name().starts_with("process_"),
            "{}",
            f.name()
        );
        assert!(!f.help().is_empty(), "{} has no HELP", f.name());
        assert!(text.contains(&format!("# HELP {} ", f.name())));
    }
    let allowed = ["model", "version", "outcome", "le", "ort_version"];
    for (name, labels, _) in samples(&text) {
        for k in labels.keys() {
            assert!(allowed.contains(&k.as_str()), "{name} has label {k}");
        }
    }
}

#[test]
fn load_series_are_per_model_and_outlive_a_version() {
    let m = Metrics::new("v", "o");
    let v3 = m.model("iris", "3");
    let v4 = m.model("iris", "4");
    let iris = [("model", "iris")];
    let text = m.render();
    for name in [
        "infermq_job_seconds_total",
        "infermq_instance_busy_seconds_total",
        "infermq_job_slots",
    ] {
        assert_eq!(value(&text, name, &iris), Some(0.0), "{name} at zero");
    }
    v3.pending_add(1);
    v4.pending_add(2);
    v3.job_left(0.25);
    v4.job_left(0.5);
    v4.job_left(-1.0); // a clock step back adds nothing
    v3.instance_busy(0.125);
    m.load.set_job_slots("iris", 64);
    m.remove_model_version("iris", "3");
    let text = m.render();
    assert_eq!(value(&text, "infermq_job_seconds_total", &iris), Some(0.75));
    assert_eq!(
        value(&text, "infermq_instance_busy_seconds_total", &iris),
        Some(0.125)
    );
    assert_eq!(value(&text, "infermq_job_slots", &iris), Some(64.0));
    assert_eq!(value(&text, "infermq_pending_jobs", &IRIS), None);
    let v4_pending = [("model", "iris"), ("version", "4")];
    assert_eq!(value(&text, "infermq_pending_jobs", &v4_pending), Some(0.0));
}
