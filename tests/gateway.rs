//! The HTTP gateway end to end: a real worker, the real RabbitMQ, and real HTTP clients —
//! Triton's `tritonclient.http` (tests/gateway/clients.py, checked against ONNX Runtime) and
//! curl. A small fake worker (a plain consumer on a queue of its own) sees exactly what the
//! gateway publishes and answers in ways a healthy worker never does (internal, late, never).

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::gateway::{start_gateway, TestGateway};
use common::*;
use futures_util::StreamExt;
use infermq::broker::headers::{as_i128, as_string, find};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_against_the_gateway_matches_onnx_runtime() {
    if let Err(why) = python_with(
        "import tritonclient.http, onnxruntime, numpy",
        &["tritonclient[http]", "onnxruntime==1.31.1", "numpy"],
    ) {
        eprintln!("SKIPPED: tritonclient/onnxruntime/numpy cannot be installed with pip: {why}");
        return;
    }
    let models = model_repository(&["iris", "mixed", "scaler"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
    let gw = start_gateway(&prefix, &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/clients.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &gw.addr.to_string(), "--models"])
        .arg(models.path())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "clients.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all tritonclient checks passed"));
    gw.stop().await;
    worker.stop().await;
}

/// An HTTP answer as curl printed it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// An answer from curl's response head (the status line, then headers) and its body.
    fn parse(head: &str, body: Vec<u8>) -> Answer {
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` against `url`; a body, if any, is sent from a file as is.
async fn curl(url: &str, args: &[&str], body: Option<&[u8]>) -> Answer {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-i", "--max-time", "30", "-H", "Expect:"]);
    command.args(args);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    if let Some(body) = body {
        std::fs::write(file.path(), body).expect("write body");
        command
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()));
    }
    let out = command.arg(url).output().await.expect("curl runs");
    let raw = &out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from curl {args:?} {url}: {:?}", out.status));
    Answer::parse(
        &String::from_utf8_lossy(&raw[..split]),
        raw[split + 4..].to_vec(),
    )
}

/// What the fake worker received: properties and body.
type Seen = (BasicProperties, Vec<u8>);

/// A consumer on `queue` that echoes each body back to `reply_to` (with its binary header),
/// or answers `internal` ("please-fail"), late ("please-delay") or never ("please-hang").
async fn fake_worker(connection: &lapin::Connection, queue: &str) -> mpsc::UnboundedReceiver<Seen> {
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("declare fake queue");
    let mut consumer = consume(&channel, queue).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = tx.send((delivery.properties.clone(), delivery.data.clone()));
            let body = delivery.data;
            let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
            if has(b"please-hang") {
                continue;
            }
            let mut headers = FieldTable::default();
            let request_headers = delivery.properties.headers().as_ref();
            if let Some(len) = find(request_headers, "inference-header-content-length") {
                headers.insert("inference-header-content-length".into(), len.clone());
            }
            let mut reply = body.clone();
            if has(b"please-fail") {
                let code = LongString::from("internal");
                headers.insert("x-error-code".into(), AMQPValue::LongString(code));
                reply = br#"{"error":"boom","code":"internal"}"#.to_vec();
            }
            let properties = BasicProperties::default()
                .with_correlation_id(
                    delivery
                        .properties
                        .correlation_id()
                        .clone()
                        .unwrap_or_default(),
                )
                .with_content_type(
                    delivery
                        .properties
                        .content_type()
                        .clone()
                        .unwrap_or_default(),
                )
                .with_headers(headers);
            let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
            let channel = channel.clone();
            let delay = has(b"please-delay");
            tokio::spawn(async move {
                if delay {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                let options = BasicPublishOptions::default();
                let _ = channel
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        options,
                        &reply,
                        properties,
                    )
                    .await;
            });
        }
    });
    rx
}

fn now_ms() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0)
}

#[path = "gateway/curl_checks.rs"]
mod curl_checks;

#[path = "gateway/model_names.rs"]
mod model_names;

#[path = "gateway/gathering.rs"]
mod gathering;
