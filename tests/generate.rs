//! Generation jobs through RabbitMQ on the bundled toy decoder, in both layouts: the plain
//! export (`models/storyteller`) and onnxruntime-genai's builder output of the same weights
//! (`tests/llm/genai`). Greedy text equals the reference transformers generated
//! (`tests/llm/reference.json`, made by `scripts/make-llm.py`), alone and batched; streaming,
//! seeds, stop strings, EOS, bad jobs, deadlines, cancel messages and redelivery.
//!
//! Tests whose point is a job that is still running (a short job overtaking long ones, a
//! deadline or a cancel reaching a job mid-run, a worker stopping mid-run) run the same model on
//! ONNX Runtime with each run slowed by [`STEP_DELAY`], so that "mid-run" does not depend on how
//! fast the machine is, and with `[generate] eos_token_ids = [0]` (the padding id, which the
//! model never generates), so that every job runs to its `max_tokens`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use infermq::client::{header_str, headers, Client};
use infermq::protocol::{EncodedBody, ModelSignature, Tensor};
use infermq::runtime::{Backend, RuntimeError, SessionOptions};
use infermq::serving::{BackendLoader, OrtLoader};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};

/// Each run of the slowed decoder takes at least this long.
const STEP_DELAY: Duration = Duration::from_millis(15);

/// A repository with the plain export as `storyteller` and the builder's as `genai`.
fn repository() -> tempfile::TempDir {
    let dir = model_repository(&["storyteller"]);
    copy_dir(
        &manifest_path("tests/llm/genai"),
        &dir.path().join("genai/1"),
    );
    dir
}

fn reference() -> Value {
    let text = std::fs::read_to_string(manifest_path("tests/llm/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cases() -> Vec<Value> {
    reference()["cases"].as_array().unwrap().clone()
}

/// Publishes a generation job; returns its correlation id.
async fn send(client: &Client, queue: &str, body: &Value, extra: &[(&str, &str)]) -> String {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let body = EncodedBody {
        body: serde_json::to_vec(body).unwrap(),
        header_len: None,
        content_type: "application/json",
    };
    let properties = client.job_properties(&correlation_id, &body, headers(extra));
    client.publish(queue, &body.body, properties).await.unwrap();
    correlation_id
}

/// The answers on the client's reply queue, by correlation id, until `done` says every job
/// has its last message (an error, or a `finish_reason`).
async fn collect(client: &mut Client, jobs: &[String]) -> HashMap<String, Vec<Value>> {
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    let finished = |answers: &HashMap<String, Vec<Value>>| {
        jobs.iter().all(|id| {
            answers.get(id).and_then(|a| a.last()).is_some_and(|last| {
                last.get("finish_reason").is_some() || last.get("error").is_some()
            })
        })
    };
    while !finished(&answers) {
        let delivery = client.next_reply(Duration::from_secs(60)).await.unwrap();
        let id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .to_string();
        let mut value: Value = serde_json::from_slice(&delivery.data).unwrap();
        if let Some(code) = header_str(&delivery, "x-error-code") {
            value["x-error-code"] = json!(code);
        }
        answers.entry(id).or_default().push(value);
    }
    answers
}

/// Every message a job gets, its last one last.
async fn messages(client: &mut Client, queue: &str, body: &Value) -> Vec<Value> {
    let id = send(client, queue, body, &[]).await;
    collect(client, std::slice::from_ref(&id))
        .await
        .remove(&id)
        .unwrap()
}

/// The texts of a job's messages, joined.
fn joined(messages: &[Value]) -> String {
    messages
        .iter()
        .map(|m| m["text_output"].as_str().unwrap())
        .collect()
}

async fn one(client: &mut Client, queue: &str, body: Value) -> Value {
    let id = send(client, queue, &body, &[]).await;
    collect(client, std::slice::from_ref(&id))
        .await
        .remove(&id)
        .unwrap()
        .pop()
        .unwrap()
}

fn job(prompt: &str, max_tokens: u64) -> Value {
    json!({"text_input": prompt, "parameters": {"max_tokens": max_tokens}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_answer_the_reference_text_alone_and_batched() {
    let repo = repository();
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let mut client = client().await;
    let cases = cases();
    for model in ["storyteller", "genai"] {
        let queue = worker.queue(model);
        // Alone: one job at a time.
        let first = &cases[0];
        let alone = one(
            &mut client,
            &queue,
            job(
                first["prompt"].as_str().unwrap(),
                first["max_tokens"].as_u64().unwrap(),
            ),
        )
        .await;
        assert_eq!(
            alone["text_output"], first["text"],
            "{model} alone: {alone}"
        );
        // Batched: every case at once, so that they decode together and join mid-run.
        let mut ids = Vec::new();
        for case in &cases {
            let body = json!({"id": case["prompt"], "text_input": case["prompt"], "parameters": {"max_tokens": case["max_tokens"]}});
            ids.push(send(&client, &queue, &body, &[]).await);
        }
        let answers = collect(&mut client, &ids).await;
        for (case, id) in cases.iter().zip(&ids) {
            let answer = &answers[id][0];
            assert_eq!(
                answer["text_output"], case["text"],
                "{model}, prompt {}: {answer}",
                case["prompt"]
            );
            assert_eq!(
                answer["finish_reason"], case["finish_reason"],
                "{model}: {answer}"
            );
            assert_eq!(answer["id"], case["prompt"]);
            assert_eq!(answer["model_name"], model);
            assert_eq!(answer["model_version"], "1");
            assert_eq!(
                answer["usage"]["prompt_tokens"],
                case["prompt_ids"].as_array().unwrap().len()
            );
            assert_eq!(
                answer["usage"]["completion_tokens"],
                case["output_ids"].as_array().unwrap().len()
            );
        }
        // A case that ends by the model's end-of-sequence token.
        assert!(
            cases.iter().any(|c| c["finish_reason"] == "eos"),
            "the reference has an EOS case"
        );
    }
    let (status, models) = http_get(worker.handles.http_addr, "/v2/models")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    let layouts: Vec<(&str, &str, &str)> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let g = &m["versions"][0]["generate"];
            (
                g["cache_layout"].as_str().unwrap(),
                g["found_by"].as_str().unwrap(),
                g["kv_cache"].as_str().unwrap(),
            )
        })
        .collect();
    // The GroupQueryAttention export's caches are written in place (the text above was
    // generated that way), the plain export's gathered.
    assert_eq!(
        layouts,
        vec![
            ("row_lengths", "genai_config.json", "in_place"),
            ("left_padded", "past_key_values", "gathered")
        ]
    );
    assert_eq!(models[1]["versions"][0]["generate"]["context_length"], 256);
    worker
        .wait_for_metric("infermq_generation_tokens_total{model=\"genai\",version=\"1\"}")
        .await;
    let (_, metrics) = http_get(worker.handles.http_addr, "/metrics")
        .await
        .unwrap();
    let generated: u64 = cases
        .iter()
        .map(|c| c["output_ids"].as_array().unwrap().len() as u64)
        .sum::<u64>()
        + cases[0]["output_ids"].as_array().unwrap().len() as u64;
    let line = format!(
        "infermq_generation_tokens_total{{model=\"storyteller\",version=\"1\"}} {generated}"
    );
    assert!(metrics.contains(&line), "{line} not in metrics");
    assert!(metrics.contains(
        "infermq_generation_time_to_first_token_seconds_count{model=\"storyteller\",version=\"1\"}"
    ));
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_pieces_come_in_order_and_join_to_the_answer() {
    let repo = repository();
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let mut client = client().await;
    for case in cases() {
        let prompt = case["prompt"].as_str().unwrap();
        let body = json!({"id": "s", "text_input": prompt, "parameters": {"max_tokens": case["max_tokens"], "stream": true}});
        let id = send(&client, &worker.queue("storyteller"), &body, &[]).await;
        let messages = collect(&mut client, std::slice::from_ref(&id))
            .await
            .remove(&id)
            .unwrap();
        let mut joined = String::new();
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m["sequence"], i, "{messages:?}");
            assert_eq!(m["id"], "s");
            let piece = m["text_output"].as_str().unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "a piece split a character: {piece:?}"
            );
            assert_eq!(m.get("finish_reason").is_some(), i + 1 == messages.len());
            joined.push_str(piece);
        }
        assert_eq!(joined, case["text"].as_str().unwrap(), "prompt {prompt:?}");
        let last = messages.last().unwrap();
        assert_eq!(
            last["usage"]["completion_tokens"],
            case["output_ids"].as_array().unwrap().len()
        );
        // The first piece goes at once; the rest may be grouped while it waits for its confirm.
        if case["finish_reason"] == "length" {
            assert!(
                messages.len() >= 2,
                "{} messages for {} tokens",
                messages.len(),
                case["max_tokens"]
            );
        }
    }
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_repeat_stop_strings_end_the_text_and_bad_jobs_are_refused() {
    let repo = repository();
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let mut client = client().await;
    let queue = worker.queue("storyteller");
    let sampled = |seed: u64| json!({"text_input": "And God said", "parameters": {"max_tokens": 48, "temperature": 1.0, "top_p": 0.95, "top_k": 100, "seed": seed}});
    let a = one(&mut client, &queue, sampled(7)).await;
    let b = one(&mut client, &queue, sampled(7)).await;
    let c = one(&mut client, &queue, sampled(8)).await;
    assert_eq!(a["text_output"], b["text_output"]);
    assert_ne!(
        a["text_output"], c["text_output"],
        "two seeds, the same 48 sampled tokens"
    );
    let greedy = one(&mut client, &queue, job("And God said", 48)).await;
    assert_ne!(a["text_output"], greedy["text_output"]);

    // A stop string ends the text before it, streamed or not.
    let text = greedy["text_output"].as_str().unwrap();
    let stop = &text[10..16];
    let before = &text[..text.find(stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"text_input": "And God said", "parameters": {"max_tokens": 48, "stop": ["zzz", stop], "stream": stream}});
        let messages = messages(&mut client, &queue, &body).await;
        assert_eq!(joined(&messages), before, "stop {stop:?}, stream {stream}");
        assert_eq!(messages.last().unwrap()["finish_reason"], "stop");
    }

    let bad = [
        (json!({"text_input": 3}), "text_input: expected a string"),
        (json!({"text_input": "x", "parameters": {"max_tokens": 0}}), "parameters.max_tokens: expected an integer ≥ 1"),
        (json!({"text_input": "x", "parameters": {"temprature": 0.5}}), "parameters: unknown field \"temprature\""),
        (json!({"text_input": "x", "parameters": {"max_tokens": 256}}), "text_input and parameters.max_tokens: a prompt of 2 tokens and max_tokens 256 exceed the context length of 256 tokens"),
        (json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}), "this model generates text"),
        (json!({"text_input": "And ".repeat(1 << 18)}), "bytes cannot fit the context length of 256 tokens"),
    ];
    for (body, expected) in bad {
        let answer = one(&mut client, &queue, body.clone()).await;
        assert_eq!(
            answer["x-error-code"], "invalid_request",
            "{body}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{body}: {answer}"
        );
    }
    // A version the worker does not serve.
    let id = send(&client, &queue, &job("And", 4), &[("x-model-version", "9")]).await;
    let answer = collect(&mut client, std::slice::from_ref(&id))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(answer[0]["x-error-code"], "unknown_version", "{answer:?}");
    // Nothing else was affected.
    let again = one(&mut client, &queue, job("And God said", 48)).await;
    assert_eq!(again["text_output"], greedy["text_output"]);
    client.close().await;
    worker.stop().await;
}

/// ONNX Runtime sessions, each run held back by [`STEP_DELAY`].
struct Slowed(Box<dyn Backend>);

impl Backend for Slowed {
    fn signature(&self) -> &ModelSignature {
        self.0.signature()
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        std::thread::sleep(STEP_DELAY);
        self.0.infer(inputs)
    }
}

struct SlowLoader;

impl BackendLoader for SlowLoader {
    fn load(
        &self,
        model: &Path,
        options: &SessionOptions,
        instances: usize,
    ) -> Result<Vec<Box<dyn Backend>>, RuntimeError> {
        let backends = OrtLoader.load(model, options, instances)?;
        Ok(backends
            .into_iter()
            .map(|b| Box::new(Slowed(b)) as Box<dyn Backend>)
            .collect())
    }
}

/// [`repository`] with jobs that end only at their `max_tokens`.
fn endless_repository() -> tempfile::TempDir {
    let dir = repository();
    std::fs::write(
        dir.path().join("storyteller/config.toml"),
        "[generate]\neos_token_ids = [0]\n",
    )
    .unwrap();
    dir
}

async fn slow_worker(prefix: &str, repo: &Path) -> TestWorker {
    TestWorker::start_with(settings(prefix, repo, &[]), Arc::new(SlowLoader)).await
}

fn epoch_ms_in(d: Duration) -> String {
    (SystemTime::now() + d)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_overtakes_long_ones_and_deadlines_and_cancels_stop_jobs_mid_run() {
    let repo = endless_repository();
    let prefix = random_prefix();
    let worker = slow_worker(&prefix, repo.path()).await;
    let mut client = client().await;
    let queue = worker.queue("storyteller");
    // Eight long jobs (200 steps each, 3 s at least), streamed: their first pieces say they run.
    let long =
        json!({"text_input": "And Abraham", "parameters": {"max_tokens": 200, "stream": true}});
    let mut longs = Vec::new();
    for _ in 0..8 {
        longs.push(send(&client, &queue, &long, &[]).await);
    }
    let mut seen = HashMap::<String, Vec<Value>>::new();
    while longs.iter().any(|id| !seen.contains_key(id)) {
        let d = client.next_reply(Duration::from_secs(60)).await.unwrap();
        let id = d.properties.correlation_id().as_ref().unwrap().to_string();
        seen.entry(id)
            .or_default()
            .push(serde_json::from_slice(&d.data).unwrap());
    }
    // A short job joins them mid-run and ends first.
    let short = send(&client, &queue, &job("And God said", 5), &[]).await;
    // A job with a deadline 600 ms away, and one cancelled once it has started.
    let deadline = send(
        &client,
        &queue,
        &json!({"text_input": "And", "parameters": {"max_tokens": 200}}),
        &[("x-deadline-ms", &epoch_ms_in(Duration::from_millis(600)))],
    )
    .await;
    let cancelled = send(&client, &queue, &json!({"id": "to-cancel", "text_input": "And", "parameters": {"max_tokens": 200, "stream": true}}), &[]).await;
    let mut order = Vec::new();
    let mut cancel_sent = false;
    let mut all: Vec<String> = longs.clone();
    all.extend([short.clone(), deadline.clone(), cancelled.clone()]);
    loop {
        let d = client.next_reply(Duration::from_secs(60)).await.unwrap();
        let id = d.properties.correlation_id().as_ref().unwrap().to_string();
        let value: Value = serde_json::from_slice(&d.data).unwrap();
        if id == cancelled && !cancel_sent {
            let properties = BasicProperties::default();
            client
                .channel()
                .basic_publish(
                    format!("{prefix}.cancel").as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    br#"{"id": "to-cancel"}"#,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            cancel_sent = true;
        }
        if value.get("finish_reason").is_some() {
            order.push(id.clone());
        }
        seen.entry(id).or_default().push(value);
        if all.iter().all(|id| order.contains(id)) {
            break;
        }
    }
    let position = |id: &String| order.iter().position(|o| o == id).unwrap();
    assert!(
        longs.iter().all(|l| position(&short) < position(l)),
        "the short job ended after a long one"
    );
    let short_answer = &seen[&short][0];
    assert_eq!(short_answer["finish_reason"], "length");
    let expected: String = cases()[1]["text"].as_str().unwrap().to_string();
    assert!(
        expected.starts_with(short_answer["text_output"].as_str().unwrap()),
        "{short_answer}"
    );
    // Each long job's text begins with the reference's, which ends at the end-of-sequence
    // token the model generates there (here it goes on: EOS is not generated text).
    let reference = cases()
        .into_iter()
        .find(|c| c["prompt"] == "And Abraham")
        .unwrap();
    for id in &longs {
        let text: String = seen[id]
            .iter()
            .map(|m| m["text_output"].as_str().unwrap())
            .collect();
        assert!(
            text.starts_with(reference["text"].as_str().unwrap()),
            "{text:?}"
        );
        assert_eq!(seen[id].last().unwrap()["usage"]["completion_tokens"], 200);
    }
    let late = &seen[&deadline][0];
    assert_eq!(late["finish_reason"], "deadline", "{late}");
    let tokens = late["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens < 200, "{late}");
    let stopped = seen[&cancelled].last().unwrap();
    assert_eq!(stopped["finish_reason"], "cancelled", "{stopped}");
    assert!(stopped["usage"]["completion_tokens"].as_u64().unwrap() < 200);
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_interval_groups_pieces_into_fewer_messages() {
    let repo = repository();
    std::fs::write(
        repo.path().join("storyteller/config.toml"),
        "[generate]\neos_token_ids = [0]\nstream_interval_ms = 300\n",
    )
    .unwrap();
    let prefix = random_prefix();
    let worker = slow_worker(&prefix, repo.path()).await;
    let mut client = client().await;
    let queue = worker.queue("storyteller");
    let whole = one(&mut client, &queue, job("And God said", 40)).await;
    let body =
        json!({"text_input": "And God said", "parameters": {"max_tokens": 40, "stream": true}});
    let messages = messages(&mut client, &queue, &body).await;
    assert_eq!(joined(&messages), whole["text_output"].as_str().unwrap());
    // 40 steps of 15 ms at least: 600 ms, two or three intervals. Ungrouped, each of the 40
    // tokens would be a message; grouped, fewer than 20 unless a step took over 130 ms.
    assert!(messages.len() >= 2, "{messages:?}");
    assert!(
        messages.len() < 20,
        "{} messages for 40 tokens with a 300 ms interval",
        messages.len()
    );
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_when_its_worker_stops_is_generated_again_by_another() {
    let repo = endless_repository();
    let prefix = random_prefix();
    let first = slow_worker(&prefix, repo.path()).await;
    let mut client = client().await;
    let queue = first.queue("storyteller");
    let body = json!({"text_input": "And God said", "parameters": {"max_tokens": 40, "stream": true, "temperature": 0.8, "seed": 11}});
    let id = send(&client, &queue, &body, &[]).await;
    let mut messages = Vec::new();
    let d = client.next_reply(Duration::from_secs(60)).await.unwrap();
    assert_eq!(d.properties.correlation_id().as_ref().unwrap().as_str(), id);
    messages.push(serde_json::from_slice::<Value>(&d.data).unwrap());
    // The worker stops mid-run: the job goes back to its queue, unanswered.
    first.shutdown.cancel();
    first.task.await.unwrap().unwrap();
    let second = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let rest = collect(&mut client, std::slice::from_ref(&id))
        .await
        .remove(&id)
        .unwrap();
    messages.extend(rest);
    // The stream starts again at 0: the consumer keeps the last run.
    let restart = messages.iter().rposition(|m| m["sequence"] == 0).unwrap();
    assert!(restart > 0, "the job was not generated again: {messages:?}");
    let again: String = messages[restart..]
        .iter()
        .map(|m| m["text_output"].as_str().unwrap())
        .collect();
    let first_run: String = messages[..restart]
        .iter()
        .map(|m| m["text_output"].as_str().unwrap())
        .collect();
    assert!(
        again.starts_with(&first_run),
        "the seed gives the same text after a redelivery"
    );
    let once = one(&mut client, &queue, json!({"text_input": "And God said", "parameters": {"max_tokens": 40, "temperature": 0.8, "seed": 11}})).await;
    assert_eq!(once["text_output"].as_str().unwrap(), again);
    client.close().await;
    second.stop().await;
}

/// Publishes `body` to `queue` on a channel of the test's own, answers to `reply_to`.
async fn publish_raw(channel: &lapin::Channel, queue: &str, body: &Value, reply_to: &str) {
    let properties = BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id("raw".into());
    let body = serde_json::to_vec(body).unwrap();
    let options = BasicPublishOptions::default();
    channel
        .basic_publish("".into(), queue.into(), options, &body, properties)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_to_direct_reply_to_arrives_once() {
    use futures_util::StreamExt;
    let repo = repository();
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut replies = consume(&channel, "amq.rabbitmq.reply-to").await;
    for stream in [true, false] {
        let body = json!({"text_input": "And God said", "parameters": {"max_tokens": 12, "stream": stream}});
        let queue = worker.queue("storyteller");
        publish_raw(&channel, &queue, &body, "amq.rabbitmq.reply-to").await;
        let mut messages = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), replies.next()).await;
            let delivery = next.unwrap().unwrap().unwrap();
            let value: Value = serde_json::from_slice(&delivery.data).unwrap();
            let last = value.get("finish_reason").is_some();
            messages.push(value);
            if last {
                break;
            }
        }
        let sequences: Vec<u64> = messages
            .iter()
            .filter_map(|m| m["sequence"].as_u64())
            .collect();
        let expected: Vec<u64> = if stream {
            (0..messages.len() as u64).collect()
        } else {
            vec![]
        };
        assert_eq!(sequences, expected, "stream {stream}: {messages:?}");
    }
    // Nothing was returned as unroutable, and no job ran twice.
    let (_, metrics) = http_get(worker.handles.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("infermq_results_returned_total{model=\"storyteller\"} 0"),
        "returned"
    );
    assert!(metrics.contains(
        "infermq_jobs_total{model=\"storyteller\",outcome=\"requeued\",version=\"1\"} 0"
    ));
    let _ = connection.close(200, "bye".into()).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reply_queue_is_gone_is_dead_lettered_not_generated_again() {
    use futures_util::StreamExt;
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    let repo = endless_repository();
    let prefix = random_prefix();
    let worker = slow_worker(&prefix, repo.path()).await;
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let replies = format!("{prefix}.replies");
    channel
        .queue_declare(
            replies.as_str().into(),
            QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut pieces = consume(&channel, &replies).await;
    let body = json!({"id": "gone", "text_input": "And", "parameters": {"max_tokens": 200, "stream": true}});
    publish_raw(&channel, &worker.queue("storyteller"), &body, &replies).await;
    // The first piece arrives; then the reply queue goes.
    tokio::time::timeout(Duration::from_secs(30), pieces.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    channel
        .queue_delete(replies.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let dead_channel = connection.create_channel().await.unwrap();
    let mut dead = consume(&dead_channel, &format!("{prefix}.dead")).await;
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reason = header_str(&letter, "x-error").unwrap_or_default();
    assert!(
        reason.contains("reply queue of a streamed job is gone"),
        "{reason}"
    );
    assert_eq!(serde_json::from_slice::<Value>(&letter.data).unwrap(), body);
    let (_, metrics) = http_get(worker.handles.http_addr, "/metrics")
        .await
        .unwrap();
    let requeued = "infermq_jobs_total{model=\"storyteller\",outcome=\"requeued\",version=\"1\"} 0";
    assert!(metrics.contains(requeued), "the job was generated again");
    let _ = connection.close(200, "bye".into()).await;
    worker.stop().await;
}
