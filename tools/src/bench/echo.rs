//! The echo consumer: the broker-bound ceiling a worker is measured against.
//!
//! It consumes a job queue like a worker (manual acks, prefetch), and answers each job without
//! reading its body: a fixed tiny result to `reply_to` with the job's `correlation_id`, published
//! with confirms, the job acked only once the result is confirmed. That is the worker's reliability
//! path minus decoding, batching and inference, so `worker jobs/s ÷ echo jobs/s` says how much of
//! the broker's capacity the worker keeps. Jobs prefetched but unanswered when it stops go back to
//! the queue (the channel closes with them unacked).

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use infermq::broker::PublishOutcome;

/// The result every echoed job gets.
pub const ECHO_RESULT: &[u8] = br#"{"id":"","model_name":"echo","outputs":[]}"#;
/// Unacked jobs the echo consumer holds at once.
pub const ECHO_PREFETCH: u16 = 1024;
/// How long stopping waits for answers already under way.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Handle on a running echo consumer; [`EchoConsumer::stop`] ends it.
#[derive(Debug)]
pub struct EchoConsumer {
    cancel: CancellationToken,
    task: JoinHandle<lapin::Result<u64>>,
}

impl EchoConsumer {
    /// Starts consuming `queue` on `connection` (its own, closed when it stops) and returns
    /// once it consumes. `default_reply` is where jobs without `reply_to` are answered
    /// (`<prefix>.results`).
    pub async fn start(
        connection: Connection,
        queue: &str,
        default_reply: &str,
    ) -> lapin::Result<Self> {
        let consume = connection.create_channel().await?;
        consume
            .basic_qos(ECHO_PREFETCH, BasicQosOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                queue.into(),
                "infermq-bench-echo".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(echo_task(
            connection,
            consume,
            consumer,
            publish,
            default_reply.to_owned(),
            cancel.clone(),
        ));
        Ok(EchoConsumer { cancel, task })
    }

    /// Stops consuming, finishes the answers under way (bounded), closes the connection and
    /// returns how many jobs were answered.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.cancel.cancel();
        Ok(self.task.await??)
    }
}

/// Answers jobs from `consumer` until `cancel` fires or the consumer ends; returns the count.
pub async fn echo_task(
    connection: Connection,
    consume: Channel,
    mut consumer: Consumer,
    publish: Channel,
    default_reply: String,
    cancel: CancellationToken,
) -> lapin::Result<u64> {
    let mut answering = FuturesUnordered::new();
    let mut answered = 0u64;
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = answering.next(), if !answering.is_empty() => match done {
                Ok(()) => answered += 1,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => answering.push(answer(publish.clone(), delivery, &default_reply)),
                Some(Err(error)) => {
                    failure = Some(error);
                    break;
                }
                None => break,
            },
        }
    }
    if consume.status().connected() {
        let tag = consumer.tag();
        if let Err(error) = consume
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            tracing::warn!(%error, "Echo consumer cancel failed");
        }
    }
    let drain = async {
        while let Some(done) = answering.next().await {
            match done {
                Ok(()) => answered += 1,
                Err(error) => tracing::warn!(%error, "Echo answer failed while stopping"),
            }
        }
    };
    if tokio::time::timeout(DRAIN_DEADLINE, drain).await.is_err() {
        tracing::warn!(
            deadline_s = DRAIN_DEADLINE.as_secs(),
            "Echo answers still pending at stop"
        );
    }
    drop(answering);
    if connection.status().connected() {
        if let Err(error) = connection.close(200, "bench echo done".into()).await {
            tracing::warn!(%error, "Echo connection close failed");
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(answered),
    }
}

/// Publishes the fixed result for one job, waits for its confirm, then acks (or requeues on nack).
async fn answer(publish: Channel, delivery: Delivery, default_reply: &str) -> lapin::Result<()> {
    let reply_to = delivery
        .properties
        .reply_to()
        .clone()
        .unwrap_or_else(|| ShortString::from(default_reply));
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(id) = delivery.properties.correlation_id() {
        props = props.with_correlation_id(id.clone());
    }
    let confirm = publish
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            ECHO_RESULT,
            props,
        )
        .await?;
    match PublishOutcome::of(confirm).await {
        PublishOutcome::Nacked(_) => {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            delivery.nack(requeue).await?;
        }
        // Published without `mandatory`: the broker returns nothing.
        PublishOutcome::Confirmed | PublishOutcome::Returned(_) => {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        PublishOutcome::ChannelLost(error) => return Err(error),
    }
    Ok(())
}
