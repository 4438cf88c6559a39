//! Echo consumer on amqprs (pure tokio: a reader task, a writer task and a dispatcher task per
//! channel, no dedicated IO thread).
//!
//! Usage: echo-amqprs QUEUE   (AMQP_URL is not read: 127.0.0.1:5672, guest/guest, vhost /)
//!
//! Same behaviour as echo-lapin: declares QUEUE like the infermq worker declares a model's
//! prediction queue (durable quorum queue, x-delivery-limit 5, x-dead-letter-exchange
//! <prefix>.dlx, with that fanout exchange declared too), consumes it with prefetch 256 and
//! manual acks, and for each delivery publishes a fixed small result to its reply_to (default
//! exchange) with its correlation_id on a confirm-mode channel, acking the delivery (individually)
//! only once that publish is confirmed.
//!
//! amqprs has no per-publish confirm future: confirms arrive through the channel callback
//! (`publish_ack` / `publish_nack`, possibly `multiple`). So one task publishes each delivery's
//! answer as it arrives (no wait: many publishes in flight), remembers publish sequence number →
//! delivery tag, and acks the deliveries whose publishes the broker confirmed. Stops on
//! SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments,
    BasicPublishArguments, BasicQosArguments, Channel, ConfirmSelectArguments,
    ExchangeDeclareArguments, ExchangeType, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return,
};
use async_trait::async_trait;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

type AmqpResult<T> = Result<T, amqprs::error::Error>;

const RESULT: &[u8] = br#"{"outputs":[]}"#;
const PREFETCH: u16 = 256;
const DELIVERY_LIMIT: i32 = 5;
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A broker confirm: (sequence number, multiple, ack = true / nack = false).
type Confirm = (u64, bool, bool);

/// Forwards the publish channel's confirms to the main task.
struct Confirms(mpsc::UnboundedSender<Confirm>);

#[async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> AmqpResult<()> {
        eprintln!("echo-amqprs: publish channel closed by the broker: {close}");
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send((ack.delivery_tag(), ack.mutiple(), true));
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send((nack.delivery_tag(), nack.multiple(), false));
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// The consume channel's callback: only reports a broker-side close.
struct ConsumeCallback;

#[async_trait]
impl ChannelCallback for ConsumeCallback {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> AmqpResult<()> {
        eprintln!("echo-amqprs: consume channel closed by the broker: {close}");
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let queue = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: echo-amqprs QUEUE"))?;
    let prefix = queue
        .split_once(".predict.")
        .map(|(p, _)| p.to_owned())
        .ok_or_else(|| anyhow::anyhow!("QUEUE must be <prefix>.predict.<model>"))?;

    let connection =
        Connection::open(&OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest"))
            .await?;
    connection.register_callback(DefaultConnectionCallback).await?;

    let consume = connection.open_channel(None).await?;
    consume.register_callback(ConsumeCallback).await?;
    let dlx = format!("{prefix}.dlx");
    consume
        .exchange_declare(
            ExchangeDeclareArguments::of_type(&dlx, ExchangeType::Fanout)
                .durable(true)
                .finish(),
        )
        .await?;
    let mut args = FieldTable::new();
    args.insert("x-queue-type".try_into()?, FieldValue::from("quorum"));
    args.insert("x-delivery-limit".try_into()?, FieldValue::I(DELIVERY_LIMIT));
    args.insert("x-dead-letter-exchange".try_into()?, FieldValue::from(dlx.as_str()));
    consume
        .queue_declare(
            QueueDeclareArguments::durable_client_named(&queue)
                .arguments(args)
                .finish(),
        )
        .await?;
    consume
        .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
        .await?;

    let publish = connection.open_channel(None).await?;
    let (confirm_tx, mut confirms) = mpsc::unbounded_channel();
    publish.register_callback(Confirms(confirm_tx)).await?;
    publish
        .confirm_select(ConfirmSelectArguments::default())
        .await?;

    let (ctag, mut deliveries) = consume
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "echo-amqprs")
                .manual_ack(true)
                .finish(),
        )
        .await?;
    println!("consuming {queue}");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Publish sequence number (1, 2, … on the confirm channel) → delivery tag to settle.
    let mut pending: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seq = 0u64;
    let mut answered = 0u64;
    let mut settled = Vec::new();
    let mut consuming = true;
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        if !consuming && stop_at.is_none() {
            // Stopping: no new deliveries; wait (bounded) for the confirms of answers in flight.
            stop_at = Some(tokio::time::Instant::now() + DRAIN_DEADLINE);
            let _ = consume.basic_cancel(BasicCancelArguments::new(&ctag)).await;
        }
        if !consuming && pending.is_empty() {
            break;
        }
        let deadline = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = sigterm.recv(), if consuming => { consuming = false; }
            _ = sigint.recv(), if consuming => { consuming = false; }
            _ = deadline => break,
            confirm = confirms.recv() => {
                let Some((tag, multiple, ack)) = confirm else { break };
                settled.clear();
                if multiple {
                    let rest = pending.split_off(&(tag + 1));
                    settled.extend(std::mem::replace(&mut pending, rest).into_values());
                } else if let Some(dtag) = pending.remove(&tag) {
                    settled.push(dtag);
                }
                for &dtag in &settled {
                    if ack {
                        consume.basic_ack(BasicAckArguments::new(dtag, false)).await?;
                        answered += 1;
                    } else {
                        consume.basic_nack(BasicNackArguments::new(dtag, false, true)).await?;
                    }
                }
            }
            msg = deliveries.recv(), if consuming => {
                let Some(msg) = msg else {
                    consuming = false;
                    continue;
                };
                let (Some(deliver), Some(props)) = (msg.deliver, msg.basic_properties) else {
                    continue;
                };
                let reply_to = props.reply_to().cloned().unwrap_or_default();
                let mut out = BasicProperties::default();
                out.with_delivery_mode(2).with_content_type("application/json");
                if let Some(id) = props.correlation_id() {
                    out.with_correlation_id(id);
                }
                seq += 1;
                pending.insert(seq, deliver.delivery_tag());
                publish
                    .basic_publish(out, RESULT.to_vec(), BasicPublishArguments::new("", &reply_to))
                    .await?;
            }
        }
    }
    let _ = publish.close().await;
    let _ = consume.close().await;
    let _ = connection.close().await;
    eprintln!("echo-amqprs: answered {answered}");
    Ok(())
}
