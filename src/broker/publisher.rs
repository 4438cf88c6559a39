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
use super::confirm::PublishOutcome;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The prefix of RabbitMQ's direct reply-to routes (`amq.rabbitmq.reply-to.<token>`).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to.";

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
    /// Publish one message of a streamed answer, ahead of the answer that settles its job;
    /// `confirmed` says what the broker did with it (on a connection of `generation`).
    Stream {
        message: OutgoingMessage,
        generation: u64,
        confirmed: tokio::sync::oneshot::Sender<Streamed>,
    },
}

/// What became of one message of a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// In the reply queue.
    Kept,
    /// Returned as unroutable: the reply queue is gone.
    Returned,
    /// Not confirmed (nacked, or the channel or the connection is gone).
    NotKept,
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
    // the order the futures are first polled, which is the order of the commands. The futures
    // borrow the channel and the context: one is made and moved per job, so it is kept small
    // (`per_job_future_stays_small`).
    let mut inflight = FuturesUnordered::new();
    let result = loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break Ok(()) };
                inflight.push(handle(command, &channel, generation, &context));
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
    channel: &Channel,
    generation: u64,
    context: &PublisherContext,
) -> Option<lapin::Error> {
    let (message, settlement) = match command {
        Command::Settle(settlement) => {
            settle(settlement).await;
            return None;
        }
        // Boxed: most commands are answers, and this future is made once per command.
        Command::Stream {
            message,
            generation: from,
            confirmed,
        } => return Box::pin(stream(channel, from == generation, message, confirmed)).await,
        Command::Publish {
            message,
            settlement,
        } => (message, settlement),
    };
    if settlement.generation != generation {
        // From a connection that is gone: the broker redelivers that job.
        finish(settlement, Settled::ChannelLost);
        return None;
    }
    // The message is given up to the publish: a result the broker returns comes back whole
    // in its `basic.return`, which is what a dead-letter copy is made from.
    let model = message.model.clone();
    let confirmation = match publish(channel, message).await {
        Ok(confirm) => confirm.await,
        Err(error) => {
            finish(settlement, Settled::ChannelLost);
            return Some(error);
        }
    };
    let mut settlement = settlement;
    match confirmed(confirmation, &model, context) {
        Confirmed::Kept => {}
        Confirmed::NotKept => settlement.disposition = Disposition::Requeue,
        // Boxed: rare, and inlined it would double the size of every job's future.
        Confirmed::Returned(dead) => {
            // (Boxed in a statement of its own: a temporary lives to the end of its statement,
            // and across an `.await` in it, it would be kept in this future too.)
            let dead_letter = Box::pin(dead_letter_returned(channel, *dead));
            if !dead_letter.await {
                // Could not keep the result anywhere: leave the job to be redelivered.
                settlement.disposition = Disposition::Requeue;
            }
        }
    }
    settle(settlement).await;
    None
}

/// Publishes a piece of a streamed answer (only on the connection it is for) and reports what
/// the broker did with it; returns the error if publishing failed.
async fn stream(
    channel: &Channel,
    current: bool,
    message: OutgoingMessage,
    confirmed: tokio::sync::oneshot::Sender<Streamed>,
) -> Option<lapin::Error> {
    if !current {
        let _ = confirmed.send(Streamed::NotKept);
        return None;
    }
    match publish(channel, message).await {
        Ok(confirm) => {
            let outcome = match PublishOutcome::of(confirm).await {
                PublishOutcome::Confirmed => Streamed::Kept,
                PublishOutcome::Returned(_) => Streamed::Returned,
                _ => Streamed::NotKept,
            };
            let _ = confirmed.send(outcome);
            None
        }
        Err(error) => {
            let _ = confirmed.send(Streamed::NotKept);
            Some(error)
        }
    }
}

async fn publish(channel: &Channel, message: OutgoingMessage) -> lapin::Result<PublisherConfirm> {
    let OutgoingMessage {
        exchange,
        routing_key,
        body,
        properties,
        ..
    } = message;
    // Mandatory, so that an answer to a queue that is gone comes back and is kept; except on
    // RabbitMQ's direct reply-to, which 3.10 returns as unroutable (312 NO_ROUTE) although it
    // delivers it (and which drops what is sent to a consumer that left).
    let options = BasicPublishOptions {
        mandatory: !routing_key.starts_with(DIRECT_REPLY_TO),
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            &body,
            properties,
        )
        .await
}

/// What a publish's confirm means for its job.
enum Confirmed {
    /// In the broker: settle as asked.
    Kept,
    /// Not confirmed: requeue the job.
    NotKept,
    /// Returned as unroutable (its `reply_to` queue is gone): this copy goes to the dead-letter
    /// exchange first.
    Returned(Box<OutgoingMessage>),
}

fn confirmed(
    confirmation: lapin::Result<Confirmation>,
    model: &str,
    context: &PublisherContext,
) -> Confirmed {
    match PublishOutcome::from(confirmation) {
        PublishOutcome::Confirmed => Confirmed::Kept,
        PublishOutcome::Returned(returned) => {
            (context.on_returned)(model);
            let reply_to = returned.delivery.routing_key.as_str();
            tracing::warn!(%reply_to, reply_code = returned.reply_code, "Result returned as unroutable; moving it to the dead-letter exchange");
            let dead = dead_letter_message(returned.delivery, model, context);
            Confirmed::Returned(Box::new(dead))
        }
        PublishOutcome::Nacked(returned) => {
            let reply_to = returned.as_ref().map(|r| r.delivery.routing_key.as_str());
            tracing::warn!(
                reply_to,
                "Result not confirmed by the broker; requeueing its job"
            );
            Confirmed::NotKept
        }
        PublishOutcome::ChannelLost(error) => {
            tracing::warn!(%error, "Result not confirmed by the broker; requeueing its job");
            Confirmed::NotKept
        }
    }
}

/// The dead-letter copy of a result the broker returned: its body and properties as
/// published, its `reply_to` in `x-returned-reply-to`, routed by that name.
fn dead_letter_message(
    returned: lapin::message::Delivery,
    model: &str,
    context: &PublisherContext,
) -> OutgoingMessage {
    let reply_to = returned.routing_key.to_string();
    let mut headers = returned.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("x-returned-reply-to"),
        AMQPValue::LongString(LongString::from(reply_to.as_str())),
    );
    OutgoingMessage {
        model: model.into(),
        exchange: context.dead_letter_exchange.clone(),
        routing_key: reply_to,
        body: returned.data,
        properties: returned.properties.with_headers(headers),
    }
}

async fn dead_letter_returned(channel: &Channel, dead: OutgoingMessage) -> bool {
    match publish(channel, dead).await {
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
        match unsent.0 {
            Command::Publish { settlement, .. } | Command::Settle(settlement) => {
                finish(settlement, Settled::ChannelLost)
            }
            Command::Stream { confirmed, .. } => {
                let _ = confirmed.send(Streamed::NotKept);
            }
        }
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
        ShortString::from(super::headers::ERROR_CODE),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        ShortString::from(super::headers::ERROR),
        AMQPValue::LongString(LongString::from(error)),
    );
    headers
}

#[cfg(test)]
mod tests {
    /// The future made and moved for every job (into the publisher's `FuturesUnordered`) stays
    /// small: with a clone of the channel, an owned context and the rare dead-letter path
    /// inlined it was 6 KB. What is left is mostly lapin's own publish future (1.9 KB).
    #[test]
    fn per_job_future_stays_small() {
        fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(super::handle as fn(_, _, _, _) -> _);
        assert!(size <= 4096, "the per-job publisher future is {size} bytes");
    }
}
