//! Throughput-shaped correctness: many small jobs at once are each answered exactly once, in
//! batches larger than one; and the `infermq predict` command round-trips a job.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use infermq::client::{header_str, headers};
use infermq::protocol::{decode_response, encode_request, InferenceRequest, Tensor};
use lapin::options::BasicPublishOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_single_row_jobs_are_answered_exactly_once_in_batches() {
    const JOBS: usize = 10_000;
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let queue = worker.queue("iris");
    let mut confirms = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let req = InferenceRequest {
            id: Some(i.to_string()),
            inputs: vec![Tensor::from_f32(
                "input",
                vec![1, 4],
                &[i as f32 * 0.001, 3.0, 1.5, 0.2],
            )],
            outputs: None,
            model_version: None,
            binary_data_output: false,
        };
        let body = encode_request(&req, false);
        let properties = client.job_properties(&i.to_string(), &body, headers(&[]));
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        confirms.push(
            client
                .channel()
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    options,
                    &body.body,
                    properties,
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in join_all(confirms).await {
        assert!(matches!(
            confirm.expect("confirm"),
            lapin::Confirmation::Ack(None)
        ));
    }
    let mut answers: HashMap<usize, usize> = HashMap::new();
    let mut batch_sizes = Vec::with_capacity(JOBS);
    while answers.len() < JOBS {
        let delivery = client
            .next_reply(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after {} answers: {e}", answers.len()));
        assert_eq!(header_str(&delivery, "x-error-code"), None);
        let res = decode_response(&delivery.data, None).unwrap();
        let id: usize = res.id.as_deref().unwrap().parse().unwrap();
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_string()),
            Some(id.to_string())
        );
        *answers.entry(id).or_default() += 1;
        batch_sizes.push(res.parameters.unwrap().batch_size);
    }
    // Every job settled: no answer can still be on its way, so any duplicate is already here.
    worker
        .wait_for_metric(r#"infermq_jobs_total{model="iris",outcome="success",version="1"} 10000"#)
        .await;
    worker
        .wait_for_metric(r#"infermq_pending_jobs{model="iris",version="1"} 0"#)
        .await;
    assert!(
        client.next_reply(Duration::from_millis(300)).await.is_err(),
        "an extra answer arrived"
    );
    assert!(
        answers.values().all(|&n| n == 1),
        "duplicates: {:?}",
        answers
            .iter()
            .filter(|(_, &n)| n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let batched = batch_sizes.iter().filter(|&&b| b > 1).count();
    let largest = batch_sizes.iter().max().copied().unwrap_or(0);
    assert!(batched > 0, "no job ran in a batch larger than 1");
    assert!(largest <= 256, "batch of {largest} over max_batch_size");
    eprintln!("{batched} of {JOBS} jobs ran in batches > 1; largest batch {largest}");
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_predict_command_round_trips_a_job() {
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), r#"{"id":"cli-1","inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#).unwrap();
    for binary in [false, true] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_infermq"));
        command
            .args(["predict", "--model", "iris", "--version", "1", "--input"])
            .arg(input.path())
            .env("INFERMQ__BROKER__URL", amqp_url())
            .env("INFERMQ__BROKER__PREFIX", &worker.prefix);
        if binary {
            command.arg("--binary");
        }
        let output = command.output().await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(result["id"], "cli-1");
        assert_eq!(result["model_version"], "1");
        assert_eq!(result["outputs"][0]["shape"], serde_json::json!([1, 3]));
    }
    // An unknown version is an error exit with the contract's code on stdout.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_infermq"))
        .args(["predict", "--model", "iris", "--version", "42", "--input"])
        .arg(input.path())
        .env("INFERMQ__BROKER__URL", amqp_url())
        .env("INFERMQ__BROKER__PREFIX", &worker.prefix)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("unknown_version"));
    worker.stop().await;
}
