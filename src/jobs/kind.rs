//! What a kind of job and the consumer loop say to each other.
//!
//! A kind of job — prediction ([`super::predict`], metadata requests included), training
//! ([`super::train`]) — says which consumers it wants, which queue each one reads and how
//! ([`Consume`]), and what becomes of each delivery. Everything else about consuming is one
//! piece of code for every kind (`worker::consumer`): the channel, QoS, `basic.consume` with the
//! kind's arguments, the loop over deliveries and cancellation, `basic.cancel`, the close once
//! the jobs received are settled, and the supervision that restarts a consumer or ends the
//! broker session. The kinds are one enum, `worker::kinds::JobKind`, matched in one place.

use std::future::Future;
use std::time::Duration;

use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a consumer reads its queue.
pub struct Consume {
    pub queue: String,
    /// Deliveries unacked at once (`basic.qos`).
    pub prefetch: u16,
    /// `basic.consume` arguments (e.g. `x-consumer-timeout`).
    pub arguments: FieldTable,
    pub acks: Acks,
}

/// How a consumer's deliveries are acked (see `broker::acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// One `basic.ack(multiple)` per run of settled deliveries: short jobs that finish in about
    /// the order they arrive.
    Coalesced,
    /// One ack per delivery: long jobs, whose ack must not wait for another's.
    Individual,
}

/// What a consumer's end on its own does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// The supervisor starts it again after a backoff; the session goes on.
    Restart,
    /// The broker session ends (the worker reconnects and starts every consumer again).
    EndSession,
}

/// How a consumer ended: what a kind's `open` returns when it cannot start, and what the
/// consumer loop reports to its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// Cancelled: shutdown, or it is no longer wanted (its model is no longer served).
    Stopped,
    /// The broker refused to declare its queue (e.g. declared elsewhere with other arguments:
    /// PRECONDITION_FAILED); the broker's reason.
    DeclareRefused(String),
    /// It could not start for another reason (opening a channel it needs, qos or consume).
    StartFailed(String),
    /// It ended on its own after it had started: its channel was closed or its consumer
    /// cancelled by the broker (e.g. the queue was deleted).
    Lost { reason: String, ran: Duration },
}

/// The jobs a consumer runs as tasks of their own, told to stop together when it ends.
pub struct JobTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl JobTasks {
    pub fn new() -> JobTasks {
        JobTasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Runs `job` as a task; `job` receives the token that says its consumer has ended.
    pub fn spawn<F>(&self, job: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(job(self.stop.clone()));
    }

    /// Tells every task to stop and waits for them (each settles its job on the way out).
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Default for JobTasks {
    fn default() -> Self {
        JobTasks::new()
    }
}
