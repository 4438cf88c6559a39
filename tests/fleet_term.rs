//! Running a fleet: SIGTERM in the middle of a load is a clean stop. The worker answers what it
//! started, returns what it had not, and exits 0 within its shutdown timeout; a second worker
//! answers the rest, and no job is answered twice.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::Semaphore;

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

/// Stop-under-load runs: two workers share a queue, 12,000 jobs are published at once (or
/// `INFERMQ_STOP_WINDOW` ahead of the answers), the first worker gets SIGTERM a second in while
/// it holds a full prefetch buffer and batches in flight, and the second answers the rest.
/// Every run must answer each job exactly once. `INFERMQ_STOP_RUNS` (default 3) and
/// `INFERMQ_STOP_JOBS` size it; `scripts/stop-runs.sh` runs 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_each_job_once() {
    let runs = env_or("INFERMQ_STOP_RUNS", 3);
    let jobs = env_or("INFERMQ_STOP_JOBS", 4_000);
    let window = env_or("INFERMQ_STOP_WINDOW", 0);
    let repo = model_repository(&["iris"]);
    // Batches wait up to this long to fill, so the stopped worker holds jobs in flight as well
    // as prefetched ones when it stops (the case that used to answer jobs twice).
    let delay = env_or("INFERMQ_STOP_BATCH_DELAY_MS", 20);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        format!("max_batch_size = 256\nmax_queue_delay_ms = {delay}\ninstances = 1\n"),
    )
    .expect("iris config");
    let mut failed = Vec::new();
    for run in 1..=runs {
        let (duplicates, unanswered) = stop_run(repo.path(), jobs, window).await;
        // The line scripts/stop-runs.sh reads.
        println!("stop-run {run}/{runs}: duplicates={duplicates} unanswered={unanswered}");
        if duplicates + unanswered > 0 {
            failed.push((run, duplicates, unanswered));
        }
    }
    assert!(
        failed.is_empty(),
        "runs with duplicates or unanswered jobs (run, duplicates, unanswered): {failed:?}"
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One stop-under-load run; (duplicates, unanswered).
async fn stop_run(models: &std::path::Path, jobs: usize, window: usize) -> (usize, usize) {
    let prefix = random_prefix();
    let queue = format!("{prefix}.predict.iris");
    let timeout = SHUTDOWN_TIMEOUT_MS.to_string();
    let env = [("INFERMQ__WORKER__SHUTDOWN_TIMEOUT_MS", timeout.as_str())];
    let mut client = client().await;
    let admin = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection");
    let mut first = ChildWorker::spawn(&prefix, models, &env);
    let mut second = ChildWorker::spawn(&prefix, models, &env);
    first.wait_ready(Duration::from_secs(60)).await;
    second.wait_ready(Duration::from_secs(60)).await;

    // The publisher runs on its own task, `window` jobs ahead of the distinct answers (0: no
    // window, every job at once, so the workers hold full prefetch buffers when one stops).
    let permits = Arc::new(Semaphore::new(if window == 0 { jobs } else { window }));
    let publisher = {
        let channel = client.channel().clone();
        let reply_to = client.reply_queue().to_string();
        let queue = queue.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut confirms = Vec::with_capacity(jobs);
            for id in 0..jobs {
                permits.acquire().await.expect("open semaphore").forget();
                let body = job_body(id);
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_reply_to(reply_to.as_str().into())
                    .with_correlation_id(id.to_string().as_str().into());
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        options,
                        &body.body,
                        properties,
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in futures_util::future::join_all(confirms).await {
                assert!(
                    matches!(confirm, Ok(lapin::Confirmation::Ack(None))),
                    "job not accepted by the broker: {confirm:?}"
                );
            }
        })
    };
    let mut answers = Answers::default();
    let load = Instant::now();
    let term_at = load + Duration::from_secs(1);
    let mut termed = None;
    // Bounded: a job still unanswered this long after the last answer is counted unanswered.
    let quiet = Duration::from_secs(30);
    while answers.distinct() < jobs {
        // SIGTERM a second in, or once a quarter of the jobs are answered if that comes first
        // (a quiet host answers everything within the second).
        if termed.is_none() && (Instant::now() >= term_at || answers.distinct() >= jobs / 4) {
            first.sigterm();
            termed = Some(answers.distinct());
        }
        let wait = match termed {
            None => term_at.saturating_duration_since(Instant::now()),
            Some(_) => quiet,
        };
        match client.next_reply(wait).await {
            Ok(delivery) => {
                let before = answers.distinct();
                answers.record(&delivery);
                if window > 0 && answers.distinct() > before {
                    permits.add_permits(1);
                }
            }
            Err(_) if termed.is_none() => {}
            Err(_) => break,
        }
    }
    let at_term = termed.expect("the load ended before SIGTERM (raise INFERMQ_STOP_JOBS)");
    publisher.await.expect("publisher");
    let status = first
        .wait_exit(Duration::from_millis(SHUTDOWN_TIMEOUT_MS + 5_000))
        .await
        .expect("the first worker did not exit within its shutdown timeout");
    assert_eq!(status.code(), Some(0), "first worker exit status {status}");
    settle(&mut client, &mut answers, second.addr, &admin, &queue).await;
    answers.assert_no_errors();
    let unanswered = answers.missing(0..jobs).len();
    eprintln!(
        "{} jobs in {:?}; SIGTERM after {at_term} answers; first worker: {:?}",
        jobs,
        load.elapsed(),
        first.log_lines("Stopped consuming"),
    );
    if std::env::var("STOP_DEBUG").is_ok() {
        eprintln!("FIRST LOG:\n{}", first.log_tail());
    }
    drop(second);
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    cleanup(&prefix).await;
    (answers.duplicates(), unanswered)
}
