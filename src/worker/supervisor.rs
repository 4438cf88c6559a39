//! The broker session's supervisor of prediction consumers: one per served model, started as
//! models appear, stopped as they go, and restarted when one ends on its own.
//!
//! Only a connection-level failure ends the session. A consumer whose channel the broker
//! closed, or whose consumer the broker cancelled (its queue deleted), is restarted after a
//! short backoff (declaring its queue again), counted in `infermq_consumer_restarts_total` and
//! logged with the reason. A model whose queue the broker refuses to declare (declared elsewhere
//! with other arguments: PRECONDITION_FAILED) is reported — `/readyz` names it with the
//! broker's reason, `infermq_queue_declare_failures_total` counts it, a log says why — and
//! retried with a longer backoff in case an operator fixes the queue; every other model is
//! served meanwhile. Jobs settled on a lost consumer's channel end as `Settled::ChannelLost`
//! (the broker redelivers them); the new consumer has a channel and an ack window of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::{predict_consumer_task, ConsumerEnd, ConsumerSetup};
use crate::broker::connection::Backoff;
use crate::jobs::registry::ModelRegistry;
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

/// A consumer's end, as its task reports it.
pub(super) struct Ended {
    model: String,
    id: u64,
    end: ConsumerEnd,
}

struct Running {
    id: u64,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Per model: when it may be started again, and the two backoffs.
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
    setup: Arc<ConsumerSetup>,
    registry: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    prefetch: Box<dyn Fn(&str) -> u16 + Send + Sync>,
    running: BTreeMap<String, Running>,
    retries: BTreeMap<String, Retry>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    next_id: u64,
}

impl Supervisor {
    pub(super) fn new(
        setup: Arc<ConsumerSetup>,
        registry: Arc<ModelRegistry>,
        metrics: Arc<Metrics>,
        prefetch: Box<dyn Fn(&str) -> u16 + Send + Sync>,
    ) -> Supervisor {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Supervisor {
            setup,
            registry,
            metrics,
            prefetch,
            running: BTreeMap::new(),
            retries: BTreeMap::new(),
            ended_tx,
            ended_rx,
            next_id: 0,
        }
    }

    /// Starts consumers for served models that have none (unless waiting out a backoff) and
    /// stops those of models no longer served.
    pub(super) fn reconcile(&mut self, wanted: &BTreeSet<String>, now: Instant) {
        let stale: Vec<String> = (self.running.keys())
            .chain(self.retries.keys())
            .filter(|m| !wanted.contains(*m))
            .cloned()
            .collect();
        for model in stale {
            if let Some(running) = self.running.remove(&model) {
                running.cancel.cancel();
            }
            self.retries.remove(&model);
            self.registry.set_unavailable(&model, None);
        }
        for model in wanted {
            let waiting = self
                .retries
                .get(model)
                .and_then(|r| r.at)
                .is_some_and(|at| at > now);
            if !self.running.contains_key(model) && !waiting {
                self.start(model);
            }
        }
    }

    fn start(&mut self, model: &str) {
        self.next_id += 1;
        let id = self.next_id;
        let cancel = CancellationToken::new();
        let prefetch = (self.prefetch)(model);
        self.metrics.load.set_job_slots(model, prefetch);
        let task = predict_consumer_task(
            self.setup.clone(),
            model.to_string(),
            prefetch,
            cancel.clone(),
        );
        let ended = self.ended_tx.clone();
        let name = model.to_string();
        let handle = tokio::spawn(async move {
            let end = task.await;
            let _ = ended.send(Ended {
                model: name,
                id,
                end,
            });
        });
        self.running
            .insert(model.to_string(), Running { id, cancel, handle });
    }

    /// The earliest time a model waiting out a backoff may be started.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retries
            .iter()
            .filter(|(m, _)| !self.running.contains_key(*m))
            .filter_map(|(_, r)| r.at)
            .min()
    }

    /// The next consumer end (never `None` while the supervisor lives: it holds a sender).
    pub(super) async fn next_end(&mut self) -> Option<Ended> {
        self.ended_rx.recv().await
    }

    /// Handles a consumer's end; `Err` (the reason) when the session must end because the
    /// connection itself is gone.
    pub(super) fn on_end(
        &mut self,
        ended: Ended,
        connected: bool,
        now: Instant,
    ) -> Result<(), String> {
        let Ended { model, id, end } = ended;
        if self.running.get(&model).map(|r| r.id) != Some(id) {
            // A consumer already stopped or replaced.
            return Ok(());
        }
        self.running.remove(&model);
        let retry = self.retries.entry(model.clone()).or_default();
        let delay = match &end {
            ConsumerEnd::Stopped => return Ok(()),
            _ if !connected => return Err(format!("connection lost (consumer for {model} ended)")),
            ConsumerEnd::DeclareRefused(reason) => {
                let reason = bounded(reason);
                self.registry.set_unavailable(&model, Some(&reason));
                self.metrics.supervision.queue_declare_failure(&model);
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
                self.metrics.supervision.consumer_restart(&model);
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

/// At most [`MAX_REASON`] bytes of a broker's reason (cut on a character boundary).
fn bounded(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    format!("{}…", crate::protocol::text::prefix(reason, MAX_REASON))
}
