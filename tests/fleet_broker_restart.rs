//! Running a fleet: the broker restarts (`rabbitmqctl stop_app`, 5 s, `start_app`) in the middle
//! of a load. The worker reports not ready while the broker is down, reconnects by itself,
//! declares its topology again and answers every job, including those it held when the broker
//! went away. Alone in its binary: it stops the broker for every other test too. Needs
//! `rabbitmqctl` on PATH, allowed to control the broker under test.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use futures_util::StreamExt;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};

const BEFORE: usize = 6_000;
const AFTER: usize = 500;

/// Runs `rabbitmqctl args…`, failing on a non-zero exit.
pub fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `rabbitmqctl stop_app`; `start_app` again when dropped, even if the test fails.
struct BrokerStopped {
    started: bool,
}

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped { started: false }
    }

    fn start(&mut self) {
        rabbitmqctl(&["start_app"]);
        self.started = true;
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if !self.started {
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
        }
    }
}

async fn connect_within(within: Duration) -> Connection {
    let deadline = Instant::now() + within;
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(e) => assert!(Instant::now() < deadline, "broker unreachable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(worker: &TestWorker) -> Option<u16> {
    http_get(worker.handles.http_addr, "/readyz")
        .await
        .map(|(status, _)| status)
}

async fn wait_readyz(worker: &TestWorker, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while readyz(worker).await != Some(status) {
        assert!(
            started.elapsed() < within,
            "/readyz never answered {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_rides_out_a_broker_restart() {
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    // A small prefetch keeps the load going for a while, so the restart lands in its middle.
    let worker = TestWorker::start(settings(
        &prefix,
        repo.path(),
        &[("INFERMQ__BROKER__PREFETCH", "8")],
    ))
    .await;
    let queue = worker.queue("iris");
    let replies = format!("{prefix}.replies");

    // A durable quorum reply queue: answers published before the restart survive it.
    let connection = connect_within(Duration::from_secs(5)).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(replies.as_str().into(), durable, arguments)
        .await
        .expect("declare the reply queue");
    let load = Instant::now();
    publish_jobs(&channel, &queue, &replies, 0..BEFORE).await;
    eprintln!("{BEFORE} jobs published in {:?}", load.elapsed());

    // Mid-load: some answers are in, some jobs still wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (answered, waiting) = loop {
        let answered = queue_counts(&connection, &replies).await.map_or(0, |c| c.0);
        let waiting = queue_counts(&connection, &queue).await.map_or(0, |c| c.0);
        if answered >= 200 {
            break (answered, waiting);
        }
        assert!(Instant::now() < deadline, "no answers within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = connection.close(200, "restart".into()).await;
    eprintln!("stopping the broker with {answered} answers in, {waiting} jobs waiting");
    assert!(waiting > 0, "the load ended before the restart");

    let mut broker = BrokerStopped::stop();
    let down = Instant::now();
    let noticed = wait_readyz(&worker, 503, Duration::from_secs(10)).await;
    eprintln!("/readyz 503 {noticed:?} after stop_app returned");
    // Readiness may drop first (the consumers' channels fail before the connection's error is
    // seen), so the gauge is awaited, bounded.
    wait_metrics(worker.handles.http_addr, Duration::from_secs(10), |t| {
        metric_sum(t, "infermq_broker_connected", &[]) == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await; // the outage the issue asks for
    assert_eq!(
        readyz(&worker).await,
        Some(503),
        "ready with the broker down"
    );
    broker.start();
    eprintln!("broker down for {:?}", down.elapsed());
    let back = wait_readyz(&worker, 200, Duration::from_secs(60)).await;
    eprintln!("/readyz 200 again {back:?} after start_app returned");

    // New jobs after the restart, then every answer from the durable reply queue.
    let connection = connect_within(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    publish_jobs(&channel, &queue, &replies, BEFORE..BEFORE + AFTER).await;
    let mut consumer = consume(&channel, &replies).await;
    let mut answers = Answers::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while answers.distinct() < BEFORE + AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(delivery))) => answers.record(&delivery),
            other => panic!(
                "after {} answers: {other:?}; missing e.g. {:?}",
                answers.distinct(),
                &answers.missing(0..BEFORE + AFTER)[..5.min(BEFORE + AFTER - answers.distinct())]
            ),
        }
    }
    eprintln!(
        "every job answered {:?} after the load began",
        load.elapsed()
    );
    answers.assert_no_errors();
    eprintln!("duplicates across the restart: {}", answers.duplicates());

    let metrics = scrape(worker.handles.http_addr).await;
    let reconnects = metric_sum(&metrics, "infermq_broker_reconnects_total", &[]);
    eprintln!("infermq_broker_reconnects_total {reconnects}");
    assert!(reconnects >= 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "infermq_broker_connected", &[]), 1.0);

    let _ = channel
        .queue_delete(replies.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "bye".into()).await;
    worker.stop().await;
}
