//! The consumer loop, one for every kind of job ([`JobKind`]): a consumer of prediction jobs
//! per served model, one of training jobs; and the per-worker events consumer.
//!
//! A consumer opens its own channel, lets its kind prepare it (declare the queue, say how to
//! consume), sets QoS, consumes with its kind's arguments, and hands each delivery to its kind.
//! It ends in one of the ways [`ConsumerEnd`] names; the session's supervisor
//! (`supervisor.rs`) restarts those that ended on their own, or ends the session, as the kind
//! says, and retries those whose queue the broker refused.
//!
//! Cancelling a consumer (shutdown, or its model left the repository) sends `basic.cancel`; the
//! jobs its kind runs as tasks are told to stop (they settle on the way out), and the channel
//! stays open until the jobs received on it are settled, then closes
//! ([`AckTracker::close_when_settled`]: for coalesced acks, with one final ack). Deliveries it
//! had prefetched but not started are not nacked one by one: the channel close returns them to
//! the queue, right after that final ack. (On a quorum queue a burst of individual requeues
//! makes the broker hold back the acks that follow, and a close then drops them: jobs already
//! answered were redelivered.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::acks::AckTracker;
use crate::broker::connection::close_channel;
use crate::broker::Topology;
use crate::jobs::inflight::{Answerer, Delivered};
use crate::jobs::kind::{Acks, Consume, JobKind, JobTasks, OnLost, StartError};

/// How a consumer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// Cancelled: shutdown, or it is no longer wanted (its model is no longer served).
    Stopped,
    /// The broker refused to declare its queue (e.g. declared elsewhere with other arguments:
    /// PRECONDITION_FAILED); the broker's reason.
    DeclareRefused(String),
    /// It could not start for another reason (opening its channel, qos or consume failed).
    StartFailed(String),
    /// It ended on its own after it had started: its channel was closed or its consumer
    /// cancelled by the broker (e.g. the queue was deleted).
    Lost { reason: String, ran: Duration },
}

/// What every consumer of a broker session needs besides its kind and name.
pub struct ConsumerSetup {
    pub connection: Arc<Connection>,
    pub answerer: Arc<Answerer>,
    pub generation: u64,
}

/// A consumer's task, as the supervisor starts it.
pub type ConsumerFuture = Pin<Box<dyn Future<Output = ConsumerEnd> + Send>>;

/// A registered kind of job, as the session's supervisor sees it (whatever its [`JobKind`]).
pub trait Kind: Send + Sync {
    fn name(&self) -> &'static str;
    fn on_lost(&self) -> OnLost;
    fn wanted(&self) -> watch::Receiver<std::collections::BTreeSet<String>>;
    /// Consumer `name` of this kind, until `cancel` or it ends on its own.
    fn start(
        self: Arc<Self>,
        setup: Arc<ConsumerSetup>,
        name: String,
        cancel: CancellationToken,
    ) -> ConsumerFuture;
}

impl<K: JobKind> Kind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn on_lost(&self) -> OnLost {
        K::ON_LOST
    }

    fn wanted(&self) -> watch::Receiver<std::collections::BTreeSet<String>> {
        JobKind::wanted(self)
    }

    fn start(
        self: Arc<Self>,
        setup: Arc<ConsumerSetup>,
        name: String,
        cancel: CancellationToken,
    ) -> ConsumerFuture {
        Box::pin(consumer_task(self, setup, name, cancel))
    }
}

/// A consumer that has started: its channel, its consumer, and what its kind made for it.
struct Started<L> {
    channel: Channel,
    consumer: Consumer,
    acks: AckTracker,
    tag: String,
    queue: Arc<str>,
    lane: L,
}

/// Consumes the queue of consumer `name` of `kind` until cancelled or it ends on its own; says
/// how it ended.
pub async fn consumer_task<K: JobKind>(
    kind: Arc<K>,
    setup: Arc<ConsumerSetup>,
    name: String,
    cancel: CancellationToken,
) -> ConsumerEnd {
    let mut started = match start(&*kind, &setup.connection, &name).await {
        Ok(started) => started,
        Err(end) => return end,
    };
    kind.consuming(&mut started.lane);
    let tasks = JobTasks::new();
    let since = Instant::now();
    let lost = consume(&*kind, &mut started, &tasks, setup.generation, &cancel).await;
    stop(started, &tasks, lost.is_none(), &setup.answerer).await;
    match lost {
        None => ConsumerEnd::Stopped,
        Some(reason) => ConsumerEnd::Lost {
            reason,
            ran: since.elapsed(),
        },
    }
}

/// Opens the channel, lets the kind prepare it, sets QoS and starts consuming.
async fn start<K: JobKind>(
    kind: &K,
    connection: &Connection,
    name: &str,
) -> Result<Started<K::Lane>, ConsumerEnd> {
    let channel = (connection.create_channel().await)
        .map_err(|error| ConsumerEnd::StartFailed(format!("opening a channel: {error}")))?;
    let (spec, lane) = match kind.open(connection, &channel, name).await {
        Ok(opened) => opened,
        // A refused declare closes the channel (channel-level error): nothing to close here.
        Err(StartError::DeclareRefused(reason)) => return Err(ConsumerEnd::DeclareRefused(reason)),
        Err(StartError::Failed(reason)) => {
            close_channel(&channel, "consumer did not start").await;
            return Err(ConsumerEnd::StartFailed(reason));
        }
    };
    let Consume {
        queue,
        prefetch,
        arguments,
        acks,
    } = spec;
    let tag = format!("infermq-{}-{}", name, uuid::Uuid::new_v4().simple());
    let consumer = async {
        (channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let options = BasicConsumeOptions::default();
        let (from, as_tag) = (queue.as_str().into(), tag.as_str().into());
        channel
            .basic_consume(from, as_tag, options, arguments)
            .await
    };
    let consumer = match consumer.await {
        Ok(consumer) => consumer,
        Err(error) => {
            close_channel(&channel, "consumer did not start").await;
            return Err(ConsumerEnd::StartFailed(format!(
                "consuming {queue}: {error}"
            )));
        }
    };
    tracing::info!(%queue, prefetch, kind = K::NAME, "Consuming");
    let acks = match acks {
        Acks::Coalesced => AckTracker::new(channel.clone()),
        Acks::Individual => AckTracker::individual(channel.clone()),
    };
    Ok(Started {
        channel,
        consumer,
        acks,
        tag,
        queue: Arc::from(queue),
        lane,
    })
}

/// Hands each delivery to the kind until `cancel` (`None`) or the consumer ends on its own
/// (`Some(reason)`).
async fn consume<K: JobKind>(
    kind: &K,
    started: &mut Started<K::Lane>,
    tasks: &JobTasks,
    generation: u64,
    cancel: &CancellationToken,
) -> Option<String> {
    loop {
        tokio::select! {
            delivery = started.consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let delivered = Delivered {
                        delivery: started.acks.delivered(delivery.delivery_tag),
                        generation,
                        queue: started.queue.clone(),
                        properties: delivery.properties,
                        body: delivery.data,
                    };
                    kind.handle(&started.lane, delivered, delivery.redelivered, tasks)
                }
                Some(Err(error)) => return Some(format!("channel failed: {error}")),
                None => return Some("consumer cancelled by the broker".to_string()),
            },
            () = cancel.cancelled() => return None,
        }
    }
}

/// Stops consuming (`basic.cancel` when `cancelled`, and counts what the channel close will
/// return), stops the kind's tasks, and hands the channel's close to the answerer: it closes
/// once the jobs received on it are settled (at once if the broker already closed it; their
/// deliveries went back then).
async fn stop<L>(started: Started<L>, tasks: &JobTasks, cancelled: bool, answerer: &Answerer) {
    let Started {
        channel,
        mut consumer,
        acks,
        tag,
        queue,
        lane,
    } = started;
    let cancel = BasicCancelOptions::default();
    if cancelled
        && channel
            .basic_cancel(tag.as_str().into(), cancel)
            .await
            .is_ok()
    {
        let left = buffered(&mut consumer);
        tracing::info!(%queue, left_to_return = left, unsettled = acks.outstanding(), "Stopped consuming");
    }
    drop(consumer);
    tasks.stop().await;
    drop(lane);
    answerer.close_later(async move { acks.close_when_settled("consumer stopped").await });
}

/// After `basic.cancel-ok` every delivery the broker sent is in the consumer's buffer: counts
/// them (they stay unacked, and the channel close returns them).
fn buffered(consumer: &mut Consumer) -> usize {
    let mut left = 0;
    while let Some(Some(Ok(_))) = consumer.next().now_or_never() {
        left += 1;
    }
    left
}

/// Listens on this worker's queue bound to the models exchange and wakes the repository sync
/// on `model_version_ready`.
pub async fn events_task(
    connection: Arc<Connection>,
    topology: Topology,
    reload: Arc<Notify>,
    cancel: CancellationToken,
    failed: mpsc::UnboundedSender<String>,
) {
    let started = async {
        let channel = connection.create_channel().await?;
        let queue = topology.declare_events_queue(&channel).await?;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                options,
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    }
    .await;
    let (channel, mut consumer) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = failed.send(format!("models events consumer: {error}"));
            return;
        }
    };
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
                    if event["event"] == "model_version_ready" {
                        tracing::info!(model = %event["model_name"], version = %event["model_version"], "Model version announced");
                        reload.notify_one();
                    }
                }
                Some(Err(error)) => {
                    let _ = failed.send(format!("models events consumer: {error}"));
                    return;
                }
                None => return,
            },
            () = cancel.cancelled() => break,
        }
    }
    close_channel(&channel, "events consumer stopped").await;
}
