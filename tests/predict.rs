//! Prediction jobs end to end: real RabbitMQ, real ONNX Runtime, the bundled models.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use infermq::client::{binary_header_len, header_str, headers};
use infermq::protocol::{
    decode_response, encode_request, DecodedResponse, InferenceRequest, RequestedOutput, Tensor,
    TensorData,
};
use infermq::runtime::{Backend, OrtBackend, SessionOptions};

const TIMEOUT: Duration = Duration::from_secs(30);
/// FP32 results through the worker vs. a direct session run: batching and the codec must not
/// change a value beyond float formatting (JSON uses shortest round-trip representations).
const TOLERANCE: f32 = 1e-6;

fn request(inputs: Vec<Tensor>) -> InferenceRequest {
    InferenceRequest {
        id: Some(uuid::Uuid::new_v4().to_string()),
        inputs,
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

fn iris_rows(rows: usize) -> Vec<f32> {
    (0..rows * 4)
        .map(|i| 0.5 + (i % 13) as f32 * 0.45)
        .collect()
}

/// The iris model run directly on ONNX Runtime.
fn iris_reference(values: &[f32]) -> Vec<f32> {
    infermq::runtime::env::init(None).unwrap();
    let bytes = std::fs::read(manifest_path("models/iris/1/model.onnx")).unwrap();
    let mut backend = OrtBackend::load(&bytes, &SessionOptions::cpu()).unwrap();
    let input = Tensor::from_f32("input", vec![values.len() / 4, 4], values);
    backend.infer(&[input]).unwrap()[0].to_f32_vec().unwrap()
}

async fn call(
    client: &mut infermq::client::Client,
    queue: &str,
    req: &InferenceRequest,
    binary: bool,
    extra: &[(&str, &str)],
) -> (Option<String>, DecodedResponse) {
    let body = encode_request(req, binary);
    let delivery = client
        .call(queue, &body, headers(extra), TIMEOUT)
        .await
        .expect("answer");
    let code = header_str(&delivery, "x-error-code");
    let decoded =
        decode_response(&delivery.data, binary_header_len(&delivery)).expect("result decodes");
    (code, decoded)
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOLERANCE, "element {i}: got {g}, want {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_match_references_for_every_body_kind_and_datatype() {
    let repo = model_repository(&["iris", "mixed", "scaler", "fixed"]);
    // A small max_batch_size on iris so a 10-row job must be split and reassembled.
    std::fs::write(repo.path().join("iris/config.toml"), "max_batch_size = 4\n").unwrap();
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;

    for (rows, binary) in [(1, false), (3, false), (10, false), (1, true), (10, true)] {
        let values = iris_rows(rows);
        let mut req = request(vec![Tensor::from_f32("input", vec![rows, 4], &values)]);
        req.binary_data_output = binary;
        let (code, res) = call(&mut client, &worker.queue("iris"), &req, binary, &[]).await;
        assert_eq!(code, None, "rows={rows} binary={binary}: {:?}", res.error);
        assert_eq!(res.id, req.id);
        assert_eq!(res.model_name.as_deref(), Some("iris"));
        assert_eq!(res.model_version.as_deref(), Some("1"));
        let out = &res.outputs[0];
        assert_eq!(
            (out.name.as_str(), out.shape.clone()),
            ("probabilities", vec![rows, 3])
        );
        assert_close(&out.to_f32_vec().unwrap(), &iris_reference(&values));
        let params = res.parameters.expect("parameters");
        assert!(
            params.batch_size >= 1 && params.batch_size <= 4,
            "batch_size {}",
            params.batch_size
        );
        assert!(params.compute_ms > 0.0 && params.queue_ms >= 0.0);
    }

    // INT64 and BOOL in, INT64 and BOOL out: exact references.
    let ids = [1i64, 2, 3, 4, -5, 6, 7, 1 << 40];
    let mask = [true, false, true, true, false, false, true, true];
    let req = request(vec![
        Tensor::from_i64("ids", vec![2, 4], &ids),
        Tensor::from_bool("mask", vec![2, 4], &mask),
    ]);
    for binary in [false, true] {
        let mut req = req.clone();
        req.binary_data_output = binary;
        let (code, res) = call(&mut client, &worker.queue("mixed"), &req, binary, &[]).await;
        assert_eq!(code, None, "{:?}", res.error);
        let by_name: HashMap<&str, &Tensor> =
            res.outputs.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(
            by_name["masked_sum"].to_i64_vec().unwrap(),
            vec![1 + 3 + 4, 7 + (1 << 40)]
        );
        let inverted: Vec<bool> = match &by_name["inverted"].data {
            TensorData::Fixed(bytes) => bytes.iter().map(|&b| b != 0).collect(),
            other => panic!("BOOL as {other:?}"),
        };
        assert_eq!(inverted, mask.iter().map(|m| !m).collect::<Vec<_>>());
    }

    // Output selection: only the requested output comes back.
    let mut only = req.clone();
    only.outputs = Some(vec![RequestedOutput {
        name: "inverted".into(),
        binary_data: None,
    }]);
    let (_, res) = call(&mut client, &worker.queue("mixed"), &only, false, &[]).await;
    assert_eq!(
        res.outputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["inverted"]
    );

    // A scalar, unbatched input (`sr`) next to a batched one: one job per run.
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.25).collect();
    let req = request(vec![
        Tensor::from_f32("x", vec![2, 8], &x),
        Tensor::from_f32("sr", vec![], &[3.0]),
    ]);
    let (code, res) = call(&mut client, &worker.queue("scaler"), &req, false, &[]).await;
    assert_eq!(code, None, "{:?}", res.error);
    assert_eq!(
        res.outputs[0].to_f32_vec().unwrap(),
        x.iter().map(|v| v * 3.0).collect::<Vec<_>>()
    );
    assert_eq!(res.parameters.unwrap().batch_size, 1);

    // No batch dimension at all.
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let req = request(vec![Tensor::from_f32("x", vec![3, 4], &x)]);
    let (code, res) = call(&mut client, &worker.queue("fixed"), &req, false, &[]).await;
    assert_eq!(code, None, "{:?}", res.error);
    assert_eq!(res.outputs[0].shape, vec![4, 3]);

    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_get_the_contract_error_codes_and_good_jobs_still_work() {
    let repo = model_repository(&["iris", "mixed"]);
    let worker = TestWorker::start(settings(
        &random_prefix(),
        repo.path(),
        &[("INFERMQ__BROKER__MAX_MESSAGE_BYTES", "4096")],
    ))
    .await;
    let mut client = client().await;
    let iris = worker.queue("iris");
    let good = r#"{"id":"ok","inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let oversized = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}],"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    // (case, queue, body, headers, expected code, what the message must name)
    type Case<'a> = (
        &'a str,
        String,
        String,
        Vec<(&'a str, &'a str)>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("not JSON", iris.clone(), "this is not json".into(), vec![], "invalid_request", ""),
        ("missing input", worker.queue("mixed"), r#"{"inputs":[{"name":"ids","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}"#.into(), vec![], "invalid_request", "mask"),
        ("wrong datatype", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}"#.into(), vec![], "invalid_request", "datatype"),
        ("wrong shape", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}"#.into(), vec![], "invalid_request", "shape"),
        ("element count", iris.clone(), r#"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}"#.into(), vec![], "invalid_request", "inputs[0]"),
        ("unknown input", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"bogus","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(), vec![], "invalid_request", "bogus"),
        ("NaN literal", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}"#.into(), vec![], "invalid_request", ""),
        ("classification", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"probabilities","parameters":{"classification":2}}]}"#.into(), vec![], "invalid_request", "classification"),
        ("oversized", iris.clone(), oversized, vec![], "too_large", "max_message_bytes"),
        ("unknown version", iris.clone(), good.into(), vec![("x-model-version", "99")], "unknown_version", "99"),
        ("unknown version in body", iris.clone(), r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"model_version":"7"}}"#.into(), vec![], "unknown_version", "7"),
        ("past deadline", iris.clone(), good.into(), vec![("x-deadline-ms", "1000")], "deadline_exceeded", "deadline"),
        ("bad deadline header", iris.clone(), good.into(), vec![("x-deadline-ms", "soon")], "invalid_request", "x-deadline-ms"),
    ];
    for (name, queue, body, extra, code, needle) in cases {
        let encoded = infermq::protocol::EncodedBody {
            body: body.into_bytes(),
            header_len: None,
            content_type: "application/json",
        };
        let delivery = client
            .call(&queue, &encoded, headers(&extra), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            header_str(&delivery, "x-error-code").as_deref(),
            Some(code),
            "{name}"
        );
        let res = decode_response(&delivery.data, None).unwrap();
        let (got_code, message) = res.error.unwrap_or_else(|| panic!("{name}: no error body"));
        assert_eq!(got_code, code, "{name}");
        assert!(
            message.contains(needle),
            "{name}: {message:?} should name {needle:?}"
        );
        assert_eq!(
            res.model_name.as_deref(),
            Some(queue.rsplit('.').next().unwrap()),
            "{name}"
        );
        // The body's id survives early errors whenever the JSON is readable.
        if body_has_readable_id(name) {
            assert_eq!(res.id.as_deref(), Some("ok"), "{name}");
        }
    }
    // Without an id in the body, the AMQP message_id names the job in its answer.
    let no_id =
        r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let body = infermq::protocol::EncodedBody {
        body: no_id.as_bytes().to_vec(),
        header_len: None,
        content_type: "application/json",
    };
    let properties = client
        .job_properties("mid", &body, headers(&[]))
        .with_message_id("msg-7".into());
    client.publish(&iris, &body.body, properties).await.unwrap();
    let delivery = client.next_reply(TIMEOUT).await.unwrap();
    assert_eq!(
        decode_response(&delivery.data, None).unwrap().id.as_deref(),
        Some("msg-7")
    );
    // A job for a model nobody serves is returned by the broker (mandatory), not lost.
    let encoded = infermq::protocol::EncodedBody {
        body: good.as_bytes().to_vec(),
        header_len: None,
        content_type: "application/json",
    };
    let err = client
        .call(&worker.queue("nope"), &encoded, headers(&[]), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, infermq::client::ClientError::Unroutable(_)),
        "{err}"
    );
    // And the worker still answers a good job.
    let delivery = client
        .call(
            &iris,
            &encoded,
            headers(&[("x-model-version", "1")]),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(header_str(&delivery, "x-error-code"), None);
    assert_eq!(
        decode_response(&delivery.data, None).unwrap().id.as_deref(),
        Some("ok")
    );
    worker
        .wait_for_metric(r#"infermq_jobs_total{model="iris",outcome="success",version="1"} 2"#)
        .await;
    worker
        .wait_for_metric(
            r#"infermq_jobs_total{model="iris",outcome="unknown_version",version=""} 2"#,
        )
        .await;
    worker
        .wait_for_metric(r#"infermq_pending_jobs{model="iris",version="1"} 0"#)
        .await;
    client.close().await;
    worker.stop().await;
}

/// A model with a string input: `text` BYTES `[-1, 2]` → `echoed` (Identity). None of the
/// bundled models has one.
fn write_text_echo_model(repo: &std::path::Path) {
    use infermq::onnx::builder::{Dim, GraphBuilder};
    use infermq::onnx::proto::elem;
    let mut g = GraphBuilder::new("text");
    let dims = [Dim::batch(), Dim::Fixed(2)];
    let x = g.input("text", elem::STRING, &dims);
    g.node_to("Identity", &[&x], &["echoed"], vec![]);
    g.output("echoed", elem::STRING, &dims);
    let dir = repo.join("text/1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), g.to_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_inputs_that_are_not_utf8_are_refused_naming_the_element() {
    let repo = model_repository(&[]);
    write_text_echo_model(repo.path());
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let queue = worker.queue("text");
    let text =
        |elements: Vec<Vec<u8>>| request(vec![Tensor::from_bytes("text", vec![2, 2], elements)]);

    // UTF-8 in binary: through ONNX Runtime and back unchanged.
    let good = vec![b"ab".to_vec(), "h\u{e9}llo".into(), vec![], b"ok".to_vec()];
    let (code, res) = call(&mut client, &queue, &text(good.clone()), true, &[]).await;
    assert_eq!(code, None, "{:?}", res.error);
    assert_eq!(res.outputs[0].data, TensorData::Bytes(good));

    // Element 3 holds 0xff, which never occurs in UTF-8: refused before it reaches a session.
    let bad = vec![b"ab".to_vec(), b"ok".to_vec(), vec![], b"a\xffb".to_vec()];
    let req = text(bad);
    let (code, res) = call(&mut client, &queue, &req, true, &[]).await;
    assert_eq!(code.as_deref(), Some("invalid_request"));
    let (_, message) = res.error.expect("an error result");
    assert!(
        message.starts_with(r#"inputs[0] ("text"): element 3 is not valid UTF-8"#),
        "{message}"
    );
    assert_eq!(res.id, req.id);
    assert_eq!(res.model_name.as_deref(), Some("text"));

    client.close().await;
    worker.stop().await;
}

/// Cases whose body is the good job (id "ok"): their error answers carry that id.
fn body_has_readable_id(case: &str) -> bool {
    matches!(
        case,
        "unknown version" | "past deadline" | "bad deadline header"
    )
}
