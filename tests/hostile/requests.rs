//! Poison prediction requests: overflowing AMQP properties, huge strings, repeated outputs,
//! zero-element tensors and bodies that are not requests at all.

use std::time::Duration;

use infermq::protocol::decode_response;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::bodies::{add_model, any_dim_model, bytes, iris_job, iris_job_with_outputs, long_text};
use crate::common::model_repository;
use crate::harness::{assert_error, assert_truncated_quote, Target};

const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// (a) `timestamp` = u64::MAX with `expiration`: the overflowing deadline is ignored (the
/// broker's own TTL still applies) and the job is answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_timestamp_is_ignored() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let id = t.correlation("a");
    let properties = t
        .properties(&id, FieldTable::default())
        .with_timestamp(u64::MAX)
        .with_expiration(ShortString::from("60000"));
    let queue = t.queue("iris");
    let answer = t
        .call(&queue, &bytes(&iris_job(&id, 1)), properties, ANSWER_WITHIN)
        .await;
    let decoded = decode_response(&answer.data, None).expect("decodable");
    assert_eq!(decoded.error, None, "a: answered with an error");
    assert_eq!(decoded.outputs.len(), 1, "a: the iris output");
    t.assert_healthy("a").await;
    t.finish().await;
}

/// (b, c) 200 KB strings where the contract expects a datatype, an input name, a shape and
/// (c) a 30 KB `x-model-version`: error results with bounded, quoted, truncated echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_strings_get_bounded_errors() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let queue = t.queue("iris");

    let datatype = long_text("DATATYPE-", 200 * 1024);
    let mut job = iris_job("b-datatype", 1);
    job["inputs"][0]["datatype"] = json!(datatype);
    let id = t.correlation("b-datatype");
    let p = t.properties(&id, FieldTable::default());
    let answer = t.call(&queue, &bytes(&job), p, ANSWER_WITHIN).await;
    let message = assert_error("b-datatype", &answer, "invalid_request", &["datatype"]);
    assert_truncated_quote("b-datatype", &message, &datatype);
    t.assert_healthy("b-datatype").await;

    let name = long_text("INPUTNAME-", 200 * 1024);
    let mut job = iris_job("b-name", 1);
    job["inputs"][0]["name"] = json!(name);
    let id = t.correlation("b-name");
    let p = t.properties(&id, FieldTable::default());
    let answer = t.call(&queue, &bytes(&job), p, ANSWER_WITHIN).await;
    let message = assert_error("b-name", &answer, "invalid_request", &["inputs[0]"]);
    assert_truncated_quote("b-name", &message, &name);
    t.assert_healthy("b-name").await;

    let shape = long_text("SHAPE-", 200 * 1024);
    let mut job = iris_job("b-shape", 1);
    job["inputs"][0]["shape"] = json!(shape);
    let id = t.correlation("b-shape");
    let p = t.properties(&id, FieldTable::default());
    let answer = t.call(&queue, &bytes(&job), p, ANSWER_WITHIN).await;
    let message = assert_error("b-shape", &answer, "invalid_request", &[]);
    assert_truncated_quote("b-shape", &message, &shape);
    t.assert_healthy("b-shape").await;

    // 30 KB: within the 64 KiB header table bound, so the version itself is refused.
    let version = long_text("VERSION-", 30 * 1024);
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-model-version"),
        AMQPValue::LongString(LongString::from(version.as_str())),
    );
    let id = t.correlation("c");
    let p = t.properties(&id, headers);
    let answer = t
        .call(&queue, &bytes(&iris_job("c", 1)), p, ANSWER_WITHIN)
        .await;
    let message = assert_error("c", &answer, "unknown_version", &["version"]);
    assert_truncated_quote("c", &message, &version);
    t.assert_healthy("c").await;
    t.finish().await;
}

/// (d) The same output named 400,000 times on a 2,000-row job: refused at `outputs[1]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_named_twice_is_refused() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let queue = t.queue("iris");
    let id = t.correlation("d");
    let body = iris_job_with_outputs(&id, 2_000, "probabilities", 400_000);
    let p = t.properties(&id, FieldTable::default());
    let answer = t.call(&queue, &body, p, ANSWER_WITHIN).await;
    assert_error("d", &answer, "invalid_request", &["outputs[1]"]);
    t.assert_healthy("d").await;
    t.finish().await;
}

/// (e) Zero-element tensors are refused, on iris (fixed width) and on a model whose every
/// dimension is dynamic (where the signature alone would let `[9e18, 0]` through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_element_tensors_are_refused() {
    let repo = model_repository(&["iris"]);
    add_model(repo.path(), "anydim", &any_dim_model());
    let mut t = Target::start(repo, &[]).await;
    let shapes = [
        json!([9_000_000_000_000_000_000u64, 0]),
        json!([0, 4]),
        json!([1, 0]),
    ];
    for (model, input) in [("iris", "input"), ("anydim", "x")] {
        for shape in &shapes {
            let case = format!("e {model} {shape}");
            let id = t.correlation("e");
            let job = json!({"id": id, "inputs": [
                {"name": input, "shape": shape, "datatype": "FP32", "data": []}]});
            let p = t.properties(&id, FieldTable::default());
            let queue = t.queue(model);
            let answer = t.call(&queue, &bytes(&job), p, ANSWER_WITHIN).await;
            assert_error(&case, &answer, "invalid_request", &["shape"]);
            t.assert_healthy(&case).await;
        }
    }
    t.finish().await;
}

/// (i) Bodies that are not requests, and a binary header length of u64::MAX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_requests_are_refused() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let queue = t.queue("iris");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("i-random", random),
        ("i-null", b"null".to_vec()),
        ("i-array", b"[]".to_vec()),
        ("i-inputs-object", br#"{"inputs":{}}"#.to_vec()),
    ];
    for (case, body) in cases {
        let id = t.correlation(case);
        let p = t.properties(&id, FieldTable::default());
        let answer = t.call(&queue, &body, p, ANSWER_WITHIN).await;
        assert_error(case, &answer, "invalid_request", &[]);
        t.assert_healthy(case).await;
    }
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("inference-header-content-length"),
        AMQPValue::Timestamp(u64::MAX),
    );
    let id = t.correlation("i-binary-len");
    let p = t.properties(&id, headers);
    let answer = t
        .call(&queue, &bytes(&iris_job(&id, 1)), p, ANSWER_WITHIN)
        .await;
    assert_error(
        "i-binary-len",
        &answer,
        "invalid_request",
        &["inference-header-content-length"],
    );
    t.assert_healthy("i-binary-len").await;
    t.finish().await;
}
