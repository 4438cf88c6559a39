//! One rule for model names everywhere: the longest legal name (`ModelName::MAX_LEN` bytes) is
//! served by the worker from the repository, answered through the gateway, and trained as a new
//! model; one byte more is refused alike by each of them and by the client.

use super::*;
use infermq::client::{header_str, headers, model_queue, Client, ClientError};
use infermq::protocol::{
    decode_response, encode_request, EncodedBody, InferenceRequest, ModelName, Tensor,
};
use lapin::message::Delivery;

const IRIS_ROW: &str =
    r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;

fn iris_request() -> InferenceRequest {
    InferenceRequest {
        id: None,
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

/// A training job for `model`: y = 2x + 1, small enough to train in a moment.
fn training_job(model: &str) -> EncodedBody {
    let job = serde_json::json!({
        "id": "long-name", "model_name": model,
        "layers": [{"units": 1, "activation": "linear"}],
        "loss": "mse", "optimizer": {"type": "adam", "learning_rate": 0.1},
        "epochs": 50, "batch_size": 4, "seed": 1,
        "data": {"x": [[0.0], [1.0], [2.0], [3.0]], "y": [[1.0], [3.0], [5.0], [7.0]]}
    });
    EncodedBody {
        body: serde_json::to_vec(&job).unwrap(),
        header_len: None,
        content_type: "application/json",
    }
}

/// The final answer of a training job published on `queue` (progress events skipped).
async fn train(client: &mut Client, queue: &str, model: &str) -> Delivery {
    let body = training_job(model);
    let properties = client.job_properties(model, &body, headers(&[]));
    client.publish(queue, &body.body, properties).await.unwrap();
    loop {
        let delivery = client.next_reply(Duration::from_secs(60)).await.unwrap();
        if header_str(&delivery, "x-event").as_deref() != Some("progress") {
            return delivery;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_legal_name_goes_everywhere_and_one_byte_more_nowhere() {
    let longest = "m".repeat(ModelName::MAX_LEN);
    let over = "o".repeat(ModelName::MAX_LEN + 1);
    let models = model_repository(&[]);
    for name in [&longest, &over] {
        copy_dir(&manifest_path("models/iris"), &models.path().join(name));
    }
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
    let gw = start_gateway(&prefix, &[]).await;
    let mut client = client().await;

    // The worker: the longest name is served from its repository folder, on its own queue.
    let queue = model_queue(&prefix, &longest).expect("a legal name");
    assert_eq!(queue, worker.queue(&longest));
    let delivery = client
        .call(
            &queue,
            &encode_request(&iris_request(), false),
            headers(&[]),
            Duration::from_secs(30),
        )
        .await
        .expect("an answer");
    let result = decode_response(&delivery.data, None).unwrap();
    assert_eq!(result.error, None);
    assert_eq!(result.model_name.as_deref(), Some(longest.as_str()));
    // ... and one byte more is no model: no queue was declared for it.
    assert!(worker.handles.registry.resolve(&over, None).is_err());
    let missing = client
        .call(
            &format!("{prefix}.predict.{over}"),
            &encode_request(&iris_request(), false),
            headers(&[]),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        matches!(missing, Err(ClientError::Unroutable(_))),
        "{missing:?}"
    );

    // The client refuses that name before publishing, with the rule's message.
    let refused = model_queue(&prefix, &over).unwrap_err();
    assert!(matches!(refused, ClientError::InvalidModel(_)), "{refused}");
    assert!(
        refused.to_string().contains("expected 1-128 letters"),
        "{refused}"
    );

    // The gateway: the same names answered 200 and refused 400, naming the model name.
    let base = format!("http://{}", gw.addr);
    let post = ["-X", "POST", "-H", "Content-Type: application/json"];
    let url = format!("{base}/v2/models/{longest}/infer");
    let answer = curl(&url, &post, Some(IRIS_ROW.as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model_name"], longest.as_str());
    let url = format!("{base}/v2/models/{over}/infer");
    let answer = curl(&url, &post, Some(IRIS_ROW.as_bytes())).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    let message = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("model name ") && message.contains("expected 1-128 letters"),
        "{message}"
    );

    // Training: a new model under the longest name is written, served and answers; one byte
    // more is an invalid_request naming model_name.
    let trained = "t".repeat(ModelName::MAX_LEN);
    let train_queue = format!("{prefix}.train");
    let delivery = train(&mut client, &train_queue, &trained).await;
    assert_eq!(
        header_str(&delivery, "x-error-code"),
        None,
        "{}",
        String::from_utf8_lossy(&delivery.data)
    );
    let result: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(result["model_name"], trained.as_str());
    assert_eq!(result["model_version"], "1");
    let request = InferenceRequest {
        inputs: vec![Tensor::from_f32("input", vec![1, 1], &[10.0])],
        ..iris_request()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let call = client
            .call(
                &worker.queue(&trained),
                &encode_request(&request, false),
                headers(&[]),
                Duration::from_secs(30),
            )
            .await;
        match call {
            Ok(delivery) => break decode_response(&delivery.data, None).unwrap(),
            // Until the new model's queue exists (returned) or its quorum is up (nacked).
            Err(ClientError::Unroutable(_) | ClientError::Refused)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(answered.model_name.as_deref(), Some(trained.as_str()));
    let delivery = train(&mut client, &train_queue, &format!("{trained}t")).await;
    assert_eq!(
        header_str(&delivery, "x-error-code").as_deref(),
        Some("invalid_request")
    );
    let refused = decode_response(&delivery.data, None).unwrap();
    let (_, message) = refused.error.expect("an error result");
    assert!(
        message.starts_with("model_name: ") && message.contains("expected 1-128 letters"),
        "{message}"
    );
    assert_eq!(refused.model_name.as_deref(), Some(""));

    client.close().await;
    gw.stop().await;
    // The worker's cleanup knows the usual test models only: these two queues go here.
    let queues = [worker.queue(&longest), worker.queue(&trained)];
    worker.stop().await;
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("cleanup connection");
    for queue in queues {
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}
