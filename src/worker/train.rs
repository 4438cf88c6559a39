//! The training lane: its own consumer on `<prefix>.train`, with prefetch
//! `training.concurrency`, so training never takes an inference instance. Each delivery runs as
//! a task ([`crate::jobs::train`]); when the session ends (shutdown or a lost connection) the
//! running jobs are told to stop between batches, so a reconnect never waits for a training run.
//!
//! The consumer asks RabbitMQ for `x-consumer-timeout` = `training.consumer_timeout_ms`
//! (honoured from RabbitMQ 3.12; on older brokers raise `consumer_timeout` in rabbitmq.conf), so
//! a long job is not cancelled at the broker's 30-minute default. A job whose worker dies
//! mid-training was never acked: the broker redelivers it.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Connection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::acks::AckTracker;
use crate::jobs::inflight::Delivered;
use crate::jobs::train::{handle_training, TrainContext};

/// Consumes the training queue until cancelled or the channel fails (reported on `failed`).
pub async fn train_consumer_task(
    connection: Arc<Connection>,
    ctx: Arc<TrainContext>,
    generation: u64,
    cancel: CancellationToken,
    failed: mpsc::UnboundedSender<String>,
) {
    let queue = ctx.topology.train_queue();
    let started = async {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(ctx.concurrency, BasicQosOptions::default())
            .await?;
        let events = connection.create_channel().await?;
        events
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-consumer-timeout"),
            AMQPValue::LongLongInt(ctx.consumer_timeout_ms.min(i64::MAX as u64) as i64),
        );
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        Ok::<_, lapin::Error>((channel, events, consumer))
    }
    .await;
    let (channel, events, mut consumer) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = failed.send(format!("training consumer: {error}"));
            return;
        }
    };
    tracing::info!(%queue, concurrency = ctx.concurrency, "Consuming training jobs");
    let acks = AckTracker::individual(channel.clone());
    let delivered_from: Arc<str> = Arc::from(queue.as_str());
    let running = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let delivered = Delivered {
                        delivery: acks.delivered(delivery.delivery_tag),
                        generation,
                        queue: delivered_from.clone(),
                        properties: delivery.properties,
                        body: delivery.data,
                    };
                    running.spawn(handle_training(ctx.clone(), events.clone(), delivered, delivery.redelivered, cancel.clone()));
                }
                Some(Err(error)) => {
                    let _ = failed.send(format!("training consumer: {error}"));
                    break;
                }
                None => {
                    let _ = failed.send(format!("training consumer on {queue} was cancelled by the broker"));
                    break;
                }
            },
            () = cancel.cancelled() => break,
        }
    }
    // Prefetched jobs that did not start go back when the channel closes; running ones were
    // told to stop (`cancel` is the session's) and settle through the publisher.
    running.close();
    running.wait().await;
    // Finished jobs settle through the publisher: keep the channel (and so their deliveries)
    // open until they have, or closing it would requeue answered jobs.
    ctx.answerer
        .closing
        .spawn(super::consumer::close_when_settled(
            channel,
            ctx.answerer.clone(),
        ));
}
