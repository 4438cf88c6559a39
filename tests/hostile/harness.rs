//! The hostile-producer harness: a real `infermq worker` child process on the real broker, a
//! client that publishes raw bodies and properties, and the checks every case ends with (the
//! process is alive, it did not reconnect, a normal iris job is answered within 5 s, its
//! resident memory stayed below its start plus [`RSS_GROWTH_KB`]).
//!
//! While the harness waits for an answer it also watches the worker: a process that exits or
//! grows past the bound fails the case at once (and is killed by the drop), so a case that
//! would eat memory on a shared machine stops early.

use std::time::{Duration, Instant};

use infermq::client::{header_str, Client};
use infermq::protocol::decode_response;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::common::fleet::{job_body, metric_sum, scrape, ChildWorker};
use crate::common::{amqp_url, cleanup, client, random_prefix};

/// How much a worker's resident memory may grow over a case (kB).
pub const RSS_GROWTH_KB: u64 = 200 * 1024;
/// The contract's bound on `x-error` and on an error result's `error` (bytes).
pub const ECHO_BOUND: usize = 1024;
const NORMAL_JOB_WITHIN: Duration = Duration::from_secs(5);

/// One worker under attack and the client attacking it.
pub struct Target {
    pub prefix: String,
    pub worker: ChildWorker,
    pub client: Client,
    _repo: tempfile::TempDir,
    rss_start_kb: u64,
    reconnects: f64,
    next_id: usize,
}

impl Target {
    /// A worker serving `repo`, ready (`/readyz` 200).
    pub async fn start(repo: tempfile::TempDir, extra: &[(&str, &str)]) -> Target {
        Target::start_with_prefix(random_prefix(), repo, extra, true).await
    }

    /// A worker with a chosen prefix; with `wait_ready` false the caller decides when it
    /// is usable (a worker that can never be ready).
    pub async fn start_with_prefix(
        prefix: String,
        repo: tempfile::TempDir,
        extra: &[(&str, &str)],
        wait_ready: bool,
    ) -> Target {
        let mut worker = ChildWorker::spawn(&prefix, repo.path(), extra);
        if wait_ready {
            worker.wait_ready(Duration::from_secs(60)).await;
        }
        let client = client().await;
        let rss_start_kb = rss_kb(worker.pid()).expect("VmRSS of a running worker");
        let mut target = Target {
            prefix,
            worker,
            client,
            _repo: repo,
            rss_start_kb,
            reconnects: 0.0,
            next_id: 0,
        };
        if wait_ready {
            target.reconnects = target.reconnects().await;
        }
        target
    }

    pub fn queue(&self, model: &str) -> String {
        format!("{}.predict.{model}", self.prefix)
    }

    /// A fresh correlation id.
    pub fn correlation(&mut self, case: &str) -> String {
        self.next_id += 1;
        format!("{case}-{}", self.next_id)
    }

    /// Persistent, JSON, `reply_to` this client, the given correlation id and headers.
    pub fn properties(&self, correlation: &str, headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_reply_to(self.client.reply_queue().into())
            .with_correlation_id(correlation.into())
            .with_headers(headers)
    }

    /// Publishes (mandatory, confirmed) and waits for the answer with `correlation`.
    pub async fn call(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        within: Duration,
    ) -> Delivery {
        let correlation = properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string())
            .expect("a correlation id");
        self.client
            .publish(queue, body, properties)
            .await
            .unwrap_or_else(|e| panic!("publish {correlation} to {queue}: {e}"));
        self.reply(&correlation, within).await
    }

    /// Waits for the answer with `correlation`, failing at once if the worker exits or grows
    /// past its memory bound.
    pub async fn reply(&mut self, correlation: &str, within: Duration) -> Delivery {
        let deadline = Instant::now() + within;
        loop {
            match self.client.next_reply(Duration::from_millis(100)).await {
                Ok(d) if correlation_of(&d).as_deref() == Some(correlation) => return d,
                Ok(_) => continue,
                Err(infermq::client::ClientError::Timeout(_)) => {}
                Err(e) => panic!("reply queue failed while waiting for {correlation}: {e}"),
            }
            self.assert_alive_and_bounded(correlation);
            assert!(
                Instant::now() < deadline,
                "{correlation}: no answer within {within:?}:\n{}",
                self.worker.log_tail()
            );
        }
    }

    /// The process runs and its memory is within bound (a runaway is killed here).
    pub fn assert_alive_and_bounded(&mut self, case: &str) {
        assert!(
            self.worker.is_running(),
            "{case}: the worker process died:\n{}",
            self.worker.log_tail()
        );
        let rss = rss_kb(self.worker.pid()).unwrap_or(0);
        if rss > self.rss_start_kb + RSS_GROWTH_KB {
            self.worker.sigkill();
            panic!(
                "{case}: worker resident memory {} MB > start {} MB + {} MB (killed)",
                rss / 1024,
                self.rss_start_kb / 1024,
                RSS_GROWTH_KB / 1024
            );
        }
    }

    /// Measures the memory bound from now (for a worker started without waiting for ready).
    pub fn rebase_memory(&mut self) {
        self.rss_start_kb = rss_kb(self.worker.pid()).expect("VmRSS of a running worker");
    }

    /// `infermq_broker_reconnects_total` now.
    pub async fn reconnects(&self) -> f64 {
        metric_sum(
            &scrape(self.worker.addr).await,
            "infermq_broker_reconnects_total",
            &[],
        )
    }

    /// The checks after every case: alive, no reconnect since start, a normal iris job
    /// answered within 5 s, memory bounded.
    pub async fn assert_healthy(&mut self, case: &str) {
        self.assert_alive_and_bounded(case);
        let id = self.correlation(&format!("{case}-normal"));
        let body = job_body(self.next_id);
        let properties = self.properties(&id, FieldTable::default());
        let queue = self.queue("iris");
        let answer = self
            .call(&queue, &body.body, properties, NORMAL_JOB_WITHIN)
            .await;
        let decoded = decode_response(&answer.data, None).expect("a decodable answer");
        assert!(
            decoded.error.is_none() && header_str(&answer, "x-error-code").is_none(),
            "{case}: the normal job after it failed: {:?}",
            decoded.error
        );
        let reconnects = self.reconnects().await;
        assert_eq!(
            reconnects,
            self.reconnects,
            "{case}: the worker reconnected to the broker:\n{}",
            self.worker.log_tail()
        );
        self.assert_alive_and_bounded(case);
    }

    /// Deletes the prefix's queues and exchanges; the worker is killed on drop.
    pub async fn finish(self) {
        let prefix = self.prefix.clone();
        self.client.close().await;
        drop(self.worker);
        cleanup(&prefix).await;
    }
}

/// A fresh connection to the broker (for queue inspection and deletion).
pub async fn broker() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to the broker")
}

/// A job's correlation id as text.
pub fn correlation_of(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_string())
}

/// `VmRSS` of `pid` in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Asserts an error result: `x-error-code` = `code` in the header and the body, `x-error` and
/// the body's `error` each at most 1 KiB and equal, and `x-error` containing every `needle`.
/// Returns the message.
pub fn assert_error(case: &str, answer: &Delivery, code: &str, needles: &[&str]) -> String {
    let header_code = header_str(answer, "x-error-code");
    let message = header_str(answer, "x-error").unwrap_or_default();
    let shown: String = message.chars().take(300).collect();
    assert_eq!(
        header_code.as_deref(),
        Some(code),
        "{case}: x-error-code (x-error: {shown})"
    );
    assert!(
        message.len() <= ECHO_BOUND,
        "{case}: x-error is {} bytes (> {ECHO_BOUND}): {shown}…",
        message.len()
    );
    let decoded = decode_response(&answer.data, None).expect("a decodable error result");
    let (body_code, body_message) = decoded.error.expect("an error result");
    assert_eq!(body_code, code, "{case}: the body's code");
    assert!(
        body_message.len() <= ECHO_BOUND,
        "{case}: the body's error is {} bytes (> {ECHO_BOUND})",
        body_message.len()
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "{case}: x-error does not name {needle:?}: {shown}"
        );
    }
    message
}

/// Asserts a producer's long text was echoed at most as a quoted, truncated prefix.
pub fn assert_truncated_quote(case: &str, message: &str, producer_text: &str) {
    let head: String = producer_text.chars().take(16).collect();
    assert!(
        message.contains(&format!("\"{head}")),
        "{case}: expected the producer's text quoted, from its start: {message}"
    );
    assert!(
        !message.contains(producer_text),
        "{case}: the producer's text was echoed whole"
    );
}
