//! Queues that turn hostile: one declared by someone else with other arguments, and one deleted
//! under a running consumer.

use std::time::{Duration, Instant};

use infermq::client::ClientError;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use crate::bodies::{bytes, iris_job};
use crate::common::fleet::{metric_sum, wait_metrics};
use crate::common::{http_get, model_repository, random_prefix};
use crate::harness::{broker, Target};

/// Publishes an iris job until the queue exists and takes it (a mandatory publish to a missing
/// queue is returned; a quorum queue declared a moment ago can refuse one with a nack while it
/// starts) and returns once it is answered; fails after `within`.
async fn answered_within(t: &mut Target, case: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{case}: no iris job answered within {within:?}:\n{}",
            t.worker.log_tail()
        );
        let id = t.correlation(case);
        let p = t.properties(&id, FieldTable::default());
        let queue = t.queue("iris");
        match t.client.publish(&queue, &bytes(&iris_job(&id, 1)), p).await {
            Ok(()) => {
                t.reply(&id, left).await;
                return;
            }
            Err(ClientError::Unroutable(_) | ClientError::Refused) => {
                t.assert_alive_and_bounded(case);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{case}: publish: {e}"),
        }
    }
}

/// (k) `<prefix>.predict.mixed` already exists as a classic queue, so the worker's declaration
/// fails (PRECONDITION_FAILED): iris is served, `/readyz` names `mixed`, a metric counts the
/// failure, and the worker does not reconnect over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclarable_queue_is_reported_and_the_rest_served() {
    let prefix = random_prefix();
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            format!("{prefix}.predict.mixed").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the classic queue");
    let mut t =
        Target::start_with_prefix(prefix, model_repository(&["iris", "mixed"]), &[], false).await;
    answered_within(&mut t, "k-first", Duration::from_secs(60)).await;
    t.rebase_memory();
    let text = wait_metrics(t.worker.addr, Duration::from_secs(10), |text| {
        metric_sum(
            text,
            "infermq_queue_declare_failures_total",
            &[("model", "mixed")],
        ) >= 1.0
    })
    .await;
    assert!(text.contains("infermq_queue_declare_failures_total"));
    let (status, reason) = http_get(t.worker.addr, "/readyz")
        .await
        .expect("GET /readyz");
    assert_eq!(status, 503, "k: /readyz {reason}");
    assert!(
        reason.contains("mixed"),
        "k: /readyz does not name mixed: {reason}"
    );
    t.assert_healthy("k").await;
    let _ = connection.close(200, "done".into()).await;
    t.finish().await;
}

/// (l) The iris queue is deleted under its consumer: the worker declares it again and consumes
/// (a new job answered within 10 s), counts the restart, and does not reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_and_consumed_again() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(
            t.queue("iris").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the iris queue");
    answered_within(&mut t, "l", Duration::from_secs(10)).await;
    wait_metrics(t.worker.addr, Duration::from_secs(10), |text| {
        metric_sum(
            text,
            "infermq_consumer_restarts_total",
            &[("model", "iris")],
        ) >= 1.0
    })
    .await;
    t.assert_healthy("l").await;
    let _ = connection.close(200, "done".into()).await;
    t.finish().await;
}
