//! What answering needs, shared by every job of a worker: the publisher's command queue, the
//! metrics, the dead-letter exchange and delivery limit, the tracer, and the count of jobs
//! received and not yet settled that a graceful stop waits on.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::broker::Command;
use crate::telemetry::trace::JobTracer;
use crate::telemetry::Metrics;

/// Everything the answering side needs, shared by all jobs of a worker.
pub struct Answerer {
    pub commands: mpsc::UnboundedSender<Command>,
    pub metrics: Arc<Metrics>,
    pub dead_letter_exchange: String,
    pub delivery_limit: u32,
    /// Jobs received and not yet settled, for graceful shutdown.
    pub unsettled: AtomicI64,
    pub settled: Notify,
    /// Stopped consumers' channels, closed once every job is settled; a graceful stop waits
    /// for them before it closes the connection.
    pub closing: tokio_util::task::TaskTracker,
    /// Continues each job's trace (W3C `traceparent`) and exports its spans when configured.
    pub tracer: JobTracer,
}

impl Answerer {
    pub(super) fn job_started(&self) {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn job_done(&self) {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Waits until no received job is left unsettled.
    pub async fn wait_settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.unsettled.load(Ordering::Acquire) <= 0 {
                return;
            }
            notified.await;
        }
    }
}
