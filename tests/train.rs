//! Training jobs through RabbitMQ: progress, a new served version, the models event, errors.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use infermq::client::{header_str, headers};
use infermq::protocol::{decode_response, encode_request, EncodedBody, InferenceRequest, Tensor};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

fn json_body(value: &serde_json::Value) -> EncodedBody {
    EncodedBody {
        body: serde_json::to_vec(value).unwrap(),
        header_len: None,
        content_type: "application/json",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iris_mlp_trained_through_the_broker_is_served_as_a_new_version() {
    let repo = model_repository(&["iris"]);
    let data_dir = manifest_path("models/iris");
    let data_dir = data_dir.to_str().unwrap();
    let extra = [("INFERMQ__TRAINING__DATA_DIR", data_dir)];
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &extra)).await;
    let mut client = client().await;

    // Watch the models exchange like another worker would.
    let events_channel = client.channel().clone();
    let events_queue = events_channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    events_channel
        .queue_bind(
            events_queue.name().as_str().into(),
            format!("{}.models", worker.prefix).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut events = consume(&events_channel, events_queue.name().as_str()).await;

    let csv = manifest_path("models/iris/iris.csv");
    let job = serde_json::json!({
        "id": "train-iris", "model_name": "iris",
        "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": 120, "batch_size": 16, "seed": 7,
        "data": {"uri": format!("file://{}", csv.display()), "format": "csv", "label_column": "species"}
    });
    let correlation = "train-1";
    let body = json_body(&job);
    let properties = client.job_properties(correlation, &body, headers(&[]));
    client
        .publish(&format!("{}.train", worker.prefix), &body.body, properties)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let mut epochs = Vec::new();
    let result = loop {
        let delivery = client
            .next_reply(Duration::from_secs(120))
            .await
            .expect("training answer");
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some(correlation)
        );
        assert_eq!(
            header_str(&delivery, "x-error-code"),
            None,
            "{}",
            String::from_utf8_lossy(&delivery.data)
        );
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        match header_str(&delivery, "x-event").as_deref() {
            Some("progress") => {
                assert_eq!(body["id"], "train-iris");
                epochs.push(body["epoch"].as_u64().unwrap());
                assert!(body["loss"].as_f64().unwrap().is_finite());
            }
            Some("result") => break body,
            other => panic!("unexpected event {other:?}: {body}"),
        }
    };
    // The first epoch, then at most one a second (training.progress_interval_ms), and the last.
    let seconds = started.elapsed().as_secs();
    assert_eq!((epochs[0], *epochs.last().unwrap()), (1, 120), "{epochs:?}");
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    assert!(
        epochs.len() as u64 <= seconds + 2,
        "{epochs:?} in {seconds} s"
    );
    assert_eq!(result["model_name"], "iris");
    assert_eq!(result["model_version"], "2");
    assert_eq!(result["history"].as_array().unwrap().len(), 120);
    let accuracy = result["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "training accuracy {accuracy}");

    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("models event")
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
    assert_eq!(
        event,
        serde_json::json!({"event": "model_version_ready", "model_name": "iris", "model_version": "2"})
    );

    // The worker serves the new version without a restart; predictions asking for it get it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while worker.handles.registry.resolve("iris", Some("2")).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 2 never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setosa = InferenceRequest {
        id: Some("p".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let delivery = client
        .call(
            &worker.queue("iris"),
            &encode_request(&setosa, false),
            headers(&[("x-model-version", "2")]),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let res = decode_response(&delivery.data, None).unwrap();
    assert_eq!(res.error, None);
    assert_eq!(res.model_version.as_deref(), Some("2"));
    let probabilities = res.outputs[0].to_f32_vec().unwrap();
    assert!(
        probabilities[0] > 0.9,
        "a textbook setosa: {probabilities:?}"
    );

    // The written file is a plain ONNX model that onnx.checker accepts.
    let path = repo.path().join("iris/2/model.onnx");
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_training_jobs_are_answered_with_named_fields_and_new_models_are_created() {
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let train_queue = format!("{}.train", worker.prefix);
    let base = serde_json::json!({
        "id": "t", "model_name": "fresh",
        "layers": [{"units": 1, "activation": "linear"}],
        "loss": "mse", "optimizer": {"type": "adam", "learning_rate": 0.1},
        "epochs": 200, "batch_size": 4, "seed": 1,
        "data": {"x": [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]], "y": [[1.0], [3.0], [5.0], [7.0], [9.0], [11.0], [13.0], [15.0]]}
    });
    let cases = [
        (
            "/layers/0/activation",
            serde_json::json!("swish"),
            "invalid_request",
            "activation",
        ),
        (
            "/loss",
            serde_json::json!("hinge"),
            "invalid_request",
            "loss",
        ),
        (
            "/data/y",
            serde_json::json!([[1.0]]),
            "invalid_request",
            "data",
        ),
        (
            "/data/x",
            serde_json::json!([[0.0], [1.0, 2.0]]),
            "invalid_request",
            "data.x",
        ),
    ];
    for (pointer, value, code, needle) in cases {
        let mut job = base.clone();
        *job.pointer_mut(pointer).unwrap() = value;
        let delivery = client
            .call(
                &train_queue,
                &json_body(&job),
                headers(&[]),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(
            header_str(&delivery, "x-error-code").as_deref(),
            Some(code),
            "{pointer}"
        );
        let res = decode_response(&delivery.data, None).unwrap();
        assert_eq!(
            res.id.as_deref(),
            Some("t"),
            "{pointer}: the job keeps its id"
        );
        assert_eq!(res.model_name.as_deref(), Some("fresh"), "{pointer}");
        let (_, message) = res.error.unwrap();
        assert!(message.contains(needle), "{pointer}: {message}");
    }
    // Bodies refused while their JSON is read: the error result names the job as far as the
    // body can be read, and takes the AMQP message_id as its id where the body's cannot be.
    // The training queue is shared by every model, so only the body can name the model.
    let mut unknown_field = base.clone();
    unknown_field["epoch"] = serde_json::json!(3);
    let mut numeric_id = base.clone();
    numeric_id["id"] = serde_json::json!(7);
    let refused: [(Vec<u8>, &str, Option<&str>, &str); 4] = [
        (
            br#"{"id":"t","model_name":"fresh","layers":[{"#.to_vec(),
            "msg-1",
            Some("msg-1"),
            "",
        ),
        (b"not json".to_vec(), "msg-2", Some("msg-2"), ""),
        (
            serde_json::to_vec(&numeric_id).unwrap(),
            "msg-3",
            Some("msg-3"),
            "fresh",
        ),
        (
            serde_json::to_vec(&unknown_field).unwrap(),
            "msg-4",
            Some("t"),
            "fresh",
        ),
    ];
    for (body, message_id, id, model_name) in refused {
        let body = EncodedBody {
            body,
            header_len: None,
            content_type: "application/json",
        };
        let properties = client
            .job_properties(message_id, &body, headers(&[]))
            .with_message_id(message_id.into());
        client
            .publish(&train_queue, &body.body, properties)
            .await
            .unwrap();
        let delivery = client.next_reply(Duration::from_secs(60)).await.unwrap();
        let res = decode_response(&delivery.data, None).unwrap();
        let (code, message) = res.error.expect("an error result");
        assert_eq!(code, "invalid_request", "{message_id}: {message}");
        assert_eq!(res.id.as_deref(), id, "{message_id}");
        assert_eq!(res.model_name.as_deref(), Some(model_name), "{message_id}");
    }
    let mut job = base.clone();
    job["init_from"] = serde_json::json!({"model_version": "9"});
    let delivery = client
        .call(
            &train_queue,
            &json_body(&job),
            headers(&[]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        header_str(&delivery, "x-error-code").as_deref(),
        Some("unknown_version")
    );

    // A model name not yet in the repository is created, served, and gets its own queue.
    let mut reply = None;
    let correlation = "fresh";
    let body = json_body(&base);
    client
        .publish(
            &train_queue,
            &body.body,
            client.job_properties(correlation, &body, headers(&[])),
        )
        .await
        .unwrap();
    while reply.is_none() {
        let delivery = client.next_reply(Duration::from_secs(60)).await.unwrap();
        if header_str(&delivery, "x-event").as_deref() == Some("result") {
            reply = Some(serde_json::from_slice::<serde_json::Value>(&delivery.data).unwrap());
        }
    }
    assert_eq!(reply.unwrap()["model_version"], "1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while worker.handles.registry.resolve("fresh", None).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new model never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = InferenceRequest {
        id: None,
        inputs: vec![Tensor::from_f32("input", vec![1, 1], &[10.0])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let res = loop {
        // The consumer for the new queue starts right after the model is loaded.
        match client
            .call(
                &worker.queue("fresh"),
                &encode_request(&req, false),
                headers(&[]),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(delivery) => break decode_response(&delivery.data, None).unwrap(),
            // Until the new queue exists (returned) or its quorum is up (nacked), retry as a
            // producer would.
            Err(
                infermq::client::ClientError::Unroutable(_) | infermq::client::ClientError::Refused,
            ) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let y = res.outputs[0].to_f32_vec().unwrap()[0];
    assert!((y - 21.0).abs() < 0.5, "y = 2x + 1 at x = 10: got {y}");
    client.close().await;
    worker.stop().await;
}

/// A training job running when the worker stops is told to stop between batches and goes back
/// to its queue, unanswered and whole; the stop does not wait for the run (which would take far
/// longer than the shutdown timeout) nor for the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_job_running_at_shutdown_goes_back_to_its_queue() {
    let repo = model_repository(&[]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let mut client = client().await;
    let queue = format!("{prefix}.train");
    // A million epochs of 64 batches: hours of training.
    let x: Vec<[f64; 1]> = (0..128).map(|i| [i as f64 / 128.0]).collect();
    let y: Vec<[f64; 1]> = x.iter().map(|[v]| [2.0 * v + 1.0]).collect();
    let job = serde_json::json!({
        "id": "endless", "model_name": "endless",
        "layers": [{"units": 1, "activation": "linear"}],
        "loss": "mse", "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "epochs": 1_000_000, "batch_size": 2,
        "data": {"x": x, "y": y}
    });
    let body = json_body(&job);
    let properties = client.job_properties("endless", &body, headers(&[]));
    client
        .publish(&queue, &body.body, properties)
        .await
        .unwrap();
    let first = client
        .next_reply(Duration::from_secs(60))
        .await
        .expect("a progress message");
    assert_eq!(
        header_str(&first, "x-event").as_deref(),
        Some("progress"),
        "{}",
        String::from_utf8_lossy(&first.data)
    );

    let stopping = std::time::Instant::now();
    worker.shutdown.cancel();
    worker.task.await.unwrap().unwrap();
    let stopped_in = stopping.elapsed();
    assert!(
        stopped_in < Duration::from_millis(20_000),
        "the stop waited for the training run or the 20 s shutdown timeout: {stopped_in:?}"
    );
    // Requeued by the stopping worker (never acked, never answered): back in its queue.
    let channel = client.channel().clone();
    let got = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the job is back in the training queue");
    assert!(got.delivery.redelivered, "returned after a delivery");
    assert_eq!(got.delivery.data, body.body);
    client.close().await;
    cleanup(&prefix).await;
}
