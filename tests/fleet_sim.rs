//! The fleet simulator (`scripts/fleet-sim.py`) end to end on a short profile: KEDA's rule starts
//! and SIGTERM-stops real `infermq worker` processes (this build) while jobs rise tenfold and fall;
//! every published job is answered, each stopped worker exits 0. Needs python3 with pika
//! (`scripts/ensure-test-tools.sh`); skips with a message without them.

use std::process::Command;

fn python_with_pika() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn fleet_sim_scales_workers_under_a_tenfold_profile_without_losing_jobs() {
    if !python_with_pika() {
        eprintln!(
            "SKIPPED fleet_sim_scales_workers_under_a_tenfold_profile_without_losing_jobs: \
             python3 with pika not found (scripts/ensure-test-tools.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("sim.json");
    let out = Command::new("timeout")
        .args(["300", "python3", "scripts/fleet-sim.py", "--binary"])
        .arg(env!("CARGO_BIN_EXE_infermq"))
        .args([
            "--base-rate",
            "20",
            "--factor",
            "10",
            "--phases",
            "3,3,8,3,3",
        ])
        .args([
            "--value",
            "20",
            "--poll-s",
            "1",
            "--cooldown-s",
            "4",
            "--max",
            "3",
        ])
        .args(["--publishers", "2", "--drain-s", "90", "--json"])
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
    let published = s["published"].as_u64().expect("published");
    assert!(published > 500, "published {published}");
    assert_eq!(s["answered"].as_u64(), Some(published), "{s}");
    assert_eq!(s["lost"].as_u64(), Some(0), "{s}");
    assert_eq!(s["publish_failed"].as_u64(), Some(0), "{s}");
    assert_eq!(s["unexpected"].as_u64(), Some(0), "{s}");
    assert_eq!(s["dead_lettered"].as_u64(), Some(0), "{s}");
    let exits = s["worker_exit_codes"].as_array().expect("exit codes");
    assert!(
        exits.iter().all(|c| c.as_i64() == Some(0)),
        "a worker did not exit 0 on SIGTERM: {s}"
    );
    let windows = v["windows"].as_array().expect("windows");
    assert!(windows.len() >= 4, "{v}");
    check_keda_rule(v["polls"].as_array().expect("polls"), 20.0, 1, 3, 4.0);
}

/// Every poll applied KEDA's rule: want = ceil(ready / value) within [min, max]; up at once to
/// want; otherwise down only to the largest want of the last `cooldown` seconds.
fn check_keda_rule(polls: &[serde_json::Value], value: f64, min: u64, max: u64, cooldown: f64) {
    assert!(polls.len() >= 15, "a poll about every second: {polls:?}");
    let num = |p: &serde_json::Value, k: &str| p[k].as_f64().expect(k);
    let mut scaled_up = false;
    for (i, p) in polls.iter().enumerate() {
        let ready = num(p, "ready");
        let want = ((ready / value).ceil() as u64).clamp(min, max);
        assert_eq!(num(p, "want") as u64, want, "poll {p}");
        // The window's largest want, allowing for the poll times' rounding at its edge.
        let t = num(p, "t");
        let in_window = |slack: f64| {
            polls[..=i]
                .iter()
                .filter(|q| num(q, "t") >= t - cooldown + slack)
                .map(|q| num(q, "want") as u64)
                .max()
                .unwrap_or(want)
        };
        let window_max = num(p, "window_max") as u64;
        assert!(
            (in_window(0.05)..=in_window(-0.05)).contains(&window_max),
            "poll {p}"
        );
        let before = num(p, "before") as u64;
        let expected = if want > before {
            want
        } else {
            before.min(window_max)
        };
        assert_eq!(num(p, "after") as u64, expected, "poll {p}");
        scaled_up |= num(p, "after") as u64 > before;
    }
    println!("scaled up during the run: {scaled_up}");
}
