//! Large-model loading through the whole worker, on the real ONNX Runtime with small models:
//! memory admission (refusal naming model, need and limit; served versions keep serving; a
//! newer version must fit beside the old), external data beside `model.onnx` served, a location
//! leaving the version directory refused, and a version whose weights were still being written
//! loaded once they are whole.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use infermq::client::{headers, ClientError};
use infermq::onnx::external::externalize;
use infermq::onnx::proto::elem;
use infermq::onnx::{Dim, GraphBuilder};
use infermq::protocol::{decode_response, encode_request, InferenceRequest, Tensor};
use infermq::runtime::cuda::CudaSettings;
use infermq::runtime::{load_version, Backend, SessionOptions};
use infermq::training::rng::SeededRng;

const MIB: u64 = 1 << 20;
/// Width of the generated MatMul chain: 2 layers of 512×512 FP32, 2 MiB of weights.
const WIDTH: usize = 512;

async fn answer(
    client: &mut infermq::client::Client,
    queue: &str,
    input: Tensor,
) -> infermq::protocol::DecodedResponse {
    let request = InferenceRequest {
        id: Some(uuid::Uuid::new_v4().to_string()),
        inputs: vec![input],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let body = encode_request(&request, false);
    // A worker that is not ready (a version refused) may not consume a served model's queue
    // yet: the job is returned unroutable until it does, or nacked while the new quorum queue
    // starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        match client
            .call(queue, &body, headers(&[]), Duration::from_secs(30))
            .await
        {
            Err(ClientError::Unroutable(_) | ClientError::Refused)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => break other.expect("answer"),
        }
    };
    decode_response(&delivery.data, None).expect("result decodes")
}

fn iris_row() -> Tensor {
    Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])
}

/// Writes a version directory atomically (hidden directory, then rename), as documented.
fn add_version(model_dir: &Path, version: u64, from: &Path) {
    let tmp = model_dir.join(format!(".tmp-{version}"));
    copy_dir(from, &tmp);
    std::fs::rename(&tmp, model_dir.join(version.to_string())).unwrap();
}

/// Limit 40 MiB: iris (about 24 MiB: a session and an instance) fits; mlp (5 MiB of weights,
/// 4 MiB more while loading, 24 MiB of session and instance, activations at batch 256) does
/// not fit beside it, nor does a second iris version beside the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_that_do_not_fit_are_refused_and_the_others_keep_serving() {
    let repo = model_repository(&["iris", "mlp"]);
    let limit = (40 * MIB).to_string();
    let settings = settings(
        &random_prefix(),
        repo.path(),
        &[
            ("INFERMQ__RUNTIME__MEMORY_LIMIT", limit.as_str()),
            ("INFERMQ__REPOSITORY__POLL_INTERVAL_MS", "100"),
        ],
    );
    let worker =
        TestWorker::start_unready(settings, std::sync::Arc::new(infermq::serving::OrtLoader)).await;
    let iris = worker
        .wait_for_version("iris", "1", |v| v["state"] == "READY")
        .await;
    let iris_bytes = iris["memory_bytes"].as_u64().unwrap();
    assert!((16 * MIB..40 * MIB).contains(&iris_bytes), "{iris}");
    let mlp = worker
        .wait_for_version("mlp", "1", |v| v["state"] == "FAILED")
        .await;
    let reason = mlp["reason"].as_str().unwrap();
    let named = format!("worker may use {} bytes (runtime.memory_limit)", 40 * MIB);
    assert!(
        reason.contains("model mlp needs") && reason.contains(&named),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("loaded versions hold {iris_bytes} bytes")),
        "{reason}"
    );
    worker
        .wait_for_metric(r#"infermq_model_load_failures_total{model="mlp",version="1"} 1"#)
        .await;
    // A refused model costs only itself: the worker is ready and names it.
    let (status, body) = worker.wait_for_readyz("refused: mlp").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mlp (version 1: model mlp needs"), "{body}");

    let mut client = client().await;
    let first = answer(&mut client, &worker.queue("iris"), iris_row()).await;
    assert_eq!(first.error, None);

    // Hot reload: version 2 loads beside version 1, so it must fit beside it; refused, and
    // version 1 keeps answering.
    let iris_dir = repo.path().join("iris");
    add_version(&iris_dir, 2, &iris_dir.join("1"));
    let refused = worker
        .wait_for_version("iris", "2", |v| v["state"] == "FAILED")
        .await;
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("model iris needs"),
        "{refused}"
    );
    let again = answer(&mut client, &worker.queue("iris"), iris_row()).await;
    assert_eq!(
        (again.error, again.model_version.as_deref()),
        (None, Some("1"))
    );
    assert_eq!(again.outputs[0].to_f32_vec(), first.outputs[0].to_f32_vec());
    client.close().await;
    worker.stop().await;
}

/// Two 512×512 MatMuls, `x[N, 512]` → `y[N, 512]`, weights (uniform in ±√(3/512), fixed seed)
/// in `DIR/weights.bin`, page-aligned as `make-large-model DIR 2 512` (tools/) writes them.
fn generate(dir: &Path) {
    let mut rng = SeededRng::new(1);
    let limit = (3.0 / WIDTH as f64).sqrt();
    let d = WIDTH as i64;
    let mut g = GraphBuilder::new("matmul_chain");
    for name in ["w0", "w1"] {
        let w: Vec<f32> = (0..WIDTH * WIDTH)
            .map(|_| rng.symmetric(limit) as f32)
            .collect();
        g.init_f32(name, &[d, d], &w);
    }
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(d)]);
    let x = g.node("MatMul", &[&x, "w0"], vec![]);
    g.node_to("MatMul", &[&x, "w1"], &["y"], vec![]);
    g.output("y", elem::FLOAT, &[Dim::batch(), Dim::Fixed(d)]);
    let mut model = g.into_model();
    let weights = externalize(&mut model, "weights.bin", 1);
    std::fs::write(dir.join("weights.bin"), weights).unwrap();
    std::fs::write(
        dir.join("model.onnx"),
        prost::Message::encode_to_vec(&model),
    )
    .unwrap();
}

/// `x[N,2] · w[2,3]` with `w` at `location` (relative to the version directory).
fn escaping_model(version_dir: &Path, location: &str) {
    let mut g = GraphBuilder::new("escape");
    g.init_f32("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(2)]);
    let y = g.node("MatMul", &[&x, "w"], vec![]);
    g.output(&y, elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
    let mut model = g.into_model();
    let weights = externalize(&mut model, location, 1);
    std::fs::create_dir_all(version_dir).unwrap();
    std::fs::write(version_dir.join(location), weights).unwrap();
    std::fs::write(
        version_dir.join("model.onnx"),
        prost::Message::encode_to_vec(&model),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_data_is_served_escapes_are_refused_and_late_weights_are_loaded() {
    let generated = tempfile::tempdir().unwrap();
    generate(generated.path());
    let repo = tempfile::tempdir().unwrap();
    copy_dir(generated.path(), &repo.path().join("chain/1"));
    // "../weights.bin" from the version directory: inside the model's directory, outside the
    // version's.
    escaping_model(&repo.path().join("escape/1"), "../weights.bin");
    // A version whose model.onnx is there and whose weights are half copied.
    let late = repo.path().join("late/1");
    std::fs::create_dir_all(&late).unwrap();
    let weights = std::fs::read(generated.path().join("weights.bin")).unwrap();
    std::fs::write(late.join("weights.bin"), &weights[..weights.len() / 2]).unwrap();
    std::fs::copy(generated.path().join("model.onnx"), late.join("model.onnx")).unwrap();

    let settings = settings(
        &random_prefix(),
        repo.path(),
        &[("INFERMQ__REPOSITORY__POLL_INTERVAL_MS", "100")],
    );
    let worker =
        TestWorker::start_unready(settings, std::sync::Arc::new(infermq::serving::OrtLoader)).await;
    let chain = worker
        .wait_for_version("chain", "1", |v| v["state"] == "READY")
        .await;
    assert!(
        chain["memory_bytes"].as_u64().unwrap() >= 2 * MIB,
        "{chain}"
    );
    // What its session's arena holds on its device: a CUDA session's arena reports it; the CPU
    // sessions run without an arena, so the CPU build shows none, in the list and the metrics.
    assert_eq!(chain["device_memory"], serde_json::json!([]), "{chain}");
    let (_, metrics) = http_get(worker.handles.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        !metrics.contains(r#"infermq_model_device_memory_bytes{device="cpu""#),
        "{metrics}"
    );
    let escape = worker
        .wait_for_version("escape", "1", |v| v["state"] == "FAILED")
        .await;
    let reason = escape["reason"].as_str().unwrap();
    assert!(
        reason.contains(r#"tensor "w""#)
            && reason.contains("../weights.bin")
            && reason.contains("leaves the version directory"),
        "{reason}"
    );
    let half = worker
        .wait_for_version("late", "1", |v| v["state"] == "FAILED")
        .await;
    assert!(
        half["reason"]
            .as_str()
            .unwrap()
            .contains("past the file's end"),
        "{half}"
    );

    // The reference: the same file run directly.
    infermq::runtime::env::init(None).unwrap();
    let options = SessionOptions::cpu();
    let model = generated.path().join("model.onnx");
    let mut reference = load_version(&model, &options, &CudaSettings::default(), 1).unwrap();
    let values: Vec<f32> = (0..2 * WIDTH).map(|i| (i % 7) as f32 - 3.0).collect();
    let x = Tensor::from_f32("x", vec![2, WIDTH], &values);
    let want = reference[0].infer(std::slice::from_ref(&x)).unwrap()[0]
        .to_f32_vec()
        .unwrap();
    let mut client = client().await;
    let got = answer(&mut client, &worker.queue("chain"), x.clone()).await;
    assert_eq!(got.error, None);
    assert_eq!(got.outputs[0].to_f32_vec().unwrap(), want);

    // The rest of the weights arrives: the version's stamp covers weights.bin, so it is tried
    // again and served.
    std::fs::write(late.join("weights.bin"), &weights).unwrap();
    worker
        .wait_for_version("late", "1", |v| v["state"] == "READY")
        .await;
    let got = answer(&mut client, &worker.queue("late"), x).await;
    assert_eq!(got.error, None);
    assert_eq!(got.outputs[0].to_f32_vec().unwrap(), want);
    client.close().await;
    worker.stop().await;
}
