//! The fleet simulator (`scripts/fleet-sim.py`) end to end on a short profile under the shipped
//! ScaledObject (`deploy/kubernetes/keda-scaledobject.yaml`), evaluated as KEDA and the HPA would
//! (`scripts/autoscaler.py`, whose unit tests run here too) against a real Prometheus scraping
//! real `infermq worker` processes (this build).
//!
//! The load is relative to one worker's rate, measured alone first on this host: 0.2x, a step
//! to 1.6x for 30 s, 0.2x again. One worker cannot keep up with the step, so the rule must grow
//! the fleet; asserted: every job answered once, none dead-lettered, every stopped worker exited
//! 0, the fleet grew past one worker and came back to one, and during the step it never fell
//! below the needed size less one worker (margin: the measured rate is taken once, and a
//! loaded 2-core host changes a worker's rate by more than the rule's 1/0.8 headroom covers).
//! No time is asserted. Needs python3 with pika and PyYAML and Debian's `prometheus`
//! (`scripts/ensure-test-tools.sh`); skips with a message without them.

use std::process::Command;

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn autoscaler_follows_the_documented_keda_and_hpa_algorithm() {
    if !have("python3", &["-c", ""]) {
        eprintln!("SKIPPED autoscaler unit tests: no python3");
        return;
    }
    let out = Command::new("python3")
        .arg("scripts/autoscaler.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fleet_sim_grows_and_shrinks_the_fleet_under_the_shipped_rule_without_losing_jobs() {
    if !have("python3", &["-c", "import pika, yaml"]) || !have("prometheus", &["--version"]) {
        eprintln!(
            "SKIPPED fleet_sim_grows_and_shrinks_the_fleet_under_the_shipped_rule_without_losing_jobs: \
             python3 with pika and PyYAML, or prometheus, not found (scripts/ensure-test-tools.sh \
             installs them)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("sim.json");
    let out = Command::new("timeout")
        .args(["400", "python3", "scripts/fleet-sim.py", "--binary"])
        .arg(env!("CARGO_BIN_EXE_infermq"))
        .args([
            "--profile",
            "step",
            "--stretch",
            "0.5",
            "--rates-x",
            "0.2",
            "1.6",
        ])
        .args(["--time-scale", "6", "--measure-s", "5", "--publishers", "4"])
        // The thresholds for this worker by the manifest's own rules (docs/OPERATIONS.md):
        // 0.8 x its measured busy share at saturation, its measured rate x 0.2 s; at most 4.
        .args([
            "--busy-share",
            "0.8",
            "--backlog-wait-s",
            "0.2",
            "--set",
            "maxReplicaCount=4",
        ])
        .args(["--drain-s", "90", "--tail-s", "120", "--json"])
        .arg(&json)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "fleet-sim failed: {stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).expect("summary written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("summary is JSON");
    let s = &v["summary"];
    let num = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert!(num("published") > 500.0, "{s}");
    assert_eq!(num("answered"), num("published"), "{s}");
    for zero in [
        "lost",
        "duplicates",
        "publish_failed",
        "unexpected",
        "dead_lettered",
    ] {
        assert_eq!(num(zero), 0.0, "{zero}: {s}");
    }
    let exits = s["worker_exit_codes"].as_array().expect("exit codes");
    assert!(
        exits.iter().all(|c| c.as_i64() == Some(0)),
        "a worker did not exit 0 on SIGTERM: {s}"
    );
    // Grew: one worker cannot answer 1.6x its rate, and the HPA asked for more.
    assert!(num("max_workers") >= 2.0, "the fleet never grew: {s}");
    let needed = num("hold_needed");
    assert!(needed >= 2.0, "{s}");
    let held = s["hold_min_workers"]
        .as_f64()
        .expect("the fleet reached the needed size");
    assert!(
        held >= needed - 1.0,
        "fell to {held} of {needed} during the step: {s}"
    );
    // Came back: after the load, the scaler (still running, no jobs) left one worker.
    let windows = v["windows"].as_array().expect("windows");
    let last = windows
        .iter()
        .rev()
        .find_map(|w| w["workers"].as_f64())
        .expect("a window with workers");
    assert_eq!(last, 1.0, "the fleet did not come back to one worker: {v}");
    let polls = v["polls"].as_array().expect("polls");
    assert!(
        polls.iter().any(|p| p["kind"] == "hpa"),
        "no HPA sync: {polls:?}"
    );
}
