//! Warm-up before ready, on a fake backend that records every batch it runs: on by default (1
//! and `max_batch_size`), sizes from `config.toml`, off, and a failing warm-up refusing the
//! version like a broken one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use infermq::client::headers;
use infermq::jobs::registry::BackendLoader;
use infermq::protocol::{
    decode_response, encode_request, DataType, InferenceRequest, ModelSignature, Tensor, TensorSpec,
};
use infermq::runtime::{Backend, RuntimeError, SessionOptions};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warm_up_refuses_the_version_and_the_others_serve() {
    let repo = repository(&[("cold", "max_batch_size = 4\n"), ("warm", "")]);
    let runs = Runs::default();
    let loader = Arc::new(RecordingLoader(runs.clone()));
    let settings = settings(&random_prefix(), repo.path(), &[]);
    let worker = TestWorker::start_unready(settings, loader).await;
    let failed = worker
        .wait_for_version("cold", "1", |v| v["state"] == "FAILED")
        .await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("warm-up at batch size 1 failed") && reason.contains("cannot run zeros"),
        "{reason}"
    );
    // Refused at its first warm-up batch: nothing more was run on it.
    assert_eq!(runs_of(&runs, "cold"), [1]);
    worker
        .wait_for_version("warm", "1", |v| v["state"] == "READY")
        .await;
    worker
        .wait_for_metric(r#"infermq_model_load_failures_total{model="cold",version="1"} 1"#)
        .await;
    let (status, body) = worker.wait_for_readyz("models not loaded").await;
    assert_eq!(status, 503);
    assert!(body.contains("cold (version 1: warm-up"), "{body}");
    worker.stop().await;
}
