//! The consumer loop, one for every kind of job ([`JobKind`], matched in `kinds.rs`): a consumer
//! of prediction jobs per served model, one of training jobs; and the per-worker events
//! consumer.
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
//! the queue, right after that final ack (a few commands at most after a cancel: see
//! `broker::acks` for why).

use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::kinds::{JobKind, Lane};
use crate::broker::acks::AckTracker;
use crate::broker::connection::close_channel;
use crate::broker::Topology;
use crate::jobs::answerer::Answerer;
use crate::jobs::inflight::Delivered;
use crate::jobs::kind::{Acks, Consume, ConsumerEnd, JobTasks};

/// What every consumer of a broker session needs besides its kind and name.
pub struct ConsumerSetup {
    pub connection: Arc<Connection>,
    pub answerer: Arc<Answerer>,
    pub generation: u64,
}

/// A consumer that has started: its channel, its consumer, and its kind's lane.
struct Started {
    channel: Channel,
    consumer: Consumer,
    acks: AckTracker,
    tag: String,
    queue: Arc<str>,
    lane: Lane,
}

/// Consumes the queue of consumer `name` of `kind` until cancelled or it ends on its own; says
/// how it ended.
pub async fn consumer_task(
    kind: JobKind,
    setup: Arc<ConsumerSetup>,
    name: String,
    cancel: CancellationToken,
) -> ConsumerEnd {
    let mut started = match start(&kind, &setup.connection, &name).await {
        Ok(started) => started,
        Err(end) => return end,
    };
    started.lane.consuming();
    let tasks = JobTasks::new();
    let since = Instant::now();
    let lost = consume(&mut started, &tasks, setup.generation, &cancel).await;
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
async fn start(
    kind: &JobKind,
    connection: &Connection,
    name: &str,
) -> Result<Started, ConsumerEnd> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|error| ConsumerEnd::StartFailed(format!("opening a channel: {error}")))?;
    let (spec, lane) = match kind.open(connection, &channel, name).await {
        Ok(opened) => opened,
        // A refused declare closes the channel (channel-level error): nothing to close here.
        Err(end @ ConsumerEnd::DeclareRefused(_)) => return Err(end),
        Err(end) => {
            close_channel(&channel, "consumer did not start").await;
            return Err(end);
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
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let options = BasicConsumeOptions::default();
        let from = queue.as_str().into();
        let as_tag = tag.as_str().into();
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
    tracing::info!(%queue, prefetch, kind = kind.name(), "Consuming");
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
async fn consume(
    started: &mut Started,
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
                    started.lane.handle(delivered, delivery.redelivered, tasks)
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
async fn stop(started: Started, tasks: &JobTasks, cancelled: bool, answerer: &Answerer) {
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
