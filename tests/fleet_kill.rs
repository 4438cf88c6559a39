//! Running a fleet: a worker killed with SIGKILL in the middle of a load loses no job. Its
//! unacked jobs return to the queue and a new worker answers them; results it had published
//! but not acked come twice (at-least-once), which is counted and printed, not failed.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;

const JOBS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_job() {
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    let queue = format!("{prefix}.predict.iris");
    let mut client = client().await;
    let admin = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection");

    let started = Instant::now();
    let mut first = ChildWorker::spawn(&prefix, repo.path(), &[]);
    first.wait_ready(Duration::from_secs(60)).await;
    eprintln!("first worker ready in {:?}", started.elapsed());

    // 2,000 jobs over about a second, while the first worker answers them.
    let (publisher, mut answers, load) = load_until_answered(&mut client, &queue, JOBS, 300).await;
    first.sigkill();
    let at_kill = answers.distinct();
    eprintln!(
        "SIGKILL after {at_kill} answers, {:?} into the load",
        load.elapsed()
    );
    assert!(at_kill < JOBS, "the load ended before the kill");

    let restarted = Instant::now();
    let mut second = ChildWorker::spawn(&prefix, repo.path(), &[]);
    second.wait_ready(Duration::from_secs(60)).await;
    eprintln!("second worker ready in {:?}", restarted.elapsed());
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
    let metrics = scrape(second.addr).await;
    eprintln!(
        "duplicates after SIGKILL: {} answers for {} jobs ({} redeliveries seen by the second worker)",
        answers.duplicates(),
        answers.counts.values().filter(|&&n| n > 1).count(),
        metric_sum(&metrics, "infermq_redeliveries_total", &[("model", "iris")])
    );
    drop(second);
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    cleanup(&prefix).await;
}
