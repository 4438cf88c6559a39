//! Poison training jobs: a huge unknown field name, a huge `model_name`, and layers whose
//! parameter count no worker could hold.

use std::time::Duration;

use infermq::client::header_str;
use infermq::protocol::decode_response;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use serde_json::{json, Value};

use crate::bodies::{bytes, long_text, train_job};
use crate::common::model_repository;
use crate::harness::{assert_error, Target};

const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Publishes a training job and returns its final answer (progress messages skipped).
async fn train(t: &mut Target, case: &str, job: &Value) -> Delivery {
    let id = t.correlation(case);
    let p = t.properties(&id, FieldTable::default());
    let queue = format!("{}.train", t.prefix);
    let mut answer = t.call(&queue, &bytes(job), p, ANSWER_WITHIN).await;
    while header_str(&answer, "x-event").as_deref() == Some("progress") {
        answer = t.reply(&id, ANSWER_WITHIN).await;
    }
    answer
}

/// (j) A 200 KB unknown field, a 1 MB `model_name`, layers [65536, 65536, 2]: each an
/// `invalid_request` with a bounded message, the connection kept, memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_training_jobs_are_refused() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;

    let field = long_text("FIELD-", 200 * 1024);
    let mut job = train_job("j-field", "hostile", &[8, 3]);
    job[field.as_str()] = json!(1);
    let answer = train(&mut t, "j-field", &job).await;
    assert_error("j-field", &answer, "invalid_request", &["unknown field"]);
    t.assert_healthy("j-field").await;

    let name = long_text("NAME-", 1024 * 1024);
    let job = train_job("j-name", &name, &[8, 3]);
    let answer = train(&mut t, "j-name", &job).await;
    assert_error("j-name", &answer, "invalid_request", &["model_name"]);
    let decoded = decode_response(&answer.data, None).expect("decodable");
    assert_eq!(
        decoded.model_name.as_deref(),
        Some(""),
        "j-name: only validated names are echoed"
    );
    t.assert_healthy("j-name").await;

    let job = train_job("j-layers", "hostile", &[65_536, 65_536, 2]);
    let answer = train(&mut t, "j-layers", &job).await;
    assert_error(
        "j-layers",
        &answer,
        "invalid_request",
        &["training.max_parameters"],
    );
    t.assert_healthy("j-layers").await;
    t.finish().await;
}
