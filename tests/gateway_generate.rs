//! Generation at the gateway's front doors, end to end: a real worker serving the toy decoder
//! (`models/storyteller`), the real RabbitMQ, and real HTTP clients — curl for Triton's
//! generate extension (JSON and server-sent events) and the `openai` Python package for the
//! OpenAI-compatible routes. A fake generation worker (a plain consumer on a queue of its own)
//! sees exactly what the gateway publishes and answers as a healthy worker never does: never,
//! or a stream restarted after a redelivery.

mod common;

use std::path::Path;
use std::time::Duration;

use common::curl::CurlReply;
use common::gateway::{start_gateway, TestGateway};
use common::*;
use futures_util::StreamExt;
use infermq::broker::headers::find;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// POSTs `body` to `url` with curl (`-N`: events printed as they come), for at most
/// `max_time` seconds; a cut answer is returned as far as it came.
async fn post(url: &str, body: &Value, max_time: u32) -> CurlReply {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-N", "-i", "-H", "Expect:"]);
    command.args(["-H", "content-type: application/json"]);
    command.args(["--max-time", &max_time.to_string()]);
    command.args(["--data-binary", &body.to_string()]);
    let out = command.arg(url).output().await.expect("curl runs");
    // Cut before the head (the client left first): status 0.
    CurlReply::parse(&out.stdout).unwrap_or(CurlReply {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
    })
}

fn reference_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(manifest_path("tests/llm/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["cases"].as_array().unwrap().clone()
}

/// A worker serving `storyteller` and a gateway in front of it (with `extra` settings), the
/// gateway reading chat templates from the worker's repository.
struct Fleet {
    _models: tempfile::TempDir,
    worker: TestWorker,
    gw: TestGateway,
}

impl Fleet {
    async fn start(extra: &[(&str, &str)]) -> Fleet {
        Fleet::with(model_repository(&["storyteller"]), extra).await
    }

    /// The fleet of `models` (a repository).
    async fn with(models: tempfile::TempDir, extra: &[(&str, &str)]) -> Fleet {
        let prefix = random_prefix();
        let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
        let path = models.path().display().to_string();
        let mut env = vec![("INFERMQ__REPOSITORY__PATH", path.as_str())];
        env.extend_from_slice(extra);
        let gw = start_gateway(&prefix, &env).await;
        Fleet {
            _models: models,
            worker,
            gw,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.addr)
    }

    async fn stop(self) {
        self.gw.stop().await;
        self.worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_and_generate_stream_answer_the_reference_text() {
    let fleet = Fleet::start(&[]).await;
    for case in reference_cases().iter().take(2) {
        let body = json!({"id": "mine", "text_input": case["prompt"],
            "parameters": {"max_tokens": case["max_tokens"]}});
        // The whole answer, as the worker published it, under the client's id.
        let answer = post(&fleet.url("/v2/models/storyteller/generate"), &body, 60).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let whole = answer.json();
        assert_eq!(whole["id"], "mine");
        assert_eq!(whole["model_name"], "storyteller");
        assert_eq!(whole["model_version"], "1");
        assert_eq!(whole["text_output"], case["text"], "{whole}");
        assert_eq!(whole["finish_reason"], case["finish_reason"]);
        let completion_tokens = case["output_ids"].as_array().unwrap().len();
        assert_eq!(whole["usage"]["completion_tokens"], completion_tokens);
        // The same job streamed: one event per stream message (the first piece alone, later
        // pieces grouped while a message waits for its confirm), in order, the last with the
        // reason.
        let streamed = post(
            &fleet.url("/v2/models/storyteller/versions/1/generate_stream"),
            &body,
            60,
        )
        .await;
        assert_eq!(streamed.status, 200);
        assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
        let events: Vec<Value> = streamed
            .events()
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(events.len() >= 2, "{events:?}");
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence"], i, "{event}");
            assert_eq!(event["id"], "mine");
        }
        let text: String = events
            .iter()
            .map(|e| e["text_output"].as_str().unwrap())
            .collect();
        assert_eq!(text, whole["text_output"].as_str().unwrap());
        let last = events.last().unwrap();
        assert_eq!(last["finish_reason"], whole["finish_reason"]);
        assert_eq!(last["usage"], whole["usage"]);
        assert!(events[..events.len() - 1]
            .iter()
            .all(|e| e.get("finish_reason").is_none()));
    }
    // Without an id the answer has none.
    let body = json!({"text_input": "And", "parameters": {"max_tokens": 2}});
    let answer = post(&fleet.url("/v2/models/storyteller/generate"), &body, 60).await;
    assert_eq!(answer.status, 200);
    assert!(answer.json().get("id").is_none(), "{}", answer.json());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_errors_have_their_statuses() {
    let fleet = Fleet::start(&[]).await;
    let generate = fleet.url("/v2/models/storyteller/generate");
    let stream = fleet.url("/v2/models/storyteller/generate_stream");
    // The worker's refusal, relayed with its status, under the client's id; streamed or not.
    let misspelt = json!({"id": "e-1", "text_input": "In", "parameters": {"max_tokns": 3}});
    for url in [&generate, &stream] {
        let answer = post(url, &misspelt, 30).await;
        assert_eq!(answer.status, 400, "{url}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let body = answer.json();
        assert_eq!(body["id"], "e-1");
        assert_eq!(body["code"], "invalid_request");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("parameters: unknown field \"max_tokns\""),
            "{error}"
        );
    }
    let too_long = json!({"text_input": "In", "parameters": {"max_tokens": 1000}});
    let answer = post(&generate, &too_long, 30).await;
    assert_eq!(answer.status, 400);
    let error = answer.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("exceed the context length of 256 tokens"),
        "{error}"
    );
    // Refused by the gateway before publishing, in the worker's shape.
    for (body, expected) in [
        (json!([1, 2]), "body: expected a JSON object"),
        (
            json!({"id": 7, "text_input": "In"}),
            "id: expected a string",
        ),
    ] {
        let answer = post(&generate, &body, 30).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.json()["error"], expected);
        assert_eq!(answer.json()["code"], "invalid_request");
    }
    // No such model: no queue.
    let body = json!({"text_input": "In"});
    let answer = post(&fleet.url("/v2/models/ghost/generate_stream"), &body, 30).await;
    assert_eq!(answer.status, 404);
    let error = answer.json()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("unknown model \"ghost\""), "{error}");
    fleet.stop().await;
}

/// What the fake generation worker received: properties and body.
type Seen = (BasicProperties, Value);

/// A consumer on `queue` that answers generation jobs by their prompt: `"hang"` never,
/// `"pieces-then-hang"` two pieces and then nothing, `"restart"` a stream that starts again
/// from `sequence` 0 (as after a redelivery) and ends.
async fn fake_generator(
    connection: &lapin::Connection,
    queue: &str,
) -> mpsc::UnboundedReceiver<Seen> {
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
            let body: Value = serde_json::from_slice(&delivery.data).expect("a JSON job");
            let _ = tx.send((delivery.properties.clone(), body.clone()));
            let piece = |sequence: u64, text: &str, last: bool| {
                let mut answer = json!({"id": body["id"], "model_name": "fake",
                    "model_version": "1", "sequence": sequence, "text_output": text});
                if last {
                    answer["finish_reason"] = json!("length");
                    answer["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 3});
                }
                answer.to_string()
            };
            let answers = match body["text_input"].as_str() {
                Some("pieces-then-hang") => vec![piece(0, "a", false), piece(1, "b", false)],
                Some("restart") => vec![
                    piece(0, "a", false),
                    piece(1, "b", false),
                    piece(0, "a", false),
                    piece(1, "b", false),
                    piece(2, "c", true),
                ],
                _ => vec![],
            };
            let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
            let correlation_id = delivery
                .properties
                .correlation_id()
                .clone()
                .unwrap_or_default();
            for answer in answers {
                let properties = BasicProperties::default()
                    .with_correlation_id(correlation_id.clone())
                    .with_content_type("application/json".into());
                let _ = channel
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions::default(),
                        answer.as_bytes(),
                        properties,
                    )
                    .await;
            }
        }
    });
    rx
}

/// The cancel messages published on `prefix`'s cancel exchange, from now on.
async fn cancels(connection: &lapin::Connection, prefix: &str) -> mpsc::UnboundedReceiver<Value> {
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .expect("declare");
    channel
        .queue_bind(
            queue.name().clone(),
            format!("{prefix}.cancel").as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind to the cancel exchange");
    let mut consumer = consume(&channel, queue.name().as_str()).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = tx.send(serde_json::from_slice(&delivery.data).expect("JSON cancel"));
        }
    });
    rx
}

async fn connect() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_carries_the_gateways_id_a_seed_and_a_deadline_and_repeats_are_dropped() {
    // A worker on the prefix declares the cancel exchange.
    let fleet = Fleet::start(&[]).await;
    let prefix = fleet.worker.prefix.clone();
    let connection = connect().await;
    let mut seen = fake_generator(&connection, &format!("{prefix}.predict.fake")).await;
    let body = json!({"id": "mine", "text_input": "restart", "parameters": {"max_tokens": 3}});
    let answer = post(&fleet.url("/v2/models/fake/generate_stream"), &body, 30).await;
    assert_eq!(answer.status, 200);
    let events: Vec<Value> = answer
        .events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let sequences: Vec<&Value> = events.iter().map(|e| &e["sequence"]).collect();
    assert_eq!(sequences, [0, 1, 2], "{events:?}");
    assert!(events.iter().all(|e| e["id"] == "mine"));
    let (properties, job) = next(&mut seen).await;
    let id = job["id"].as_str().unwrap();
    assert_ne!(id, "mine");
    assert_eq!(properties.correlation_id().as_ref().unwrap().as_str(), id);
    assert_eq!(job["parameters"]["stream"], true);
    assert_eq!(job["parameters"]["max_tokens"], 3);
    assert!(job["parameters"]["seed"].is_u64(), "{job}");
    let headers = properties.headers().as_ref();
    assert!(find(headers, "x-deadline-ms").is_some());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_job_and_a_full_gateway_answers_429() {
    let fleet = Fleet::start(&[("INFERMQ__GATEWAY__MAX_IN_FLIGHT", "1")]).await;
    let prefix = fleet.worker.prefix.clone();
    let connection = connect().await;
    let mut seen = fake_generator(&connection, &format!("{prefix}.predict.fake")).await;
    let mut cancelled = cancels(&connection, &prefix).await;
    // A stream cut by its client after two pieces: its job is cancelled by its id.
    let body = json!({"text_input": "pieces-then-hang"});
    let answer = post(&fleet.url("/v2/models/fake/generate_stream"), &body, 2).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.events().len(), 2, "{:?}", answer.events());
    let (_, job) = next(&mut seen).await;
    let cancel = next(&mut cancelled).await;
    assert_eq!(cancel, json!({"id": job["id"], "model": "fake"}));
    // While a request holds the one place (gateway.max_in_flight = 1), others get 429.
    let hold = {
        let url = fleet.url("/v2/models/fake/generate");
        tokio::spawn(async move { post(&url, &json!({"text_input": "hang"}), 3).await })
    };
    let (_, held) = next(&mut seen).await;
    let answer = post(&fleet.url("/v2/models/fake/generate"), &body, 10).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    let error = answer.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("gateway.max_in_flight"), "{error}");
    // The held request's client leaves too: its job is cancelled, and the place is free.
    assert_eq!(hold.await.unwrap().status, 0);
    let cancel = next(&mut cancelled).await;
    assert_eq!(cancel["id"], held["id"]);
    let answer = post(&fleet.url("/v2/models/fake/generate_stream"), &body, 2).await;
    assert_eq!(answer.status, 200);
    fleet.stop().await;
}

/// Runs a script of tests/gateway_generate/ with `args`; its stdout.
async fn python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/gateway_generate")
        .join(script);
    let out = tokio::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_works_unchanged() {
    if let Err(why) = python_with("import openai", &["openai"]) {
        eprintln!("SKIPPED: the openai package cannot be installed with pip: {why}");
        return;
    }
    // A decoder with a chat template, one without (the genai layout less its
    // chat_template.jinja), and a model that does not generate.
    let models = model_repository(&["storyteller", "iris"]);
    let plain = models.path().join("plain/1");
    copy_dir(&manifest_path("tests/llm/genai"), &plain);
    std::fs::remove_file(plain.join("chat_template.jinja")).unwrap();
    let fleet = Fleet::with(models, &[]).await;
    let reference = manifest_path("tests/llm/reference.json");
    let addr = fleet.gw.addr.to_string();
    let reference = reference.to_str().unwrap();
    let out = python(
        "openai_client.py",
        &["--url", &addr, "--reference", reference],
    )
    .await;
    assert!(out.contains("all openai checks passed"));
    // The stream as curl sees it: chunks, then `data: [DONE]`.
    let body = json!({"model": "storyteller", "stream": true, "max_tokens": 3,
        "messages": [{"role": "user", "content": "And God said"}]});
    let answer = post(&fleet.url("/v1/chat/completions"), &body, 30).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let events = answer.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    // A whole answer says the job's own finish reason beside the API's.
    let body = json!({"model": "storyteller", "prompt": "And", "max_tokens": 2});
    let answer = post(&fleet.url("/v1/completions"), &body, 30).await;
    assert_eq!(answer.header("infermq-finish-reason"), Some("length"));
    fleet.stop().await;
}

#[path = "gateway_generate/batch.rs"]
mod batch;
