//! Fleet-test helpers: workers as child processes (killed on drop), a steady job publisher, an
//! answer tally, queue inspection, Prometheus text parsing and `rabbitmqctl`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use infermq::client::{header_str, Client};
use infermq::protocol::{decode_response, encode_request, EncodedBody, InferenceRequest, Tensor};
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::task::JoinHandle;

use super::{amqp_url, http_get};

/// `infermq worker` as a child process; SIGKILLed (and its log tail printed, on a failing
/// test) when dropped.
pub struct ChildWorker {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl ChildWorker {
    pub fn spawn(prefix: &str, models: &Path, extra: &[(&str, &str)]) -> ChildWorker {
        // A free port: bound, read, released.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port");
        let log_dir = tempfile::tempdir().expect("tempdir");
        let log = log_dir.path().join("worker.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // INFERMQ_WORKER_BIN runs another build (e.g. an older one, to compare behaviour).
        let bin = std::env::var_os("INFERMQ_WORKER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_infermq").into());
        let mut command = Command::new(bin);
        command
            .arg("worker")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("INFERMQ__BROKER__URL", amqp_url())
            .env("INFERMQ__BROKER__PREFIX", prefix)
            .env("INFERMQ__REPOSITORY__PATH", models)
            .env("INFERMQ__HTTP__LISTEN", addr.to_string())
            .env("INFERMQ__RUNTIME__EXECUTION_PROVIDERS", "cpu")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn infermq worker");
        ChildWorker {
            child,
            addr,
            log,
            _log_dir: log_dir,
            exited: None,
        }
    }

    /// Polls `/readyz` until 200, failing if the process exits or `within` passes.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "worker exited with {status} before ready:\n{}",
                    self.log_tail()
                );
            }
            if http_get(self.addr, "/readyz").await.map(|(s, _)| s) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready within {within:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.try_wait().expect("try_wait") {
            Some(status) => {
                self.exited = Some(status);
                false
            }
            None => true,
        }
    }

    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.exited = Some(self.child.wait().expect("reap the worker"));
    }

    /// Sends `signal` (a `kill` name: `STOP`, `CONT`, …) to the worker.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Polls until the process exits; `None` if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last 40 lines of the worker's stdout and stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- worker {} log tail ---\n{}",
                self.child.id(),
                self.log_tail()
            );
        }
    }
}

/// The body of job `id`: one iris row that varies with the id.
pub fn job_body(id: usize) -> EncodedBody {
    let request = InferenceRequest {
        id: Some(id.to_string()),
        inputs: vec![Tensor::from_f32(
            "input",
            vec![1, 4],
            &[4.5 + (id % 30) as f32 * 0.1, 3.0, 1.5, 0.2],
        )],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    encode_request(&request, false)
}

/// Publishes jobs `ids` (persistent, `mandatory`, `correlation_id` = id) and waits for every
/// confirm (each must be a plain ack).
pub async fn publish_jobs(channel: &Channel, queue: &str, reply_to: &str, ids: Range<usize>) {
    let mut confirms = Vec::with_capacity(ids.len());
    for id in ids {
        let body = job_body(id);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    options,
                    &body.body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_reply_to(reply_to.into())
                        .with_correlation_id(id.to_string().as_str().into()),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in join_all(confirms).await {
        let confirm = confirm.expect("confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "job not accepted by the broker: {confirm:?}"
        );
    }
}

/// Publishes `ids` in chunks of `chunk` jobs, one chunk every `every`: a steady load.
pub fn steady_publisher(
    channel: Channel,
    queue: String,
    reply_to: String,
    ids: Range<usize>,
    chunk: usize,
    every: Duration,
) -> JoinHandle<Duration> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(every);
        let mut next = ids.start;
        while next < ids.end {
            tick.tick().await;
            let end = (next + chunk).min(ids.end);
            publish_jobs(&channel, &queue, &reply_to, next..end).await;
            next = end;
        }
        started.elapsed()
    })
}

/// Every answer received, by job id.
#[derive(Default, Debug)]
pub struct Answers {
    pub counts: HashMap<usize, usize>,
    /// Error results and undecodable answers, described.
    pub errors: Vec<String>,
    /// Successful answers per model version.
    pub versions: BTreeMap<String, usize>,
}

impl Answers {
    pub fn record(&mut self, delivery: &Delivery) {
        let decoded = match decode_response(&delivery.data, None) {
            Ok(decoded) => decoded,
            Err(e) => return self.errors.push(format!("undecodable answer: {e}")),
        };
        let id = decoded.id.as_deref().and_then(|s| s.parse::<usize>().ok());
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string());
        let Some(id) = id else {
            return self
                .errors
                .push(format!("answer without a numeric id: {decoded:?}"));
        };
        assert_eq!(correlation, Some(id.to_string()), "correlation_id ≠ id");
        *self.counts.entry(id).or_default() += 1;
        match (&decoded.error, header_str(delivery, "x-error-code")) {
            (None, None) => {
                let version = decoded.model_version.unwrap_or_default();
                *self.versions.entry(version).or_default() += 1;
            }
            (error, code) => self.errors.push(format!("job {id}: {code:?} {error:?}")),
        }
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// Fails the test, showing the first few, if any answer was an error.
    pub fn assert_no_errors(&self) {
        assert!(
            self.errors.is_empty(),
            "{} errors, first: {:?}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(5)]
        );
    }

    /// Answers beyond the first, summed over jobs.
    pub fn duplicates(&self) -> usize {
        self.counts.values().map(|n| n - 1).sum()
    }

    pub fn missing(&self, ids: Range<usize>) -> Vec<usize> {
        ids.filter(|id| !self.counts.contains_key(id)).collect()
    }

    /// Reads answers from `client` until `done` holds; fails after `within`.
    pub async fn collect_until(
        &mut self,
        client: &mut Client,
        within: Duration,
        done: impl Fn(&Answers) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.next_reply(left).await {
                Ok(delivery) => self.record(&delivery),
                Err(e) => panic!(
                    "{e} ({} distinct answers, {} errors)",
                    self.distinct(),
                    self.errors.len()
                ),
            }
        }
    }

    /// Reads whatever else arrives until `quiet` passes with no answer.
    pub async fn drain(&mut self, client: &mut Client, quiet: Duration) {
        while let Ok(delivery) = client.next_reply(quiet).await {
            self.record(&delivery);
        }
    }
}

/// (ready messages, consumers) of a queue, by a passive declare on a fresh channel; `None`
/// when the queue does not exist.
pub async fn queue_counts(connection: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let channel = connection.create_channel().await.ok()?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .ok()?;
    let counts = (queue.message_count(), queue.consumer_count());
    let _ = channel.close(200, "done".into()).await;
    Some(counts)
}

/// `GET /metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `/metrics` until `check` holds on it; fails after `within` with the last scrape.
pub async fn wait_metrics(
    addr: SocketAddr,
    within: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(addr).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After every job is answered: waits until the worker at `addr` holds no job and `queue` has
/// none ready, then reads any late answer (a duplicate) until 500 ms pass without one.
pub async fn settle(
    client: &mut Client,
    answers: &mut Answers,
    addr: SocketAddr,
    connection: &lapin::Connection,
    queue: &str,
) {
    wait_metrics(addr, Duration::from_secs(30), |t| {
        metric_sum(t, "infermq_pending_jobs", &[]) == 0.0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_counts(connection, queue).await.map(|c| c.0) != Some(0) {
        assert!(Instant::now() < deadline, "{queue} never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers.drain(client, Duration::from_millis(500)).await;
}

/// Collects answers until jobs `0..jobs` are all answered (bounded), lets the worker at `addr`
/// settle so that late duplicates show up, and asserts none is missing and none is an error.
pub async fn answer_all(
    client: &mut Client,
    answers: &mut Answers,
    jobs: usize,
    load: Instant,
    addr: SocketAddr,
    connection: &lapin::Connection,
    queue: &str,
) {
    answers
        .collect_until(client, Duration::from_secs(120), |a| a.distinct() == jobs)
        .await;
    eprintln!(
        "every job answered {:?} after the load began",
        load.elapsed()
    );
    settle(client, answers, addr, connection, queue).await;
    assert!(answers.missing(0..jobs).is_empty());
    assert_eq!(answers.distinct(), jobs, "answers for ids outside the load");
    answers.assert_no_errors();
}

/// A load in progress: `jobs` jobs published 20 every 10 ms to `queue` (about a second for
/// 2,000), returned once `answered` of them have been answered, so a worker can be stopped
/// mid-load.
pub async fn load_until_answered(
    client: &mut Client,
    queue: &str,
    jobs: usize,
    answered: usize,
) -> (JoinHandle<Duration>, Answers, Instant) {
    let load = Instant::now();
    let publisher = steady_publisher(
        client.channel().clone(),
        queue.to_string(),
        client.reply_queue().to_string(),
        0..jobs,
        20,
        Duration::from_millis(10),
    );
    let mut answers = Answers::default();
    answers
        .collect_until(client, Duration::from_secs(60), |a| {
            a.distinct() >= answered
        })
        .await;
    (publisher, answers, load)
}
