//! Against the real RabbitMQ (`AMQP_URL`, default local guest): echo-only runs with a random
//! prefix, so they never meet another test's or a worker's queues.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use super::*;

fn args(prefix: &str, extra: &[&str]) -> BenchArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }
    let mut argv = vec![
        "bench",
        "--model",
        "iris",
        "--prefix",
        prefix,
        "--echo-only",
        "--timeout-s",
        "30",
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

fn random_prefix() -> String {
    format!("bench-test-{}", uuid::Uuid::new_v4().simple())
}

/// The echo queue is gone after the run: a passive declare fails.
async fn assert_echo_queue_deleted(url: &str, prefix: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = wire::echo_queue(&model_queue(prefix, "iris").unwrap());
    let found = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await;
    assert!(found.is_err(), "{queue} still exists after the run");
    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_only_window_run_answers_every_job_once() {
    let prefix = random_prefix();
    let a = args(&prefix, &["--jobs", "2000", "--window", "256"]);
    let reports = run(&a, &Default::default()).await.unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.label, "echo");
    assert_eq!(r.queue, format!("{prefix}.predict.iris.echo"));
    assert_eq!((r.published, r.answered, r.ok), (2000, 2000, 2000));
    assert_eq!((r.lost, r.duplicated, r.unexpected), (0, 0, 0));
    assert!(r.errors_by_code.is_empty(), "{:?}", r.errors_by_code);
    assert!(r.jobs_per_s > 0.0 && r.duration_s > 0.0);
    assert!(r.latency_ms.p50 <= r.latency_ms.p99 && r.latency_ms.p99 <= r.latency_ms.max);
    assert_echo_queue_deleted(&a.url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_only_rate_run_with_binary_bodies_answers_every_job_once() {
    let prefix = random_prefix();
    let a = args(
        &prefix,
        &[
            "--jobs", "500", "--rate", "2000", "--binary", "--rows", "4", "--json",
        ],
    );
    let reports = run(&a, &Default::default()).await.unwrap();
    let r = &reports[0];
    assert_eq!(r.mode, "rate=2000/s");
    assert_eq!((r.published, r.ok, r.lost, r.duplicated), (500, 500, 0, 0));
    assert_eq!(r.rows, 2000);
    assert!(r.publish_rate > 0.0);
    assert_echo_queue_deleted(&a.url, &prefix).await;
}

/// `--echo` against a model queue served by a stand-in worker (a second echo consumer): both runs
/// complete and the ratio is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_then_model_reports_both_and_the_ratio() {
    let prefix = random_prefix();
    let mut a = args(&prefix, &["--jobs", "1000", "--window", "64"]);
    a.echo_only = false;
    a.echo = true;
    let connection = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let model_queue = model_queue(&prefix, "iris").unwrap();
    wire::declare_job_queue(&channel, &model_queue, &prefix)
        .await
        .unwrap();
    let stand_in = EchoConsumer::start(
        Connection::connect(&a.url, ConnectionProperties::default())
            .await
            .expect("echo connects"),
        &model_queue,
        &infermq::broker::Topology::new(prefix.as_str(), 5).results_queue(),
    )
    .await
    .unwrap();

    let reports = run(&a, &Default::default()).await;
    let answered_by_stand_in = stand_in.stop().await.unwrap();
    let deleted = channel
        .queue_delete(model_queue.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "test done".into()).await;

    let reports = reports.unwrap();
    deleted.unwrap();
    assert_eq!(
        reports.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        ["echo", "model"]
    );
    for r in &reports {
        assert_eq!(
            (r.ok, r.lost, r.duplicated, r.unexpected),
            (1000, 0, 0, 0),
            "{}",
            r.label
        );
    }
    assert_eq!(answered_by_stand_in, 1000);
    assert_eq!(reports[1].queue, model_queue);
    assert!(ratio(&reports).is_some_and(|x| x > 0.0));
    assert_echo_queue_deleted(&a.url, &prefix).await;
}
