//! Jobs that cannot be answered normally still end somewhere: internal failures are requeued and
//! then dead-lettered by the worker with the reason; results for a vanished reply queue are
//! moved to the dead-letter queue; jobs without `reply_to` are answered on the results queue.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use infermq::client::{header_str, headers};
use infermq::onnx::{Dim, GraphBuilder};
use infermq::protocol::{decode_response, encode_request, InferenceRequest, Tensor};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

/// Valid for ONNX Runtime to load, fails at run time: 4 values per row cannot be reshaped to 3.
fn failing_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("fails");
    let x = g.input(
        "input",
        infermq::onnx::proto::elem::FLOAT,
        &[Dim::batch(), Dim::Fixed(4)],
    );
    let shape = g.init_i64("shape", &[2], &[-1, 3]);
    g.node_to("Reshape", &[&x, &shape], &["output"], vec![]);
    g.output(
        "output",
        infermq::onnx::proto::elem::FLOAT,
        &[Dim::batch(), Dim::Fixed(3)],
    );
    g.to_bytes()
}

fn job(id: &str) -> InferenceRequest {
    InferenceRequest {
        id: Some(id.into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[1.0, 2.0, 3.0, 4.0])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_failures_are_retried_then_dead_lettered_with_the_reason() {
    let repo = model_repository(&["iris"]);
    std::fs::create_dir_all(repo.path().join("fails/1")).unwrap();
    std::fs::write(repo.path().join("fails/1/model.onnx"), failing_model()).unwrap();
    // Its warm-up would fail like its jobs and refuse it: this test needs it served.
    std::fs::write(repo.path().join("fails/config.toml"), "warmup = false\n").unwrap();
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let client = client().await;
    let mut dead = consume(client.channel(), &format!("{}.dead", worker.prefix)).await;

    let body = encode_request(&job("doomed"), false);
    client
        .publish(
            &worker.queue("fails"),
            &body.body,
            client.job_properties("doomed", &body, headers(&[])),
        )
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("dead-lettered in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        header_str(&message, "x-error-code").as_deref(),
        Some("internal")
    );
    let reason = header_str(&message, "x-error").unwrap();
    assert!(reason.to_lowercase().contains("reshape"), "{reason}");
    assert_eq!(
        message.data, body.body,
        "the job itself, unchanged, so it can be replayed"
    );
    // Delivered delivery_limit (5) times: four requeues, then the worker dead-letters it.
    worker
        .wait_for_metric(r#"infermq_jobs_total{model="fails",outcome="requeued",version="1"} 4"#)
        .await;
    worker
        .wait_for_metric(
            r#"infermq_jobs_total{model="fails",outcome="dead_lettered",version="1"} 1"#,
        )
        .await;
    worker
        .wait_for_metric(r#"infermq_pending_jobs{model="fails",version="1"} 0"#)
        .await;
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_without_reply_to_or_with_a_vanished_one_are_kept() {
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let client = client().await;
    let channel = client.channel();
    let mut results = consume(channel, &format!("{}.results", worker.prefix)).await;
    let mut dead = consume(channel, &format!("{}.dead", worker.prefix)).await;
    let publish = |reply_to: Option<&str>, id: &str| {
        let body = encode_request(&job(id), false);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id(id.into());
        if let Some(queue) = reply_to {
            properties = properties.with_reply_to(queue.into());
        }
        let queue = worker.queue("iris");
        async move {
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    options,
                    &body.body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(None, "no-reply-to").await;
    let answer = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .expect("answer on the results queue")
        .unwrap()
        .unwrap();
    assert_eq!(
        decode_response(&answer.data, None).unwrap().id.as_deref(),
        Some("no-reply-to")
    );

    publish(Some("no-such-queue-anywhere"), "vanished").await;
    let kept = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .expect("result moved to the dead queue")
        .unwrap()
        .unwrap();
    assert_eq!(
        header_str(&kept, "x-returned-reply-to").as_deref(),
        Some("no-such-queue-anywhere")
    );
    assert_eq!(
        decode_response(&kept.data, None).unwrap().id.as_deref(),
        Some("vanished")
    );
    worker
        .wait_for_metric(r#"infermq_results_returned_total{model="iris"} 1"#)
        .await;
    client.close().await;
    worker.stop().await;
}
