//! Running a fleet: SIGTERM in the middle of a load is a clean stop. The worker answers what it
//! started, returns what it had not, and exits 0 within its shutdown timeout; a second worker
//! answers the rest, and no job is answered twice.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;

const JOBS: usize = 2_000;
const SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_drains_cleanly_without_duplicates() {
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    let queue = format!("{prefix}.predict.iris");
    let timeout = SHUTDOWN_TIMEOUT_MS.to_string();
    let env = [("INFERMQ__WORKER__SHUTDOWN_TIMEOUT_MS", timeout.as_str())];
    let mut client = client().await;
    let admin = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection");

    let mut first = ChildWorker::spawn(&prefix, repo.path(), &env);
    first.wait_ready(Duration::from_secs(60)).await;
    let (publisher, mut answers, load) = load_until_answered(&mut client, &queue, JOBS, 300).await;
    let before = scrape(first.addr).await;
    first.sigterm();
    let term = Instant::now();
    let at_term = answers.distinct();
    eprintln!(
        "SIGTERM after {at_term} answers, {:?} into the load",
        load.elapsed()
    );
    assert!(at_term < JOBS, "the load ended before SIGTERM");
    let status = first
        .wait_exit(Duration::from_millis(SHUTDOWN_TIMEOUT_MS + 5_000))
        .await
        .expect("the worker did not exit within its shutdown timeout");
    eprintln!(
        "worker exited with {status} {:?} after SIGTERM",
        term.elapsed()
    );
    assert_eq!(status.code(), Some(0), "exit status {status}");
    for line in first.log_lines("Stopped consuming") {
        eprintln!("first worker: {line}");
    }
    assert!(
        !first.log_lines("SIGTERM received").is_empty(),
        "the worker did not log the signal"
    );
    // A graceful stop closes every channel before the connection: nothing fails on the way
    // out (lapin used to log "Connection error ... invalid connection state: Closed" here).
    let errors = first.log_lines("ERROR");
    assert!(
        errors.is_empty(),
        "errors logged while stopping: {errors:?}"
    );
    eprintln!(
        "first worker: {} successes before SIGTERM",
        metric_sum(&before, "infermq_jobs_total", &[("outcome", "success")])
    );

    // What the first worker returned (and what was published meanwhile) goes to a second one.
    let mut second = ChildWorker::spawn(&prefix, repo.path(), &env);
    second.wait_ready(Duration::from_secs(60)).await;
    let published_in = publisher.await.expect("publisher");
    eprintln!("all {JOBS} jobs published in {published_in:?}");
    answer_all(
        &mut client,
        &mut answers,
        JOBS,
        load,
        second.addr,
        &admin,
        &queue,
    )
    .await;
    let twice: Vec<_> = answers
        .counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .take(10)
        .collect();
    eprintln!("duplicates after SIGTERM: {}", answers.duplicates());
    assert_eq!(
        answers.duplicates(),
        0,
        "answered more than once: {twice:?}"
    );
    let metrics = scrape(second.addr).await;
    eprintln!(
        "second worker: {} successes, {} redeliveries (jobs the first returned unstarted)",
        metric_sum(&metrics, "infermq_jobs_total", &[("outcome", "success")]),
        metric_sum(&metrics, "infermq_redeliveries_total", &[("model", "iris")])
    );
    drop(second);
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    cleanup(&prefix).await;
}
