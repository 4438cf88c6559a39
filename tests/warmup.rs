//! Warm-up before ready, on a fake backend that records every batch it runs: on by default (1
//! and `max_batch_size`), sizes from `config.toml`, off; a made-up warm-up that fails reported
//! while the version serves; a described one that fails refusing the version like a broken one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use infermq::client::headers;
use infermq::protocol::{
    decode_response, encode_request, DataType, InferenceRequest, ModelSignature, Tensor, TensorSpec,
};
use infermq::runtime::{Backend, RuntimeError, SessionOptions};
use infermq::serving::BackendLoader;

/// Rows of every batch run, by model.
type Runs = Arc<Mutex<BTreeMap<String, Vec<usize>>>>;

/// Answers each row with its sum; a model named `cold` fails any batch of zeros.
struct Recorder {
    model: String,
    signature: ModelSignature,
    runs: Runs,
}

impl Backend for Recorder {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let rows = inputs[0].rows();
        let mut runs = self.runs.lock().unwrap();
        runs.entry(self.model.clone()).or_default().push(rows);
        let x = inputs[0].to_f32_vec().unwrap();
        if self.model == "cold" && x.iter().all(|&v| v == 0.0) {
            return Err(RuntimeError::Run("the fake cannot run zeros".into()));
        }
        let sums: Vec<f32> = x.chunks(4).map(|r| r.iter().sum()).collect();
        Ok(vec![Tensor::from_f32("sum", vec![rows, 1], &sums)])
    }
}

struct RecordingLoader(Runs);

impl BackendLoader for RecordingLoader {
    fn load(
        &self,
        model: &Path,
        _options: &SessionOptions,
        instances: usize,
    ) -> Result<Vec<Box<dyn Backend>>, RuntimeError> {
        // <repository>/<model>/<version>/model.onnx
        let name = model.iter().rev().nth(2).unwrap().to_string_lossy();
        let spec = |name: &str, width| TensorSpec {
            name: name.into(),
            datatype: DataType::F32,
            shape: vec![-1, width],
        };
        let signature = ModelSignature {
            inputs: vec![spec("input", 4)],
            outputs: vec![spec("sum", 1)],
        };
        Ok((0..instances)
            .map(|_| {
                Box::new(Recorder {
                    model: name.to_string(),
                    signature: signature.clone(),
                    runs: self.0.clone(),
                }) as Box<dyn Backend>
            })
            .collect())
    }
}

/// A repository of copies of iris (a real model file, so its external data check passes) under
/// each name, with the given `config.toml`.
fn repository(models: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for (name, config) in models {
        copy_dir(&manifest_path("models/iris"), &repo.path().join(name));
        std::fs::write(repo.path().join(name).join("config.toml"), config).unwrap();
    }
    repo
}

fn runs_of(runs: &Runs, model: &str) -> Vec<usize> {
    runs.lock().unwrap().get(model).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_warmed_before_ready_as_configured() {
    let repo = repository(&[
        ("default", "max_batch_size = 8\ninstances = 2\n"),
        (
            "preferred",
            "max_batch_size = 8\npreferred_batch_sizes = [4]\n",
        ),
        ("sizes", "max_batch_size = 8\nwarmup = [2, 64]\n"),
        ("off", "max_batch_size = 8\nwarmup = false\n"),
    ]);
    let runs = Runs::default();
    let loader = Arc::new(RecordingLoader(runs.clone()));
    let worker = TestWorker::start_with(settings(&random_prefix(), repo.path(), &[]), loader).await;
    // Ready, and no job sent yet: every batch run so far was warm-up. The fake's instances
    // share nothing, so each of default's two instances is warmed.
    assert_eq!(runs_of(&runs, "default"), [1, 8, 1, 8]);
    assert_eq!(runs_of(&runs, "preferred"), [4]);
    assert_eq!(runs_of(&runs, "sizes"), [2, 8]);
    assert_eq!(runs_of(&runs, "off"), Vec::<usize>::new());
    for (model, sizes) in [("default", vec![1, 8]), ("off", vec![])] {
        let entry = worker.wait_for_version(model, "1", |_| true).await;
        assert_eq!(entry["state"], "READY");
        assert_eq!(entry["warmup_batch_sizes"], serde_json::json!(sizes));
    }

    // The first job on the unwarmed model is its first batch.
    let mut client = client().await;
    let request = InferenceRequest {
        id: Some("first".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[1.0, 2.0, 3.0, 4.0])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let body = encode_request(&request, false);
    let delivery = (client.call(
        &worker.queue("off"),
        &body,
        headers(&[]),
        Duration::from_secs(30),
    ))
    .await
    .expect("answer");
    let answer = decode_response(&delivery.data, None).unwrap();
    assert_eq!(answer.error, None);
    assert_eq!(answer.outputs[0].to_f32_vec().unwrap(), [10.0]);
    assert_eq!(runs_of(&runs, "off"), [1]);
    client.close().await;
    worker.stop().await;
}

/// A warm-up infermq made up may fail on a model every real job runs on: the version serves,
/// and the failure is shown, counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_made_up_warm_up_is_reported_and_the_version_serves() {
    let repo = repository(&[("cold", "max_batch_size = 4\n"), ("warm", "")]);
    let runs = Runs::default();
    let loader = Arc::new(RecordingLoader(runs.clone()));
    let worker = TestWorker::start_with(settings(&random_prefix(), repo.path(), &[]), loader).await;
    let cold = worker
        .wait_for_version("cold", "1", |v| v["state"] == "READY")
        .await;
    let error = cold["warmup_error"].as_str().unwrap();
    assert!(
        error.contains("warm-up at batch size 1 failed") && error.contains("cannot run zeros"),
        "{error}"
    );
    // Stopped at its first failing batch.
    assert_eq!(runs_of(&runs, "cold"), [1]);
    let warm = worker.wait_for_version("warm", "1", |_| true).await;
    assert_eq!(warm["warmup_error"], serde_json::Value::Null);
    worker
        .wait_for_metric(r#"infermq_model_warmup_failures_total{model="cold",version="1"} 1"#)
        .await;
    worker
        .wait_for_metric(r#"infermq_model_warmup_failures_total{model="warm",version="1"} 0"#)
        .await;
    let (status, body) = worker.wait_for_readyz("ready").await;
    assert_eq!((status, body.contains("refused")), (200, false), "{body}");

    let mut client = client().await;
    let answer = one_row(&mut client, &worker.queue("cold"), "real").await;
    assert_eq!(answer, Ok(vec![10.0]));
    client.close().await;
    worker.stop().await;
}

/// The first output of one row [1, 2, 3, 4] sent to `queue`, or the error answered.
async fn one_row(
    client: &mut infermq::client::Client,
    queue: &str,
    id: &str,
) -> Result<Vec<f32>, String> {
    let request = InferenceRequest {
        id: Some(id.into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[1.0, 2.0, 3.0, 4.0])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let body = encode_request(&request, false);
    let delivery = client
        .call(queue, &body, headers(&[]), Duration::from_secs(30))
        .await
        .expect("answer");
    let answer = decode_response(&delivery.data, None).unwrap();
    match answer.error {
        Some(error) => Err(format!("{error:?}")),
        None => Ok(answer.outputs[0].to_f32_vec().unwrap()),
    }
}

/// A warm-up the operator described must run: its failure refuses the version, and the other
/// models serve. `/readyz` names the refused model under `ready`, or answers 503 with
/// `worker.strict_readiness`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_described_warm_up_refuses_the_version_and_the_others_serve() {
    let described = |data: &str| {
        format!(
            "max_batch_size = 8\n[[warmup]]\nname = \"four rows\"\nbatch_size = 4\ncount = 2\n\
             [warmup.inputs.input]\ndims = [4]\n{data}\n"
        )
    };
    let (zeros, random) = (
        described("zero_data = true"),
        described("random_data = true"),
    );
    let repo = repository(&[
        ("cold", &zeros),
        ("lively", &random),
        ("warm", ""),
        ("broken", "instances = 0\n"),
    ]);
    let runs = Runs::default();
    for strict in [false, true] {
        let loader = Arc::new(RecordingLoader(runs.clone()));
        let strictness = [(
            "INFERMQ__WORKER__STRICT_READINESS",
            if strict { "true" } else { "false" },
        )];
        let settings = settings(&random_prefix(), repo.path(), &strictness);
        let worker = TestWorker::start_unready(settings, loader).await;
        let failed = worker
            .wait_for_version("cold", "1", |v| v["state"] == "FAILED")
            .await;
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.contains("warm-up at \"four rows\" failed")
                && reason.contains("cannot run zeros"),
            "{reason}"
        );
        let lively = worker
            .wait_for_version("lively", "1", |v| v["state"] == "READY")
            .await;
        assert_eq!(lively["warmup_batch_sizes"], serde_json::json!([4]));
        worker
            .wait_for_version("warm", "1", |v| v["state"] == "READY")
            .await;
        worker
            .wait_for_metric(r#"infermq_model_load_failures_total{model="cold",version="1"} 1"#)
            .await;
        let (status, body) = match strict {
            false => worker.wait_for_readyz("refused: ").await,
            true => worker.wait_for_readyz("models not loaded").await,
        };
        assert_eq!(status, if strict { 503 } else { 200 }, "{body}");
        assert!(
            body.contains("cold (version 1: warm-up at \"four rows\""),
            "{body}"
        );
        // A model whose config.toml is refused is refused too, and shown without versions.
        assert!(
            body.contains("broken (") && body.contains("instances must be at least 1"),
            "{body}"
        );
        let models = worker.handles.status.registry.status_json();
        let broken = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "broken");
        let broken = broken.expect("the refused model is listed");
        assert_eq!(broken["versions"], serde_json::json!([]));
        assert!(broken["config_error"]
            .as_str()
            .unwrap()
            .contains("instances must be at least 1"));
        if !strict {
            assert!(body.starts_with("ready\n"), "{body}");
            let mut client = client().await;
            let answer = one_row(&mut client, &worker.queue("lively"), "after").await;
            assert_eq!(answer, Ok(vec![10.0]));
            client.close().await;
        }
        worker.stop().await;
    }
    // The failing sample ran once (refused at its first run); the random one twice per load
    // (count = 2), before the job.
    let cold = runs_of(&runs, "cold");
    assert_eq!(cold, [4, 4], "one failing run per load");
    assert_eq!(runs_of(&runs, "lively")[..2], [4, 4]);
}
