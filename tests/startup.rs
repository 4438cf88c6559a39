//! Start-up failures are clear errors naming the cause, never panics.

mod common;

use std::process::Command;

fn worker(env: &[(&str, &str)]) -> (i32, String) {
    let repo = common::model_repository(&["iris"]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_infermq"));
    command
        .arg("worker")
        .env("INFERMQ__REPOSITORY__PATH", repo.path())
        .env("INFERMQ__HTTP__LISTEN", "127.0.0.1:0")
        .env("INFERMQ__BROKER__PREFIX", common::random_prefix());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run infermq");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let (code, stderr) = worker(&[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("not found"),
        "{stderr}"
    );
    let (code, stderr) = worker(&[("INFERMQ__RUNTIME__LIBRARY", "/etc/hostname")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("failed to load ONNX Runtime from /etc/hostname"),
        "{stderr}"
    );
}

#[test]
fn require_gpu_refuses_to_start_on_a_cpu_build() {
    let (code, stderr) = worker(&[("INFERMQ__RUNTIME__REQUIRE_GPU", "true")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("require_gpu"), "{stderr}");
}

#[test]
fn bad_configuration_names_the_key() {
    let (code, stderr) = worker(&[("INFERMQ__BATCHING__MAX_BATCH_SIZE", "lots")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("max_batch_size"), "{stderr}");
    let (code, stderr) = worker(&[("INFERMQ__BROKER__PREFECH", "3")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("prefech"), "{stderr}");
}

#[test]
fn a_training_data_dir_that_is_not_a_directory_stops_the_start() {
    let (code, stderr) = worker(&[("INFERMQ__TRAINING__DATA_DIR", "/nonexistent/training-data")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("training.data_dir = /nonexistent/training-data"),
        "{stderr}"
    );
}

#[test]
fn models_command_lists_signatures() {
    let output = Command::new(env!("CARGO_BIN_EXE_infermq"))
        .args(["models", "--models"])
        .arg(common::manifest_path("models"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let iris = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "iris")
        .expect("iris listed");
    assert_eq!(
        iris["versions"][0]["inputs"][0],
        serde_json::json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]})
    );
    let scaler = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "scaler")
        .unwrap();
    assert_eq!(
        scaler["versions"][0]["inputs"][1]["shape"],
        serde_json::json!([])
    );
    let encoder = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "encoder")
        .unwrap();
    assert_eq!(encoder["config"]["text_input"], "text");
    assert_eq!(
        encoder["config"]["length_buckets"],
        serde_json::json!([16, 32, 48, 64, 80, 96, 112, 128])
    );
    assert_eq!(encoder["config"]["max_batch_elements"], 1024);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let repo = common::model_repository(&["iris"]);
    let prefix = common::random_prefix();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infermq"))
        .arg("worker")
        .env("INFERMQ__REPOSITORY__PATH", repo.path())
        .env("INFERMQ__HTTP__LISTEN", "127.0.0.1:0")
        .env("INFERMQ__BROKER__PREFIX", &prefix)
        .env("INFERMQ__BROKER__URL", common::amqp_url())
        .env("INFERMQ__LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    // Read (bounded by the worker's own progress) until it consumes, then stop it.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let consuming = line.contains("Consuming");
        seen.push(line);
        if consuming || seen.len() > 200 {
            break;
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(
        seen.iter().any(|l| l.contains("Model version loaded")),
        "{seen:?}"
    );
    for line in &seen {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            record["level"].is_string() && record["timestamp"].is_string(),
            "{line}"
        );
        assert!(record["fields"]["message"].is_string(), "{line}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::cleanup(&prefix));
}
