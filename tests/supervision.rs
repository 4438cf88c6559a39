//! One model's trouble stays its own: a consumer the broker cancels (its queue deleted) is
//! restarted and counted, and a model whose queue the broker refuses to declare is reported on
//! `/readyz` and in metrics and retried, while the other models are served and the broker
//! session is never torn down (no reconnect). The training consumer, lost, ends the session as
//! its kind says: the worker reconnects and trains again.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{job_body, metric_sum, queue_counts};
use common::*;
use infermq::client::headers;
use infermq::worker;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

async fn admin() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection")
}

async fn delete_queue(admin: &lapin::Connection, queue: &str) {
    let channel = admin.create_channel().await.expect("channel");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("delete {queue}: {e}"));
}

/// Polls `check` every 50 ms until it holds; fails with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answered(client: &mut infermq::client::Client, queue: &str) -> bool {
    let delivery = client
        .call(queue, &job_body(1), headers(&[]), CALL_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("job on {queue}: {e}"));
    infermq::client::header_str(&delivery, "x-error-code").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_is_restarted_without_a_reconnect() {
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let queue = worker.queue("iris");
    let mut client = client().await;
    assert!(answered(&mut client, &queue).await);

    // Deleting the queue makes the broker cancel the worker's consumer (basic.cancel).
    let admin = admin().await;
    delete_queue(&admin, &queue).await;
    worker
        .wait_for_metric("infermq_consumer_restarts_total{model=\"iris\"} 1")
        .await;
    // The restarted consumer declared the queue again and serves it.
    eventually(Duration::from_secs(20), "iris queue consumed again", || {
        let (admin, queue) = (&admin, &queue);
        async move { queue_counts(admin, queue).await.map(|c| c.1) == Some(1) }
    })
    .await;
    assert!(answered(&mut client, &queue).await);
    let metrics = worker.handles.metrics.render();
    assert_eq!(
        metric_sum(&metrics, "infermq_broker_reconnects_total", &[]),
        0.0,
        "the broker session was torn down"
    );
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_the_broker_refuses_is_reported_and_retried_while_others_are_served() {
    let repo = model_repository(&["iris", "mlp"]);
    let prefix = random_prefix();
    let refused = format!("{prefix}.predict.mlp");
    // Someone declared mlp's queue with other arguments (a classic queue, not quorum).
    let admin = admin().await;
    let channel = admin.create_channel().await.expect("channel");
    channel
        .queue_declare(
            refused.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the conflicting queue");

    // Not TestWorker::start: that waits for /readyz 200, which this worker must not give.
    let shutdown = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(worker::run(
        settings(&prefix, repo.path(), &[]),
        shutdown.clone(),
        Some(tx),
    ));
    let handles = rx.await.expect("worker started");
    let addr = handles.http_addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        match http_get(addr, "/readyz").await {
            Some((503, body)) if body.contains("mlp") && body.contains("PRECONDITION") => {
                break body
            }
            other => assert!(
                Instant::now() < deadline,
                "/readyz never named mlp: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("/readyz: {reason}");
    assert!(
        reason.contains("inequivalent arg"),
        "broker's reason: {reason}"
    );
    let metrics = handles.metrics.render();
    assert!(
        metric_sum(
            &metrics,
            "infermq_queue_declare_failures_total",
            &[("model", "mlp")]
        ) >= 1.0,
        "{metrics}"
    );
    // iris is served all along, on the same broker session.
    let mut client = client().await;
    assert!(answered(&mut client, &format!("{prefix}.predict.iris")).await);
    assert_eq!(
        metric_sum(
            &handles.metrics.render(),
            "infermq_broker_reconnects_total",
            &[]
        ),
        0.0
    );

    // The operator removes the conflicting queue: the next retry declares it and serves mlp.
    channel
        .queue_delete(refused.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the conflicting queue");
    eventually(
        Duration::from_secs(40),
        "/readyz 200 after the fix",
        || async move { http_get(addr, "/readyz").await.map(|(s, _)| s) == Some(200) },
    )
    .await;
    assert_eq!(queue_counts(&admin, &refused).await.map(|c| c.1), Some(1));

    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    shutdown.cancel();
    task.await.expect("worker task").expect("worker result");
    cleanup(&prefix).await;
}

/// Deleting the training queue makes the broker cancel the training consumer: its kind ends the
/// broker session, and after the reconnect (which declares the queue again) jobs are trained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_training_consumer_ends_the_session_and_training_resumes_after_the_reconnect() {
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, repo.path(), &[])).await;
    let train_queue = format!("{prefix}.train");
    let admin = admin().await;
    delete_queue(&admin, &train_queue).await;
    worker
        .wait_for_metric("infermq_broker_reconnects_total 1")
        .await;
    eventually(
        Duration::from_secs(20),
        "training queue consumed again",
        || {
            let (admin, queue) = (&admin, &train_queue);
            async move { queue_counts(admin, queue).await.map(|c| c.1) == Some(1) }
        },
    )
    .await;
    let mut client = client().await;
    let job = serde_json::json!({
        "id": "after-reconnect", "model_name": "after-reconnect",
        "layers": [{"units": 1, "activation": "linear"}],
        "loss": "mse", "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "epochs": 3, "batch_size": 2,
        "data": {"x": [[0.0], [1.0]], "y": [[1.0], [3.0]]}
    });
    let body = infermq::protocol::EncodedBody {
        body: serde_json::to_vec(&job).unwrap(),
        header_len: None,
        content_type: "application/json",
    };
    let properties = client.job_properties("after-reconnect", &body, headers(&[]));
    client
        .publish(&train_queue, &body.body, properties)
        .await
        .unwrap();
    let result = loop {
        let reply = client.next_reply(CALL_TIMEOUT).await.expect("an answer");
        if infermq::client::header_str(&reply, "x-event").as_deref() != Some("progress") {
            break reply;
        }
    };
    assert_eq!(
        infermq::client::header_str(&result, "x-error-code"),
        None,
        "{}",
        String::from_utf8_lossy(&result.data)
    );
    assert!(answered(&mut client, &worker.queue("iris")).await);
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    worker.stop().await;
}
