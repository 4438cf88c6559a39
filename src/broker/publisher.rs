//! Publishing results with publisher confirms, and settling jobs only once that is done.
//!
//! Every job ends through a [`Command`]: its result (or error result) is published and, once the
//! broker has confirmed it, the job's delivery is acked; or the delivery is requeued (an
//! internal failure the delivery limit will eventually dead-letter); or the job is published to
//! the dead-letter exchange with the reason in its headers, then acked. Nothing is acked before
//! what answers it is confirmed, so a crash at any point leaves the job in its queue.
//!
//! A result the broker returns as unroutable (its `reply_to` queue is gone) is counted, logged
//! and moved to the dead-letter exchange, so it is not lost either.

use super::acks::DeliveryRef;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to do with a job's delivery once its answer is safely in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Answered (result or error result): ack.
    Answer,
    /// Internal failure: requeue; the queue's delivery limit dead-letters it eventually.
    Requeue,
    /// Published to the dead-letter exchange by the worker: ack.
    DeadLetter,
}

/// How a settlement ended, reported to [`Settlement::on_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acked or requeued as asked.
    Done(Disposition),
    /// The delivery's channel is gone; the broker redelivers the job.
    ChannelLost,
}

/// A job's delivery and what to do with it.
pub struct Settlement {
    pub delivery: DeliveryRef,
    /// Connection generation the delivery came on; a stale one is not answered again.
    pub generation: u64,
    pub disposition: Disposition,
    pub on_done: Option<Box<dyn FnOnce(Settled) + Send>>,
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The model the message answers for: the metrics label of a returned result.
    pub model: std::sync::Arc<str>,
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Work for the publisher task. `Publish` is by far the common variant, so it is not boxed.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Publish, wait for the confirm, then settle.
    Publish {
        message: OutgoingMessage,
        settlement: Settlement,
    },
    /// Settle without publishing (requeue).
    Settle(Settlement),
}

/// Where unroutable results go, and what the publisher reports.
#[derive(Clone)]
pub struct PublisherContext {
    pub dead_letter_exchange: String,
    /// Called with the model of each result the broker returned as unroutable.
    pub on_returned: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
}

/// Why the publisher stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("publishing failed: {0}")]
    Publish(#[from] lapin::Error),
}

/// Runs until the command channel closes (after `cancel`, once every sender is gone) or the
/// channel fails. In-flight confirms are awaited and settled before it returns.
pub async fn publisher_task(
    channel: Channel,
    generation: u64,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    context: PublisherContext,
    cancel: CancellationToken,
) -> Result<(), PublisherError> {
    // Publishes are pipelined: each command is one future (publish, await the confirm, settle),
    // so no result waits for the one before it to reach the socket. Confirm tags are taken in
    // the order the futures are first polled, which is the order of the commands.
    let mut inflight = FuturesUnordered::new();
    let result = loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break Ok(()) };
                inflight.push(handle(command, channel.clone(), generation, context.clone()));
            }
            Some(failed) = inflight.next(), if !inflight.is_empty() => {
                if let Some(error) = failed {
                    break Err(error.into());
                }
            }
            () = cancel.cancelled(), if commands.is_empty() && inflight.is_empty() => break Ok(()),
        }
    };
    while inflight.next().await.is_some() {}
    if result.is_ok() {
        super::connection::close_channel(&channel, "infermq publisher stopped").await;
    }
    result
}

/// Carries out one command; returns the error if publishing failed (the channel is gone).
async fn handle(
    command: Command,
    channel: Channel,
    generation: u64,
    context: PublisherContext,
) -> Option<lapin::Error> {
    match command {
        Command::Settle(settlement) => {
            settle(settlement).await;
            None
        }
        Command::Publish {
            message,
            settlement,
        } => {
            if settlement.generation != generation {
                // From a connection that is gone: the broker redelivers that job.
                finish(settlement, Settled::ChannelLost);
                return None;
            }
            match publish(&channel, &message).await {
                Ok(confirm) => {
                    settle_later(confirm, message, settlement, context, channel).await;
                    None
                }
                Err(error) => {
                    finish(settlement, Settled::ChannelLost);
                    Some(error)
                }
            }
        }
    }
}

async fn publish(channel: &Channel, message: &OutgoingMessage) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            message.exchange.as_str().into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &message.body,
            message.properties.clone(),
        )
        .await
}

async fn settle_later(
    confirm: PublisherConfirm,
    message: OutgoingMessage,
    mut settlement: Settlement,
    context: PublisherContext,
    channel: Channel,
) {
    match confirm.await {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
        Ok(Confirmation::Ack(Some(returned))) => {
            (context.on_returned)(&message.model);
            tracing::warn!(reply_to = %message.routing_key, reply_code = returned.reply_code, "Result returned as unroutable; moving it to the dead-letter exchange");
            if !dead_letter_returned(&channel, &message, &context).await {
                // Could not keep the result anywhere: leave the job to be redelivered.
                settlement.disposition = Disposition::Requeue;
            }
        }
        Ok(Confirmation::Nack(_)) | Err(_) => {
            tracing::warn!(reply_to = %message.routing_key, "Result not confirmed by the broker; requeueing its job");
            settlement.disposition = Disposition::Requeue;
        }
    }
    settle(settlement).await;
}

async fn dead_letter_returned(
    channel: &Channel,
    message: &OutgoingMessage,
    context: &PublisherContext,
) -> bool {
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("x-returned-reply-to"),
        AMQPValue::LongString(LongString::from(message.routing_key.as_str())),
    );
    let dead = OutgoingMessage {
        model: message.model.clone(),
        exchange: context.dead_letter_exchange.clone(),
        routing_key: message.routing_key.clone(),
        body: message.body.clone(),
        properties: message.properties.clone().with_headers(headers),
    };
    match publish(channel, &dead).await {
        Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
        Err(_) => false,
    }
}

async fn settle(mut settlement: Settlement) {
    let ok = match settlement.disposition {
        Disposition::Answer | Disposition::DeadLetter => settlement.delivery.ack().await,
        Disposition::Requeue => settlement.delivery.requeue().await,
    };
    let settled = if ok {
        Settled::Done(settlement.disposition)
    } else {
        Settled::ChannelLost
    };
    if let Some(on_done) = settlement.on_done.take() {
        on_done(settled);
    }
}

/// Hands `command` to the publisher. If the publisher is gone (the worker is stopping), the
/// job's settlement ends at once as [`Settled::ChannelLost`]: the broker redelivers the job.
pub fn submit(commands: &mpsc::UnboundedSender<Command>, command: Command) {
    if let Err(unsent) = commands.send(command) {
        let (Command::Publish { settlement, .. } | Command::Settle(settlement)) = unsent.0;
        finish(settlement, Settled::ChannelLost);
    }
}

fn finish(mut settlement: Settlement, settled: Settled) {
    if let Some(on_done) = settlement.on_done.take() {
        on_done(settled);
    }
}

/// Adds `x-error-code` / `x-error` to a copy of `headers`.
pub fn with_error_headers(headers: Option<&FieldTable>, code: &str, error: &str) -> FieldTable {
    let mut headers = headers.cloned().unwrap_or_default();
    headers.insert(
        ShortString::from("x-error-code"),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        ShortString::from("x-error"),
        AMQPValue::LongString(LongString::from(error)),
    );
    headers
}
