//! Echo consumer on lapin (same version and features as infermq).
//!
//! Usage: echo-lapin QUEUE   (AMQP_URL overrides amqp://guest:guest@127.0.0.1:5672/%2f)
//!
//! Declares QUEUE like the infermq worker declares a model's prediction queue (durable quorum
//! queue, x-delivery-limit 5, x-dead-letter-exchange <prefix>.dlx, with that fanout exchange
//! declared too), consumes it with prefetch 256 and manual acks, and for each delivery publishes a
//! fixed small result to its reply_to (default exchange) with its correlation_id on a
//! confirm-mode channel, acking the delivery only once that publish is confirmed. Answers are
//! pipelined: one future per delivery in a FuturesUnordered. Stops on SIGTERM/SIGINT.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::signal::unix::{signal, SignalKind};

const RESULT: &[u8] = br#"{"outputs":[]}"#;
const PREFETCH: u16 = 256;
const DELIVERY_LIMIT: i32 = 5;
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let queue = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: echo-lapin QUEUE"))?;
    let prefix = queue
        .split_once(".predict.")
        .map(|(p, _)| p.to_owned())
        .ok_or_else(|| anyhow::anyhow!("QUEUE must be <prefix>.predict.<model>"))?;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());

    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let consume = connection.create_channel().await?;
    let dlx = format!("{prefix}.dlx");
    consume
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(dlx.as_str())),
    );
    consume
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "echo-lapin".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("consuming {queue}");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut answering = FuturesUnordered::new();
    let mut answered = 0u64;
    let mut failure: Option<lapin::Error> = None;
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some(done) = answering.next(), if !answering.is_empty() => match done {
                Ok(()) => answered += 1,
                Err(error) => { failure = Some(error); break; }
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => answering.push(answer(publish.clone(), delivery)),
                Some(Err(error)) => { failure = Some(error); break; }
                None => break,
            },
        }
    }
    if consume.status().connected() {
        let _ = consume
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
    }
    let drain = async {
        while let Some(done) = answering.next().await {
            if done.is_ok() {
                answered += 1;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, drain).await;
    drop(answering);
    if connection.status().connected() {
        let _ = connection.close(200, "echo done".into()).await;
    }
    eprintln!("echo-lapin: answered {answered}");
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// Publishes the fixed result for one delivery, waits for its confirm, then acks (nack+requeue on
/// a broker nack).
async fn answer(publish: Channel, delivery: Delivery) -> lapin::Result<()> {
    let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
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
            RESULT,
            props,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        delivery
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await?;
    } else {
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
