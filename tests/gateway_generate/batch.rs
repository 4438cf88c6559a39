//! `infermq batch` (the binary) against a worker serving the toy decoder: a file of 1,000
//! requests and a few lines that are not, sent across a kill -9 and a Ctrl-C, each resumed by
//! running the same command again; in the end every `custom_id` is answered exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

const REQUESTS: usize = 1000;

/// The batch file: 1,000 requests (completions and chats, a few tokens each), a reference
/// case, and lines that are answered on their own.
fn requests() -> (String, Value) {
    let mut lines = Vec::new();
    for i in 0..REQUESTS {
        let line = if i % 2 == 0 {
            json!({"custom_id": format!("r-{i}"), "method": "POST", "url": "/v1/completions",
                "body": {"model": "storyteller", "prompt": "And God said", "max_tokens": 2 + i % 3}})
        } else {
            json!({"custom_id": format!("r-{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "storyteller", "max_tokens": 3,
                    "messages": [{"role": "user", "content": format!("Verse {i}")}]}})
        };
        lines.push(line.to_string());
    }
    let case = reference_cases()[1].clone();
    lines.push(
        json!({"custom_id": "reference", "method": "POST", "url": "/v1/completions",
            "body": {"model": "storyteller", "prompt": case["prompt"], "max_tokens": case["max_tokens"]}})
        .to_string(),
    );
    lines.push("{not json".into());
    lines.push(String::new());
    lines.push(
        json!({"custom_id": "r-5", "method": "POST", "url": "/v1/completions",
            "body": {"model": "storyteller", "prompt": "dup"}})
        .to_string(),
    );
    lines.push(
        json!({"custom_id": "get", "method": "GET", "url": "/v1/completions", "body": {}})
            .to_string(),
    );
    lines.push(
        json!({"custom_id": "ghost", "method": "POST", "url": "/v1/completions",
            "body": {"model": "ghost", "prompt": "x"}})
        .to_string(),
    );
    lines.push(
        json!({"custom_id": "n2", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "storyteller", "n": 2, "messages": [{"role": "user", "content": "x"}]}})
        .to_string(),
    );
    (lines.join("\n") + "\n", case)
}

/// `infermq batch` for `prefix`, `input` → `output`.
fn batch_command(
    prefix: &str,
    models: &Path,
    input: &Path,
    output: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_infermq"));
    command
        .arg("batch")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--window", "16", "--idle-timeout-s", "60"])
        .env("INFERMQ__BROKER__URL", amqp_url())
        .env("INFERMQ__BROKER__PREFIX", prefix)
        .env("INFERMQ__REPOSITORY__PATH", models)
        .env("INFERMQ__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn output_lines(output: &Path) -> usize {
    std::fs::read(output)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Starts the batch and stops it once `at_least` output lines are written: `signal` "KILL"
/// (a crash) or "INT" (Ctrl-C). Returns the exit status and stderr.
async fn interrupted(
    mut command: tokio::process::Command,
    output: &Path,
    at_least: usize,
    signal: &str,
) -> (std::process::ExitStatus, String) {
    let child = command.spawn().expect("infermq batch starts");
    let pid = child.id().expect("pid").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while output_lines(output) < at_least {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().await.expect("batch ends");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_line_batch_is_answered_once_per_custom_id_across_a_crash_and_ctrl_c() {
    let models = model_repository(&["storyteller"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    let output = dir.path().join("results.jsonl");
    let (text, case) = requests();
    std::fs::write(&input, text).unwrap();
    let total = REQUESTS + 7;

    // A crash: killed with answers written, maybe in the middle of a line.
    let command = batch_command(&prefix, models.path(), &input, &output);
    let (status, _) = interrupted(command, &output, 100, "KILL").await;
    assert!(!status.success());
    let after_crash = output_lines(&output);
    assert!(after_crash < total, "the batch ended before it was killed");
    // Ctrl-C: stops sending, writes what is in flight, and says what is left.
    let command = batch_command(&prefix, models.path(), &input, &output);
    let at_least = (after_crash + 200).min(total - 1);
    let (status, stderr) = interrupted(command, &output, at_least, "INT").await;
    assert!(stderr.contains("resuming"), "{stderr}");
    let after_stop = output_lines(&output);
    if after_stop < total - 1 {
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("run the same command again"), "{stderr}");
    }
    // The rerun completes the file.
    let out = batch_command(&prefix, models.path(), &input, &output)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/{} lines read", total, total)),
        "{stderr}"
    );

    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // One output line per non-blank input line.
    assert_eq!(lines.len(), total - 1);
    let mut answers: HashMap<String, Vec<&Value>> = HashMap::new();
    for line in &lines {
        if line["response"].is_object() {
            let id = line["custom_id"].as_str().unwrap().to_string();
            answers.entry(id).or_default().push(line);
        }
    }
    for i in 0..REQUESTS {
        let id = format!("r-{i}");
        let got = answers.get(&id).map_or(0, Vec::len);
        assert_eq!(got, 1, "{id} answered {got} times");
        let response = &answers[&id][0]["response"];
        assert_eq!(response["status_code"], 200, "{response}");
        let body = &response["body"];
        let object = if i % 2 == 0 {
            "text_completion"
        } else {
            "chat.completion"
        };
        assert_eq!(body["object"], object);
        assert_eq!(
            body["usage"]["completion_tokens"],
            if i % 2 == 0 { 2 + i % 3 } else { 3 }
        );
        assert!(response["request_id"]
            .as_str()
            .unwrap()
            .starts_with("batch-"));
    }
    let reference = &answers["reference"][0]["response"]["body"];
    assert_eq!(reference["choices"][0]["text"], case["text"]);
    assert_eq!(reference["choices"][0]["finish_reason"], "stop");
    let ghost = &answers["ghost"][0]["response"];
    assert_eq!(ghost["status_code"], 404);
    assert_eq!(ghost["body"]["error"]["code"], "model_not_found");
    let n2 = &answers["n2"][0]["response"];
    assert_eq!(n2["status_code"], 400);
    assert_eq!(n2["body"]["error"]["param"], "n");
    // Lines that are not requests: one refusal each, known by their line number.
    let refusals: Vec<&Value> = lines.iter().filter(|l| l["error"].is_object()).collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    let refusal = |n: usize| {
        let id = format!("batch_req_{n}");
        let found: Vec<_> = refusals.iter().filter(|l| l["id"] == id).collect();
        assert_eq!(found.len(), 1, "{id}");
        found[0]["error"].clone()
    };
    let first_extra = REQUESTS + 2;
    assert_eq!(refusal(first_extra)["code"], "invalid_line");
    let dup = refusal(first_extra + 2);
    assert_eq!(dup["code"], "duplicate_custom_id");
    assert_eq!(
        dup["message"],
        format!(
            "line {}: custom_id \"r-5\" is line 6's already",
            first_extra + 2
        )
    );
    assert_eq!(
        refusal(first_extra + 3)["message"],
        format!("line {}: method: expected \"POST\"", first_extra + 3)
    );
    worker.stop().await;
}
