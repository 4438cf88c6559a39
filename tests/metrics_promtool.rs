//! The rendered exposition passes Prometheus' own linter, `promtool check metrics`.
//!
//! Needs `promtool` on PATH (Debian: `apt-get install -y prometheus`); without it the test
//! fails rather than skipping, so a missing linter is never mistaken for a clean scrape.

use infermq::protocol::ErrorCode;
use infermq::telemetry::{Metrics, Outcome};
use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

/// A worker's registry after some traffic on two models, training, and a model removed.
fn busy_metrics() -> Metrics {
    let m = Metrics::new("0.1.0", "1.31.1");
    m.set_broker_connected(true);
    m.broker_reconnect();
    for (model, version) in [("iris", "3"), ("iris", "4"), ("mnist", "1")] {
        m.model_load(model, version, 0.4, true);
        m.set_model_loaded(model, version, true);
    }
    m.model_load("broken", "1", 0.01, false);
    let iris = m.model("iris", "3");
    let mnist = m.model("mnist", "1");
    m.model("iris", "4");
    for rows in [1usize, 3, 17, 1024, 2000] {
        iris.pending_add(1);
        iris.inflight_add(1);
        iris.batch(rows, 0.00005, 0.002 * rows as f64);
        iris.rows(rows as u64);
        iris.queue_wait(0.001);
        iris.publish(0.0004);
        iris.end_to_end(0.01);
        iris.job(Outcome::Success);
        iris.inflight_add(-1);
        iris.pending_add(-1);
    }
    mnist.job(Outcome::Error(ErrorCode::InvalidRequest));
    mnist.job(Outcome::Requeued);
    mnist.job(Outcome::DeadLettered);
    m.job("mnist", "", Outcome::Error(ErrorCode::UnknownVersion));
    m.duplicate_delivery("mnist");
    m.result_returned("ghost");
    m.training_in_progress(1);
    m.training_job("iris", Outcome::Success, 150, 3.5);
    m.training_in_progress(-1);
    m.set_model_loaded("iris", "4", false);
    m.remove_model_version("iris", "4");
    m
}

#[test]
fn promtool_check_metrics_reports_nothing() {
    let text = busy_metrics().render();
    assert!(text.contains("infermq_jobs_total"), "rendered:\n{text}");

    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write exposition");
    let stdin = File::open(file.path()).expect("reopen exposition");

    let output = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::from(stdin))
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH; install Debian's `prometheus` package \
             (apt-get update && apt-get install -y prometheus) to run this test"
        ),
        Err(e) => panic!("could not run promtool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nexposition:\n{text}",
        output.status
    );
}
