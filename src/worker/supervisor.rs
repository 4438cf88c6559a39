//! The broker session's supervisor of consumers, for every registered kind of job: one
//! consumer per name its kind wants (a served model for prediction; `training`), started as
//! names appear, stopped as they go, and restarted — or the session ended — when one ends on
//! its own, as its kind says ([`OnLost`]).
//!
//! Only a connection-level failure, or a kind whose consumers end the session when lost
//! (training), ends the session. A prediction consumer whose channel the broker closed, or whose
//! consumer the broker cancelled (its queue deleted), is restarted after a short backoff
//! (declaring its queue again), counted in `infermq_consumer_restarts_total` and logged with the
//! reason. A model whose queue the broker refuses to declare (declared elsewhere with other
//! arguments: PRECONDITION_FAILED) is reported — `/readyz` names it with the broker's reason,
//! `infermq_queue_declare_failures_total` counts it, a log says why — and retried with a longer
//! backoff in case an operator fixes the queue; every other model is served meanwhile. Jobs
//! settled on a lost consumer's channel end as `Settled::ChannelLost` (the broker redelivers
//! them); the new consumer has a channel and an ack window of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::{consumer_task, ConsumerSetup};
use super::kinds::JobKind;
use crate::broker::connection::Backoff;
use crate::jobs::kind::{ConsumerEnd, OnLost};
use crate::serving::ModelRegistry;
use crate::telemetry::Metrics;

/// Restarting a consumer that ended on its own: 0.5 s doubling to 30 s.
const RESTART_INITIAL: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// Declaring a queue the broker refused: 5 s doubling to 60 s.
const DECLARE_INITIAL: Duration = Duration::from_secs(5);
const DECLARE_MAX: Duration = Duration::from_secs(60);
/// A consumer that ran this long before it ended restarts from the initial delay again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Longest broker reason kept for `/readyz` and logs.
const MAX_REASON: usize = 512;

/// A consumer: the index of its kind, and its name (metrics and readiness label it by name).
type Key = (usize, String);

/// A consumer's end, as its task reports it.
pub(super) struct Ended {
    key: Key,
    id: u64,
    end: ConsumerEnd,
}

/// Why the supervisor woke the session.
pub(super) enum Wake {
    /// The names wanted changed, or a backoff is over: reconcile.
    Reconcile,
    Ended(Ended),
    /// What tells a kind's wanted names is gone (the worker is stopping).
    Closed,
}

struct Running {
    id: u64,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Per consumer: when it may be started again, and the two backoffs.
struct Retry {
    at: Option<Instant>,
    restart: Backoff,
    declare: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            at: None,
            restart: Backoff::new(RESTART_INITIAL, RESTART_MAX),
            declare: Backoff::new(DECLARE_INITIAL, DECLARE_MAX),
        }
    }
}

/// The consumers of one broker session.
pub(super) struct Supervisor {
    kinds: Vec<JobKind>,
    wanted: Vec<watch::Receiver<BTreeSet<String>>>,
    setup: Arc<ConsumerSetup>,
    registry: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    running: BTreeMap<Key, Running>,
    retries: BTreeMap<Key, Retry>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    next_id: u64,
}

impl Supervisor {
    pub(super) fn new(
        kinds: Vec<JobKind>,
        setup: Arc<ConsumerSetup>,
        registry: Arc<ModelRegistry>,
        metrics: Arc<Metrics>,
    ) -> Supervisor {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Supervisor {
            wanted: kinds.iter().map(|k| k.wanted()).collect(),
            kinds,
            setup,
            registry,
            metrics,
            running: BTreeMap::new(),
            retries: BTreeMap::new(),
            ended_tx,
            ended_rx,
            next_id: 0,
        }
    }

    /// Starts the consumers wanted that are not running (unless waiting out a backoff) and
    /// stops those no longer wanted.
    pub(super) fn reconcile(&mut self, now: Instant) {
        let wanted: BTreeSet<Key> = (self.wanted.iter_mut().enumerate())
            .flat_map(|(i, w)| {
                w.borrow_and_update()
                    .clone()
                    .into_iter()
                    .map(move |n| (i, n))
            })
            .collect();
        let stale: Vec<Key> = self
            .running
            .keys()
            .chain(self.retries.keys())
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                running.cancel.cancel();
            }
            self.retries.remove(&key);
            self.registry.set_unavailable(&key.1, None);
        }
        for key in wanted {
            let waiting = self
                .retries
                .get(&key)
                .and_then(|r| r.at)
                .is_some_and(|at| at > now);
            if !self.running.contains_key(&key) && !waiting {
                self.start(key);
            }
        }
    }

    /// Waits for what the session must act on: a change of the names wanted, a consumer's end,
    /// or the end of a backoff.
    pub(super) async fn next(&mut self) -> Wake {
        let retry = self.next_retry();
        let wanted = &mut self.wanted;
        let changed = async {
            if wanted.is_empty() {
                return std::future::pending().await;
            }
            select_all(wanted.iter_mut().map(|w| Box::pin(w.changed())))
                .await
                .0
        };
        tokio::select! {
            changed = changed => match changed {
                Ok(()) => Wake::Reconcile,
                Err(_) => Wake::Closed,
            },
            // Never `None` while the supervisor lives: it holds a sender.
            Some(ended) = self.ended_rx.recv() => Wake::Ended(ended),
            () = sleep_until(retry) => Wake::Reconcile,
        }
    }

    fn start(&mut self, key: Key) {
        self.next_id += 1;
        let id = self.next_id;
        let cancel = CancellationToken::new();
        let kind = self.kinds[key.0].clone();
        let task = consumer_task(kind, self.setup.clone(), key.1.clone(), cancel.clone());
        let ended = self.ended_tx.clone();
        let reported = key.clone();
        let handle = tokio::spawn(async move {
            let end = task.await;
            let _ = ended.send(Ended {
                key: reported,
                id,
                end,
            });
        });
        self.running.insert(key, Running { id, cancel, handle });
    }

    /// The earliest time a consumer waiting out a backoff may be started.
    fn next_retry(&self) -> Option<Instant> {
        self.retries
            .iter()
            .filter(|(key, _)| !self.running.contains_key(*key))
            .filter_map(|(_, r)| r.at)
            .min()
    }

    /// Handles a consumer's end; `Err` (the reason) when the session must end: the connection
    /// itself is gone, or the consumer's kind ends the session when one is lost.
    pub(super) fn on_end(
        &mut self,
        ended: Ended,
        connected: bool,
        now: Instant,
    ) -> Result<(), String> {
        let Ended { key, id, end } = ended;
        if self.running.get(&key).map(|r| r.id) != Some(id) {
            // A consumer already stopped or replaced.
            return Ok(());
        }
        self.running.remove(&key);
        let kind = &self.kinds[key.0];
        let model = &key.1;
        let retry = self.retries.entry(key.clone()).or_default();
        let delay = match &end {
            ConsumerEnd::Stopped => return Ok(()),
            _ if !connected => return Err(format!("connection lost (consumer for {model} ended)")),
            _ if kind.on_lost() == OnLost::EndSession => {
                return Err(format!("{} consumer ended: {}", kind.name(), why(&end)))
            }
            ConsumerEnd::DeclareRefused(reason) => {
                let reason = bounded(reason);
                self.registry.set_unavailable(model, Some(&reason));
                self.metrics.supervision.queue_declare_failure(model);
                let delay = retry.declare.next_delay();
                tracing::warn!(%model, %reason, retry_in_ms = delay.as_millis() as u64, "The broker refused to declare this model's queue; serving the other models and retrying");
                delay
            }
            ConsumerEnd::StartFailed(reason) => {
                let delay = retry.restart.next_delay();
                tracing::warn!(%model, reason = %bounded(reason), retry_in_ms = delay.as_millis() as u64, "Consumer did not start; retrying");
                delay
            }
            ConsumerEnd::Lost { reason, ran } => {
                retry.declare.reset();
                if *ran >= STABLE_AFTER {
                    retry.restart.reset();
                }
                self.metrics.supervision.consumer_restart(model);
                let delay = retry.restart.next_delay();
                tracing::warn!(%model, reason = %bounded(reason), ran_ms = ran.as_millis() as u64, retry_in_ms = delay.as_millis() as u64, "Consumer ended; restarting it");
                delay
            }
        };
        retry.at = Some(now + delay);
        Ok(())
    }

    /// Cancels every consumer and waits for them (their channels close once their jobs are
    /// settled, see `consumer.rs`).
    pub(super) async fn stop_all(&mut self) {
        for running in self.running.values() {
            running.cancel.cancel();
        }
        for (_, running) in std::mem::take(&mut self.running) {
            let _ = running.handle.await;
        }
    }
}

/// Why a consumer that is not [`ConsumerEnd::Stopped`] ended.
fn why(end: &ConsumerEnd) -> &str {
    match end {
        ConsumerEnd::Stopped => "stopped",
        ConsumerEnd::DeclareRefused(reason) | ConsumerEnd::StartFailed(reason) => reason,
        ConsumerEnd::Lost { reason, .. } => reason,
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// At most [`MAX_REASON`] bytes of a broker's reason (cut on a character boundary).
fn bounded(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    format!("{}…", crate::protocol::text::prefix(reason, MAX_REASON))
}
