//! What answering needs, shared by every job of a worker: the publisher's command queue, the
//! metrics, the dead-letter exchange and delivery limit, the tracer, and the two things a
//! graceful stop waits on — the count of jobs received and not yet settled, and the stopped
//! consumers' channels that close once their jobs are.
//!
//! Its invariants live here: the count moves only through [`InFlight`](super::inflight::InFlight)
//! (one up when a delivery is taken over, one down when its settlement is done), and a channel
//! handed to [`Answerer::close_later`] is waited for by [`Answerer::wait_channels_closed`].

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::task::TaskTracker;

use crate::broker::Command;
use crate::telemetry::trace::JobTracer;
use crate::telemetry::Metrics;

/// Everything the answering side needs, shared by all jobs of a worker.
pub struct Answerer {
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
    dead_letter_exchange: String,
    delivery_limit: u32,
    /// Jobs received and not yet settled, for graceful shutdown.
    unsettled: AtomicI64,
    settled: Notify,
    /// Stopped consumers' channels, closed once their jobs are settled; a graceful stop waits
    /// for them before it closes the connection.
    closing: TaskTracker,
    /// Continues each job's trace (W3C `traceparent`) and exports its spans when configured.
    tracer: JobTracer,
}

impl Answerer {
    /// Answers go to the publisher through `commands`; a job failing on its `delivery_limit`-th
    /// delivery is dead-lettered to `dead_letter_exchange` by the worker itself.
    pub fn new(
        commands: mpsc::UnboundedSender<Command>,
        metrics: Arc<Metrics>,
        dead_letter_exchange: String,
        delivery_limit: u32,
        tracer: JobTracer,
    ) -> Answerer {
        Answerer {
            commands,
            metrics,
            dead_letter_exchange,
            delivery_limit,
            unsettled: AtomicI64::new(0),
            settled: Notify::new(),
            closing: TaskTracker::new(),
            tracer,
        }
    }

    pub(super) fn commands(&self) -> &mpsc::UnboundedSender<Command> {
        &self.commands
    }

    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn dead_letter_exchange(&self) -> &str {
        &self.dead_letter_exchange
    }

    pub(super) fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }

    pub(super) fn tracer(&self) -> &JobTracer {
        &self.tracer
    }

    pub(super) fn job_started(&self) {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn job_done(&self) {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Jobs received and not yet settled (for logs).
    pub fn unsettled(&self) -> i64 {
        self.unsettled.load(Ordering::Acquire)
    }

    /// Waits until no received job is left unsettled.
    pub async fn wait_settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.unsettled() <= 0 {
                return;
            }
            notified.await;
        }
    }

    /// Runs `close`, which closes a stopped consumer's channel once its jobs are settled, as
    /// one of the closes a graceful stop waits for.
    pub fn close_later(&self, close: impl Future<Output = ()> + Send + 'static) {
        self.closing.spawn(close);
    }

    /// At the end of a graceful stop, once the publisher has settled everything: waits, at most
    /// `limit` (the broker may be slow to answer), for the stopped consumers' channels to send
    /// their last acks and close. With jobs still unsettled (the deadline passed) it does not
    /// wait: those channels close with the connection, and the broker redelivers the jobs.
    pub async fn wait_channels_closed(&self, limit: Duration) {
        if self.unsettled() > 0 {
            return;
        }
        self.closing.close();
        let _ = tokio::time::timeout(limit, self.closing.wait()).await;
        self.closing.reopen();
    }
}
