//! The seam between the worker's consumers and the kinds of job they feed.
//!
//! A kind of job — prediction ([`super::predict`], metadata requests included), training
//! ([`super::train`]) — says which consumers it wants, which queue each one reads and how, and
//! what becomes of each delivery. Everything else about consuming is one piece of code for every
//! kind (`worker::consumer`): the channel, QoS, `basic.consume` with the kind's arguments, the
//! loop over deliveries and cancellation, `basic.cancel`, the close once the jobs received are
//! settled, and the supervision that restarts a consumer or ends the broker session (in the
//! spirit of mini-redis's `Command`: one trait, one implementation per kind).
//!
//! A kind is registered once, in `worker/kinds.rs`.

use std::collections::BTreeSet;
use std::future::Future;

use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::inflight::Delivered;

/// One kind of job: the part of consuming that differs between kinds.
pub trait JobKind: Send + Sync + 'static {
    /// What one running consumer of this kind holds (its label, a channel of its own, a
    /// readiness guard); dropped when the consumer ends.
    type Lane: Send + Sync + 'static;

    /// Its name in logs.
    const NAME: &'static str;

    /// What a consumer's end on its own (its channel or consumer lost, or a failed start) does.
    const ON_LOST: OnLost;

    /// The names of the consumers this kind wants now (one per served model; a single one for
    /// training). Each change is acted on at once: new names start, missing ones stop.
    fn wanted(&self) -> watch::Receiver<BTreeSet<String>>;

    /// Prepares consumer `name` on its new `channel` (declaring its queue if each consumer has
    /// one of its own) and says how to consume; `connection` is for channels of its own.
    fn open(
        &self,
        connection: &Connection,
        channel: &Channel,
        name: &str,
    ) -> impl Future<Output = Result<(Consume, Self::Lane), StartError>> + Send;

    /// Called once the broker has confirmed the consumer (`consume-ok`).
    fn consuming(&self, _lane: &mut Self::Lane) {}

    /// Takes one delivery over. It ends in its [`InFlight`](super::inflight::InFlight)'s
    /// settlement: at once, later (a batch), or in a task spawned on `tasks`, which is told to
    /// stop when the consumer ends and is waited for before its channel closes.
    fn handle(&self, lane: &Self::Lane, delivered: Delivered, redelivered: bool, tasks: &JobTasks);
}

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

/// Why a consumer could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The broker refused to declare its queue (declared elsewhere with other arguments:
    /// PRECONDITION_FAILED); the broker's reason.
    DeclareRefused(String),
    /// Another failure (opening a channel it needs).
    Failed(String),
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
