//! Training data files through the worker: `training.data_dir` confines `file://` URIs and
//! `training.max_data_bytes` limits each file.

mod common;

use std::time::Duration;

use common::*;
use infermq::client::{header_str, headers};
use infermq::protocol::{decode_response, EncodedBody};

fn json_body(value: &serde_json::Value) -> EncodedBody {
    EncodedBody {
        body: serde_json::to_vec(value).unwrap(),
        header_len: None,
        content_type: "application/json",
    }
}

/// Sends a training job and waits for its answer (a result or an error result).
async fn train_call(
    client: &mut infermq::client::Client,
    queue: &str,
    job: &serde_json::Value,
) -> lapin::message::Delivery {
    client
        .call(
            queue,
            &json_body(job),
            headers(&[]),
            Duration::from_secs(60),
        )
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_read_only_inside_data_dir_and_within_max_data_bytes() {
    let repo = model_repository(&[]);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let csv = "x,y\n0,1\n1,3\n2,5\n3,7\n";
    std::fs::write(data.join("ok.csv"), csv).unwrap();
    std::fs::write(root.path().join("outside.csv"), csv).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.csv"), data.join("link.csv")).unwrap();
    std::fs::write(data.join("big.csv"), format!("{csv}{}", "4,9\n".repeat(20))).unwrap();
    let worker = TestWorker::start(settings(
        &random_prefix(),
        repo.path(),
        &[
            ("INFERMQ__TRAINING__DATA_DIR", data.to_str().unwrap()),
            ("INFERMQ__TRAINING__MAX_DATA_BYTES", "64"),
        ],
    ))
    .await;
    let mut client = client().await;
    let queue = format!("{}.train", worker.prefix);
    let job = |file: &std::path::Path| {
        serde_json::json!({
            "id": "d", "model_name": "trained",
            "layers": [{"units": 1}], "loss": "mse", "epochs": 1, "batch_size": 4,
            "data": {"uri": format!("file://{}", file.display())}
        })
    };
    for (file, needle) in [
        (root.path().join("outside.csv"), "outside training.data_dir"),
        (data.join("../outside.csv"), "outside training.data_dir"),
        (data.join("link.csv"), "outside training.data_dir"),
        (
            data.join("big.csv"),
            "larger than training.max_data_bytes = 64",
        ),
    ] {
        let delivery = train_call(&mut client, &queue, &job(&file)).await;
        let res = decode_response(&delivery.data, None).unwrap();
        let (code, message) = res.error.expect("an error result");
        assert_eq!(code, "invalid_request", "{}", file.display());
        assert!(
            message.starts_with("data.uri: ") && message.contains(needle),
            "{}: {message}",
            file.display()
        );
    }
    let delivery = train_call(&mut client, &queue, &job(&data.join("ok.csv"))).await;
    assert_eq!(
        header_str(&delivery, "x-event").as_deref(),
        Some("progress")
    );
    client.close().await;
    worker.stop().await;
}
