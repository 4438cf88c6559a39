//! One consumer per served model, on its own channel, and the per-worker events consumer.
//!
//! A prediction consumer ends in one of the ways [`ConsumerEnd`] names; the session's
//! supervisor (`session.rs`) restarts those that ended on their own and retries those whose
//! queue the broker refused, so one model's trouble never ends the broker session.
//!
//! Cancelling a consumer (shutdown, or its model left the repository) sends `basic.cancel`;
//! the channel then stays open until the jobs received on it are settled, and closes with one
//! final ack ([`AckTracker::close_when_settled`]). Deliveries it had prefetched but not started
//! are not nacked one by one: the channel close returns them to the queue, right after that
//! final ack. (On a quorum queue a burst of individual requeues makes the broker hold back the
//! acks that follow, and a close then drops them: jobs already answered were redelivered.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::acks::AckTracker;
use crate::broker::connection::close_channel;
use crate::broker::Topology;
use crate::jobs::inflight::{Answerer, Delivered};
use crate::jobs::predict::{handle_delivery, PredictContext};

/// How a prediction consumer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// Cancelled: shutdown, or its model is no longer served.
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

/// What a prediction consumer needs besides its model.
pub struct ConsumerSetup {
    pub connection: Arc<Connection>,
    pub topology: Topology,
    pub context: Arc<PredictContext>,
    pub generation: u64,
}

/// Consumes `model`'s prediction queue until cancelled or it ends on its own; says how.
pub async fn predict_consumer_task(
    setup: Arc<ConsumerSetup>,
    model: String,
    prefetch: u16,
    cancel: CancellationToken,
) -> ConsumerEnd {
    let queue = setup.topology.predict_queue(&model);
    let channel = match setup.connection.create_channel().await {
        Ok(channel) => channel,
        Err(error) => return ConsumerEnd::StartFailed(format!("opening a channel: {error}")),
    };
    // A refused declare closes the channel (channel-level error): nothing to close here.
    if let Err(error) = setup.topology.declare_model(&channel, &model).await {
        return ConsumerEnd::DeclareRefused(error.to_string());
    }
    setup.context.registry.set_unavailable(&model, None);
    let tag = format!("infermq-{}-{}", model, uuid::Uuid::new_v4().simple());
    let consumer = async {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }
    .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(error) => {
            close_channel(&channel, "consumer did not start").await;
            return ConsumerEnd::StartFailed(format!("consuming {queue}: {error}"));
        }
    };
    let context = &setup.context;
    let _consuming = context.registry.consuming(&model);
    let acks = AckTracker::new(channel.clone());
    let label: Arc<str> = Arc::from(model.as_str());
    let started = Instant::now();
    let delivered_from: Arc<str> = Arc::from(queue.as_str());
    tracing::info!(%queue, prefetch, "Consuming");
    let lost = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let delivered = Delivered {
                        delivery: acks.delivered(delivery.delivery_tag),
                        generation: setup.generation,
                        queue: delivered_from.clone(),
                        properties: delivery.properties,
                        body: delivery.data,
                    };
                    handle_delivery(context, &label, delivered, delivery.redelivered)
                }
                Some(Err(error)) => break Some(format!("channel failed: {error}")),
                None => break Some("consumer cancelled by the broker".to_string()),
            },
            () = cancel.cancelled() => break None,
        }
    };
    if lost.is_none()
        && channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
            .is_ok()
    {
        let left = buffered(&mut consumer);
        tracing::info!(%queue, left_to_return = left, unsettled = acks.outstanding(), "Stopped consuming");
    }
    drop(consumer);
    // Jobs received on this channel settle through the publisher: the channel closes once
    // they have (at once if the broker already closed it; their deliveries went back then).
    context
        .answerer
        .closing
        .spawn(async move { acks.close_when_settled("consumer stopped").await });
    match lost {
        None => ConsumerEnd::Stopped,
        Some(reason) => ConsumerEnd::Lost {
            reason,
            ran: started.elapsed(),
        },
    }
}

/// Holds `channel` open until no job of this worker is left unsettled, then closes it. For a
/// consumer whose acks are not coalesced (training): an acker being used is not enough, as
/// lapin sends the ack from a task of its own, which a channel close issued meanwhile
/// overtakes (the ack then fails and the broker requeues the answered job).
pub(super) async fn close_when_settled(channel: Channel, answerer: Arc<Answerer>) {
    answerer.wait_settled().await;
    close_channel(&channel, "consumer stopped").await;
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
