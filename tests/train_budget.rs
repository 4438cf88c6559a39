//! The training budget and model admission through a real worker and broker: oversized networks,
//! a job that would change a served model's signature, a very long job's progress and history,
//! `training.allowed_models`, and CSV files with quoted fields and a byte-order mark.

mod common;

use std::time::{Duration, Instant};

use common::*;
use infermq::client::{header_str, headers, Client};
use infermq::protocol::{decode_response, EncodedBody};

fn json_body(value: &serde_json::Value) -> EncodedBody {
    EncodedBody {
        body: serde_json::to_vec(value).unwrap(),
        header_len: None,
        content_type: "application/json",
    }
}

/// Publishes a training job; returns its progress epochs and the result (or error result).
async fn train(
    client: &mut Client,
    queue: &str,
    job: &serde_json::Value,
    correlation: &str,
) -> (Vec<u64>, lapin::message::Delivery) {
    let body = json_body(job);
    let properties = client.job_properties(correlation, &body, headers(&[]));
    client.publish(queue, &body.body, properties).await.unwrap();
    let mut epochs = Vec::new();
    loop {
        let delivery = client
            .next_reply(Duration::from_secs(180))
            .await
            .expect("an answer");
        let correlation_id = delivery.properties.correlation_id().clone();
        assert_eq!(
            correlation_id.as_ref().map(|c| c.as_str()),
            Some(correlation)
        );
        if header_str(&delivery, "x-event").as_deref() != Some("progress") {
            return (epochs, delivery);
        }
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        epochs.push(body["epoch"].as_u64().unwrap());
    }
}

fn error_of(delivery: &lapin::message::Delivery) -> (String, String) {
    let res = decode_response(&delivery.data, None).unwrap();
    res.error.expect("an error result")
}

fn regression(model: &str, epochs: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{model}-{epochs}"), "model_name": model,
        "layers": [{"units": 1, "activation": "linear"}],
        "loss": "mse", "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "epochs": epochs, "batch_size": 2,
        "data": {"x": [[0.0], [1.0]], "y": [[1.0], [3.0]]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_networks_and_changed_signatures_are_refused_naming_the_limit() {
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(
        &random_prefix(),
        repo.path(),
        &[("INFERMQ__TRAINING__ALLOWED_MODELS", "iris,team-a-*")],
    ))
    .await;
    let mut client = client().await;
    let queue = format!("{}.train", worker.prefix);

    let mut huge = regression("team-a-huge", 1);
    huge["layers"] = serde_json::json!([{"units": 65536}, {"units": 65536}, {"units": 2}]);
    huge["data"]["y"] = serde_json::json!([[1.0, 0.0], [3.0, 0.0]]);
    let started = Instant::now();
    let (epochs, delivery) = train(&mut client, &queue, &huge, "huge").await;
    let (code, message) = error_of(&delivery);
    assert_eq!(code, "invalid_request");
    assert_eq!(
        message,
        "layers: 4,295,294,978 parameters exceed training.max_parameters = 10000000"
    );
    assert!(epochs.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused before training"
    );

    // A 1-unit regression as a new version of the served 3-class iris would break its clients.
    let mut as_iris = regression("iris", 5);
    as_iris["layers"] = serde_json::json!([{"units": 1}]);
    as_iris["data"] =
        serde_json::json!({"x": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]], "y": [[0.0], [1.0]]});
    let (_, delivery) = train(&mut client, &queue, &as_iris, "as-iris").await;
    let (code, message) = error_of(&delivery);
    assert_eq!(code, "invalid_request");
    assert_eq!(
        message,
        "model_name: \"iris\" serves output \"probabilities\" FP32 [-1, 3]; \
         this job would produce \"probabilities\" FP32 [-1, 1]"
    );
    assert!(
        !repo.path().join("iris/2").exists(),
        "no version was written"
    );

    let (_, delivery) = train(&mut client, &queue, &regression("team-b-x", 1), "b").await;
    let (code, message) = error_of(&delivery);
    assert_eq!(code, "invalid_request");
    assert_eq!(
        message,
        "model_name: \"team-b-x\" matches none of training.allowed_models"
    );
    let res = decode_response(&delivery.data, None).unwrap();
    assert_eq!(res.model_name.as_deref(), Some("team-b-x"));

    // A 200 KB unknown field name is answered with a short error, on the same connection.
    let mut unknown = regression("team-a-x", 1);
    unknown["f".repeat(200_000)] = serde_json::json!(1);
    let (_, delivery) = train(&mut client, &queue, &unknown, "unknown").await;
    let header = header_str(&delivery, "x-error").expect("x-error");
    assert!(header.len() <= 1024, "x-error of {} bytes", header.len());
    assert!(
        header.starts_with("invalid training job: unknown field `fff"),
        "{header:.80}"
    );

    // A name that fails validation is answered but never becomes a metric label.
    let (_, delivery) = train(
        &mut client,
        &queue,
        &regression("bad name\n{x=\"1\"}", 1),
        "bad",
    )
    .await;
    let (code, message) = error_of(&delivery);
    assert_eq!(code, "invalid_request");
    assert!(message.starts_with("model_name: "), "{message}");

    // Refused jobs are counted under their valid model name, or none, once settled.
    let counted = [
        "infermq_training_jobs_total{model=\"\",outcome=\"invalid_request\"} 1",
        "infermq_training_jobs_total{model=\"iris\",outcome=\"invalid_request\"} 1",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = worker.handles.metrics.render();
        if counted.iter().all(|c| metrics.contains(c)) || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for c in counted {
        assert!(metrics.contains(c), "{c} in {metrics}");
    }
    assert!(!metrics.contains("bad name"), "{metrics}");
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_epochs_send_about_one_progress_message_a_second() {
    let repo = model_repository(&[]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let queue = format!("{}.train", worker.prefix);
    let started = Instant::now();
    let (epochs, delivery) = train(&mut client, &queue, &regression("long", 100_000), "long").await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(header_str(&delivery, "x-event").as_deref(), Some("result"));
    let result: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    let duration_s = result["duration_ms"].as_f64().unwrap() / 1e3;
    println!(
        "100000 epochs in {duration_s:.1} s of training ({seconds:.1} s end to end): {} progress messages, result {} bytes",
        epochs.len(),
        delivery.data.len()
    );
    assert_eq!((epochs[0], *epochs.last().unwrap()), (1, 100_000));
    assert!(epochs.windows(2).all(|w| w[0] < w[1]));
    assert!(
        epochs.len() as f64 <= duration_s.ceil() + 2.0,
        "{} progress messages in {duration_s:.1} s",
        epochs.len()
    );
    let history = result["history"].as_array().unwrap();
    assert_eq!(history.len(), 1000, "training.max_history");
    assert_eq!(history[0]["epoch"], 1);
    assert_eq!(history[999]["epoch"], 100_000);
    assert!(
        delivery.data.len() < 1024 * 1024,
        "{} bytes",
        delivery.data.len()
    );
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_with_quoted_fields_a_byte_order_mark_and_crlf_trains() {
    let repo = model_repository(&[]);
    let data = tempfile::tempdir().unwrap();
    let csv = "\u{feff}\"x, in cm\",\"the \"\"label\"\"\"\r\n\"0\",1\r\n1,\"3\"\r\n2,5\r\n3,7\r\n";
    std::fs::write(data.path().join("quoted.csv"), csv).unwrap();
    let worker = TestWorker::start(settings(
        &random_prefix(),
        repo.path(),
        &[("INFERMQ__TRAINING__DATA_DIR", data.path().to_str().unwrap())],
    ))
    .await;
    let mut client = client().await;
    let queue = format!("{}.train", worker.prefix);
    let mut job = regression("quoted", 300);
    job["optimizer"] = serde_json::json!({"type": "adam", "learning_rate": 0.1});
    job["data"] = serde_json::json!({
        "uri": format!("file://{}", data.path().join("quoted.csv").display()),
        "label_column": "the \"label\""
    });
    let (_, delivery) = train(&mut client, &queue, &job, "quoted").await;
    assert_eq!(
        header_str(&delivery, "x-error-code"),
        None,
        "{}",
        String::from_utf8_lossy(&delivery.data)
    );
    let result: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(result["model_version"], "1");
    let mse = result["metrics"]["mse"].as_f64().unwrap();
    assert!(
        mse < 0.05,
        "y = 2x + 1 learnt from the quoted file: mse {mse}"
    );
    client.close().await;
    worker.stop().await;
}
