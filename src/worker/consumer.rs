//! One consumer per served model, on its own channel, and the per-worker events consumer.
//!
//! Cancelling a consumer (shutdown, or its model left the repository) sends `basic.cancel`,
//! then returns every delivery it had prefetched but not started to the queue (`nack`, requeue).
//! Its channel stays open until every job it started is settled: closing a channel makes the
//! broker requeue its unacked deliveries, so a job answered a moment later could not be acked
//! and would be answered again by the next worker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection, Consumer};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::predict::{handle_delivery, PredictContext};
use crate::broker::Topology;

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
    tracing::info!(%queue, prefetch, "Consuming");
    // Ackers of the deliveries handed to jobs (clones share the used/poisoned state); pruned of
    // settled ones as it grows, so it stays near `prefetch` long.
    let mut started: Vec<Acker> = Vec::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    if started.len() >= 2 * usize::from(prefetch).max(64) {
                        started.retain(Acker::usable);
                    }
                    started.push(delivery.acker.clone());
                    handle_delivery(&context, &model, &queue, delivery, generation);
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
        started.retain(Acker::usable);
        tracing::info!(%queue, returned, in_flight = started.len(), "Stopped consuming");
    }
    tokio::spawn(close_when_settled(channel, started));
}

/// Holds `channel` open until every acker is used (acked or nacked: the frame is queued ahead of
/// the channel's close) or poisoned (the channel or connection failed), then closes it by
/// dropping it. Lapin offers no event for this, hence the short poll. Any consumer whose jobs
/// settle after it stops (the training consumer too) needs this.
pub(super) async fn close_when_settled(channel: Channel, mut started: Vec<Acker>) {
    loop {
        started.retain(Acker::usable);
        if started.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(channel);
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
    let (_channel, mut consumer) = match started {
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
            () = cancel.cancelled() => return,
        }
    }
}
