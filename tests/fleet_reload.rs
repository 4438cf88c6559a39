//! Running a fleet: the model repository changes under load. A new version dropped in atomically
//! takes over without a failed job; a broken version is refused while the last good one serves,
//! and retried once its file changes; a new model directory gets its queue and a removed one
//! loses its consumer, while the other models keep serving. Also: the `/metrics` scrape after a
//! load counts it, and passes `promtool check metrics`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use infermq::client::{header_str, headers, Client};
use infermq::protocol::decode_response;

const POLL: (&str, &str) = ("INFERMQ__REPOSITORY__POLL_INTERVAL_MS", "200");

/// Drops `from` in as `to` the way deployments should: copy beside it under a hidden name, then
/// rename (atomic on one file system).
fn drop_in(from: &Path, to: &Path) {
    let hidden = to.with_file_name(format!(
        ".incoming-{}",
        to.file_name().unwrap().to_string_lossy()
    ));
    copy_dir(from, &hidden);
    std::fs::rename(&hidden, to).expect("rename into place");
}

/// `/v2/models`, as (model, version, state) triples.
async fn served(worker: &TestWorker) -> Vec<(String, String, String)> {
    let (status, body) = http_get(worker.handles.http_addr, "/v2/models")
        .await
        .expect("GET /v2/models");
    assert_eq!(status, 200);
    let models: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut triples = Vec::new();
    for model in models.as_array().expect("array") {
        for version in model["versions"].as_array().expect("versions") {
            triples.push((
                model["name"].as_str().unwrap_or_default().to_string(),
                version["version"].as_str().unwrap_or_default().to_string(),
                version["state"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    triples.sort();
    triples
}

async fn wait_served(worker: &TestWorker, want: &[(&str, &str, &str)], within: Duration) {
    let started = Instant::now();
    loop {
        let now = served(worker).await;
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(m, v, s)| (m.to_string(), v.to_string(), s.to_string()))
            .collect();
        if now == want {
            return;
        }
        assert!(
            started.elapsed() < within,
            "/v2/models is {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes jobs `ids` to `model` and reads their answers.
async fn round(
    client: &mut Client,
    worker: &TestWorker,
    model: &str,
    ids: std::ops::Range<usize>,
) -> Answers {
    let reply_to = client.reply_queue().to_string();
    publish_jobs(
        client.channel(),
        &worker.queue(model),
        &reply_to,
        ids.clone(),
    )
    .await;
    let mut answers = Answers::default();
    answers
        .collect_until(client, Duration::from_secs(60), |a| {
            a.distinct() == ids.len()
        })
        .await;
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_dropped_in_under_load_takes_over_without_a_failed_job() {
    const JOBS: usize = 3_000;
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[POLL])).await;
    let admin = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection");
    let mut client = client().await;
    let load = Instant::now();
    let publisher = steady_publisher(
        client.channel().clone(),
        worker.queue("iris"),
        client.reply_queue().to_string(),
        0..JOBS,
        30,
        Duration::from_millis(30),
    );
    let mut answers = Answers::default();
    answers
        .collect_until(&mut client, Duration::from_secs(60), |a| {
            a.distinct() >= 500
        })
        .await;
    let iris = repo.path().join("iris");
    drop_in(&iris.join("1"), &iris.join("2"));
    let dropped = Instant::now();
    eprintln!(
        "version 2 dropped in after {} answers, {:?} into the load",
        answers.distinct(),
        load.elapsed()
    );
    wait_served(&worker, &[("iris", "2", "READY")], Duration::from_secs(30)).await;
    eprintln!(
        "/v2/models lists only version 2 {:?} after the drop-in",
        dropped.elapsed()
    );
    answers
        .collect_until(&mut client, Duration::from_secs(120), |a| {
            a.distinct() == JOBS
        })
        .await;
    let published_in = publisher.await.expect("publisher");
    eprintln!(
        "{JOBS} jobs published in {published_in:?}, all answered in {:?}",
        load.elapsed()
    );
    settle(
        &mut client,
        &mut answers,
        worker.handles.http_addr,
        &admin,
        &worker.queue("iris"),
    )
    .await;
    eprintln!("answers by version: {:?}", answers.versions);
    answers.assert_no_errors();
    assert!(
        answers.versions.get("2").is_some_and(|&n| n > 0),
        "no answer from version 2"
    );
    assert!(answers.missing(0..JOBS).is_empty());
    assert_eq!(answers.duplicates(), 0, "answered twice without any crash");
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_new_and_removed_models() {
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[POLL])).await;
    let admin = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("admin connection");
    let mut client = client().await;
    let iris = repo.path().join("iris");
    let good = std::fs::read(iris.join("1/model.onnx")).unwrap();
    drop_in(&iris.join("1"), &iris.join("2"));
    wait_served(&worker, &[("iris", "2", "READY")], Duration::from_secs(30)).await;

    // A broken version 3 is refused; version 2 keeps serving.
    let incoming = iris.join(".incoming-3");
    std::fs::create_dir(&incoming).unwrap();
    std::fs::write(incoming.join("model.onnx"), b"this is not an ONNX model").unwrap();
    std::fs::rename(&incoming, iris.join("3")).unwrap();
    wait_metrics(worker.handles.http_addr, Duration::from_secs(30), |t| {
        metric_sum(
            t,
            "infermq_model_load_failures_total",
            &[("model", "iris"), ("version", "3")],
        ) >= 1.0
    })
    .await;
    wait_served(
        &worker,
        &[("iris", "2", "READY"), ("iris", "3", "FAILED")],
        Duration::from_secs(5),
    )
    .await;
    let answers = round(&mut client, &worker, "iris", 0..200).await;
    answers.assert_no_errors();
    assert_eq!(answers.versions.keys().collect::<Vec<_>>(), ["2"]);

    // Version 3's file is rewritten in place (as a slow copy would finish it): retried, served.
    std::fs::write(iris.join("3/model.onnx"), &good).unwrap();
    wait_served(&worker, &[("iris", "3", "READY")], Duration::from_secs(30)).await;
    let answers = round(&mut client, &worker, "iris", 200..400).await;
    answers.assert_no_errors();
    assert_eq!(answers.versions.keys().collect::<Vec<_>>(), ["3"]);

    // A new model directory gets its queue and answers.
    drop_in(&manifest_path("models/iris"), &repo.path().join("iris2"));
    let iris2 = worker.queue("iris2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        match client
            .call(&iris2, &job_body(7), headers(&[]), Duration::from_secs(30))
            .await
        {
            Ok(delivery) => break delivery,
            Err(e) => assert!(Instant::now() < deadline, "iris2 never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(header_str(&delivery, "x-error-code"), None);
    let result = decode_response(&delivery.data, None).unwrap();
    assert_eq!(result.model_name.as_deref(), Some("iris2"));
    assert_eq!(result.outputs[0].shape, vec![1, 3]);

    // Removing it stops its consumer cleanly; iris keeps serving on the same connection.
    std::fs::remove_dir_all(repo.path().join("iris2")).unwrap();
    wait_served(&worker, &[("iris", "3", "READY")], Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_counts(&admin, &iris2).await != Some((0, 0)) {
        assert!(Instant::now() < deadline, "iris2 still consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answers = round(&mut client, &worker, "iris", 400..500).await;
    answers.assert_no_errors();
    let metrics = scrape(worker.handles.http_addr).await;
    assert_eq!(
        metric_sum(&metrics, "infermq_broker_reconnects_total", &[]),
        0.0,
        "{metrics}"
    );
    assert_eq!(readyz_status(&worker).await, 200);

    let _ = admin
        .create_channel()
        .await
        .unwrap()
        .queue_delete(iris2.as_str().into(), Default::default())
        .await;
    client.close().await;
    let _ = admin.close(200, "bye".into()).await;
    worker.stop().await;
}

async fn readyz_status(worker: &TestWorker) -> u16 {
    http_get(worker.handles.http_addr, "/readyz")
        .await
        .map_or(0, |(s, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_load_counts_it_and_passes_promtool() {
    const JOBS: usize = 500;
    let repo = model_repository(&["iris"]);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let addr = worker.handles.http_addr;
    let before = scrape(addr).await;
    let answers = round(&mut client, &worker, "iris", 0..JOBS).await;
    answers.assert_no_errors();
    let success = [("model", "iris"), ("version", "1"), ("outcome", "success")];
    let after = wait_metrics(addr, Duration::from_secs(10), |t| {
        metric_sum(t, "infermq_jobs_total", &success) == JOBS as f64
    })
    .await;
    let iris = [("model", "iris"), ("version", "1")];
    let delta = |name: &str| metric_sum(&after, name, &iris) - metric_sum(&before, name, &iris);
    assert_eq!(metric_sum(&before, "infermq_jobs_total", &success), 0.0);
    let batches = delta("infermq_batch_rows_count");
    eprintln!("{JOBS} jobs in {batches} batches");
    assert!((1.0..=JOBS as f64).contains(&batches), "{batches} batches");
    assert_eq!(delta("infermq_batch_rows_sum"), JOBS as f64, "rows batched");
    assert_eq!(delta("infermq_rows_total"), JOBS as f64);
    assert_eq!(delta("infermq_end_to_end_seconds_count"), JOBS as f64);
    assert_eq!(delta("infermq_queue_wait_seconds_count"), JOBS as f64);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian: apt-get install -y prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.is_empty(),
        "promtool: {said}"
    );
    client.close().await;
    worker.stop().await;
}
