//! One consumer per served model, on its own channel, and the per-worker events consumer.
//!
//! Cancelling a consumer (shutdown, or its model left the repository) sends `basic.cancel`,
//! then returns every delivery it had prefetched but not started to the queue (`nack`, requeue).
//! Its channel stays open until the worker's jobs are settled: closing a channel makes the
//! broker requeue its unacked deliveries, so a job answered a moment later could not be acked
//! and would be answered again by the next worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::acks::AckTracker;
use crate::broker::connection::close_channel;
use crate::broker::Topology;
use crate::jobs::inflight::{Answerer, Delivered};
use crate::jobs::predict::{handle_delivery, PredictContext};

/// Consumes `model`'s prediction queue until cancelled or the channel fails (reported on
/// `failed`).
#[allow(clippy::too_many_arguments)]
pub async fn predict_consumer_task(
    connection: Arc<Connection>,
    topology: Topology,
    model: String,
    prefetch: u16,
    context: Arc<PredictContext>,
    generation: u64,
    cancel: CancellationToken,
    failed: mpsc::UnboundedSender<String>,
) {
    let queue = topology.predict_queue(&model);
    let started = async {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        topology.declare_model(&channel, &model).await?;
        let tag = format!("infermq-{}-{}", model, uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer, tag))
    }
    .await;
    let (channel, mut consumer, tag) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = failed.send(format!("consumer for {queue}: {error}"));
            return;
        }
    };
    let _consuming = context.registry.consuming(&model);
    let acks = AckTracker::new(channel.clone());
    let label: Arc<str> = Arc::from(model.as_str());
    tracing::info!(%queue, prefetch, "Consuming");
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let delivered = Delivered {
                        delivery: acks.delivered(delivery.delivery_tag),
                        generation,
                        queue: queue.clone(),
                        properties: delivery.properties,
                        body: delivery.data,
                    };
                    handle_delivery(&context, &label, delivered, delivery.redelivered)
                }
                Some(Err(error)) => {
                    let _ = failed.send(format!("consumer for {queue}: {error}"));
                    return;
                }
                None => {
                    let _ = failed.send(format!("consumer for {queue} was cancelled by the broker"));
                    return;
                }
            },
            () = cancel.cancelled() => break,
        }
    }
    if channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
        .is_ok()
    {
        let returned = requeue_buffered(&mut consumer).await;
        let unsettled = context.answerer.unsettled.load(Ordering::Acquire);
        tracing::info!(%queue, returned, unsettled, "Stopped consuming");
    }
    let answerer = context.answerer.clone();
    answerer
        .closing
        .spawn(close_when_settled(channel, answerer.clone()));
}

/// Holds `channel` open until no job of this worker is left unsettled, then closes it. An acker being used is not enough: lapin sends the ack from a task of its own,
/// which a channel close issued meanwhile overtakes (the ack then fails and the broker requeues
/// the answered job). Per channel, lapin reports nothing, so this waits for the worker-wide
/// count: at shutdown that is the drain; after a model is removed under other load, its idle
/// channel (no consumer, nothing unacked) may stay open until the worker is next idle or the
/// connection closes. Any consumer whose jobs settle after it stops (the training consumer too)
/// needs this.
pub(super) async fn close_when_settled(channel: Channel, answerer: Arc<Answerer>) {
    answerer.wait_settled().await;
    close_channel(&channel, "consumer stopped").await;
}

/// After `basic.cancel-ok` every delivery the broker sent is in the consumer's buffer: return
/// each to the queue.
async fn requeue_buffered(consumer: &mut Consumer) -> usize {
    let mut returned = 0;
    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if delivery.acker.nack(requeue).await.is_ok() {
            returned += 1;
        }
    }
    returned
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
