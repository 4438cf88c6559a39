//! The whole worker — broker, envelope, batching, instance threads, settlement — on a fake
//! backend instead of ONNX Runtime: what the job lifecycle does is checked apart from what a
//! model computes. The fake answers each row with [sum of the row, its first value, the batch's
//! rows]; a row starting with -1 makes the batch fail as ONNX Runtime would.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use infermq::broker::Topology;
use infermq::client::{header_str, headers};
use infermq::protocol::{
    decode_response, encode_request, DataType, InferenceRequest, ModelSignature, Tensor, TensorSpec,
};
use infermq::runtime::{Backend, RuntimeError, SessionOptions};
use infermq::serving::BackendLoader;

struct Summer(ModelSignature);

impl Backend for Summer {
    fn signature(&self) -> &ModelSignature {
        &self.0
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let x = inputs[0]
            .to_f32_vec()
            .ok_or_else(|| RuntimeError::Run("not FP32".into()))?;
        let rows = inputs[0].rows();
        let mut out = Vec::with_capacity(rows * 3);
        for row in x.chunks(4) {
            if row[0] == -1.0 {
                return Err(RuntimeError::Run(
                    "the fake refuses rows starting with -1".into(),
                ));
            }
            out.extend_from_slice(&[row.iter().sum(), row[0], rows as f32]);
        }
        Ok(vec![Tensor::from_f32("probabilities", vec![rows, 3], &out)])
    }
}

struct FakeLoader;

impl BackendLoader for FakeLoader {
    fn load(
        &self,
        _model: &std::path::Path,
        _options: &SessionOptions,
        instances: usize,
    ) -> Result<Vec<Box<dyn Backend>>, RuntimeError> {
        let spec = |name: &str, width| TensorSpec {
            name: name.into(),
            datatype: DataType::F32,
            shape: vec![-1, width],
        };
        let signature = ModelSignature {
            inputs: vec![spec("input", 4)],
            outputs: vec![spec("probabilities", 3)],
        };
        Ok((0..instances)
            .map(|_| Box::new(Summer(signature.clone())) as Box<dyn Backend>)
            .collect())
    }
}

fn job(id: &str, row: [f32; 4]) -> InferenceRequest {
    InferenceRequest {
        id: Some(id.into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &row)],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_batched_answered_and_failures_dead_lettered_on_a_fake_backend() {
    let repo = model_repository(&["iris"]);
    let settings = settings(&random_prefix(), repo.path(), &[]);
    let topology = Topology::new(
        settings.broker.prefix.clone(),
        settings.broker.delivery_limit,
    );
    let mut client = client().await;
    let queue = infermq::client::model_queue(&topology.prefix, "iris").expect("a valid name");
    // The queue is declared and filled before the worker starts, so its first deliveries
    // arrive together and must form batches (a worker that keeps up with a publisher may run
    // every job alone).
    topology
        .declare_model(client.channel(), "iris")
        .await
        .expect("declare the iris queue");

    // 300 jobs: each answered once, with its own row's sum.
    for i in 0..300 {
        let body = encode_request(&job(&format!("j{i}"), [i as f32, 1.0, 2.0, 3.0]), false);
        let id = format!("j{i}");
        client
            .publish(
                &queue,
                &body.body,
                client.job_properties(&id, &body, headers(&[])),
            )
            .await
            .unwrap();
    }
    let worker = TestWorker::start_with(settings, Arc::new(FakeLoader)).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut batched = false;
    while seen.len() < 300 {
        let delivery = client.next_reply(Duration::from_secs(30)).await.unwrap();
        let res = decode_response(&delivery.data, None).unwrap();
        assert_eq!(res.error, None);
        let id = res.id.unwrap();
        let i: f32 = id[1..].parse().unwrap();
        let out = res.outputs[0].to_f32_vec().unwrap();
        assert_eq!(out[0], i + 6.0, "{id}");
        assert_eq!(out[1], i, "{id}");
        batched |= out[2] > 1.0;
        assert!(seen.insert(id.clone()), "{id} answered twice");
    }
    assert!(
        batched,
        "300 jobs at once formed no batch of more than one row"
    );

    // A job the backend fails: retried up to the delivery limit, then dead-lettered with the
    // reason, and counted once as dead-lettered.
    let mut dead = consume(client.channel(), &format!("{}.dead", worker.prefix)).await;
    let body = encode_request(&job("bad", [-1.0, 0.0, 0.0, 0.0]), false);
    client
        .publish(
            &queue,
            &body.body,
            client.job_properties("bad", &body, headers(&[])),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .expect("dead-lettered within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        header_str(&delivery, "x-error-code").as_deref(),
        Some("internal")
    );
    assert!(header_str(&delivery, "x-error")
        .unwrap()
        .contains("refuses rows starting with -1"));
    worker
        .wait_for_metric(
            r#"infermq_jobs_total{model="iris",outcome="dead_lettered",version="1"} 1"#,
        )
        .await;
    worker
        .wait_for_metric(r#"infermq_jobs_total{model="iris",outcome="requeued",version="1"} 4"#)
        .await;
    worker
        .wait_for_metric(r#"infermq_jobs_total{model="iris",outcome="success",version="1"} 300"#)
        .await;
    client.close().await;
    worker.stop().await;
}
