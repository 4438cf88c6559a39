//! The queue path: jobs published straight to the model's queue with publisher confirms,
//! their streamed pieces read from one exclusive reply queue on the same AMQP connection and
//! matched to jobs by `correlation_id`, the pieces' `sequence` checked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Consumer};
use tokio::sync::mpsc;

use infermq::broker::headers::{as_string, find, ERROR, ERROR_CODE};
use infermq::broker::PublishOutcome;
use infermq::client::{broker_urls, connect_broker, JobProperties};
use infermq::config::Settings;

use crate::{wall, Cli, JobSpec, JobState, Outcome};

/// One message from the reply queue, stamped on arrival.
struct Arrival {
    at: Instant,
    correlation_id: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
    data: Vec<u8>,
}

async fn reply_task(mut consumer: Consumer, tx: mpsc::UnboundedSender<Arrival>) {
    while let Some(next) = consumer.next().await {
        let at = Instant::now();
        match next {
            Ok(delivery) => {
                let headers = delivery.properties.headers().as_ref();
                let arrival = Arrival {
                    at,
                    correlation_id: delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned()),
                    error_code: find(headers, ERROR_CODE).and_then(as_string),
                    error: find(headers, ERROR).and_then(as_string),
                    data: delivery.data,
                };
                if tx.send(arrival).is_err() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Reply consumer failed");
                break;
            }
        }
    }
}

type ConfirmFuture = BoxFuture<'static, (usize, PublishOutcome)>;

/// Runs `specs` on `queue`, `--concurrency` at a time.
pub async fn run(
    cli: &Cli,
    settings: &Settings,
    queue: &str,
    specs: &[JobSpec],
    idle: Duration,
) -> anyhow::Result<Outcome> {
    let count = specs.len();
    let concurrency = cli.concurrency.max(1);
    let urls = broker_urls(&cli.url);
    let (connection, _node) = connect_broker(&urls, &settings.broker.tls, "generate-bench")
        .await
        .context("connecting to the broker")?;

    let replies = connection.create_channel().await?;
    let reply_queue = replies
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .as_str()
        .to_owned();
    let consumer = replies
        .basic_consume(
            reply_queue.as_str().into(),
            "generate-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reply_handle = tokio::spawn(reply_task(consumer, tx));
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Correlation ids are unique to this run, so a stray answer of an earlier run is counted
    // as stray, never taken for one of ours.
    let run_tag = format!(
        "gb{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut states: Vec<JobState> = specs
        .iter()
        .map(|s| JobState {
            max_tokens: s.max_tokens,
            ..JobState::default()
        })
        .collect();
    let mut confirms: FuturesUnordered<ConfirmFuture> = FuturesUnordered::new();
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut settled = 0usize;
    let mut stray = 0u64;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut gave_up = false;

    let publish = |index: usize,
                   states: &mut Vec<JobState>,
                   by_id: &mut HashMap<String, usize>|
     -> (String, Vec<u8>, BasicProperties) {
        let id = format!("{run_tag}-{index}");
        let spec = &specs[index];
        let body = serde_json::json!({
            "id": id,
            "text_input": spec.prompt,
            "parameters": {"max_tokens": spec.max_tokens, "temperature": cli.temperature, "stream": true},
        });
        let props = JobProperties::new()
            .reply_to(&reply_queue)
            .correlation_id(&id)
            .build();
        by_id.insert(id.clone(), index);
        states[index].published = Some(Instant::now());
        (id, serde_json::to_vec(&body).expect("a JSON value"), props)
    };

    while settled < count {
        while in_flight < concurrency && next < count {
            let index = next;
            next += 1;
            in_flight += 1;
            let (_id, body, props) = publish(index, &mut states, &mut by_id);
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            match publisher
                .basic_publish("".into(), queue.into(), options, &body, props)
                .await
            {
                Ok(confirm) => confirms.push(Box::pin(async move {
                    (index, PublishOutcome::of(confirm).await)
                })),
                Err(e) => {
                    let state = &mut states[index];
                    state.done = true;
                    state.error = Some(format!("publish: {e}"));
                    in_flight -= 1;
                    settled += 1;
                }
            }
        }
        if settled >= count {
            break;
        }
        let deadline = tokio::time::Instant::from_std(last_progress + idle);
        tokio::select! {
            arrival = rx.recv() => {
                let Some(arrival) = arrival else {
                    bail!("the reply consumer ended (connection lost?)");
                };
                last_progress = Instant::now();
                let index = arrival.correlation_id.as_ref().and_then(|id| by_id.get(id)).copied();
                let Some(index) = index else {
                    stray += 1;
                    continue;
                };
                let state = &mut states[index];
                if state.done {
                    stray += 1;
                    continue;
                }
                if let Some(code) = arrival.error_code {
                    let detail = arrival.error.or_else(|| {
                        serde_json::from_slice::<serde_json::Value>(&arrival.data).ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned))
                    }).unwrap_or_default();
                    state.error = Some(format!("{code}: {detail}"));
                    state.done = true;
                    in_flight -= 1;
                    settled += 1;
                    continue;
                }
                let answer: serde_json::Value = match serde_json::from_slice(&arrival.data) {
                    Ok(v) => v,
                    Err(e) => {
                        state.error = Some(format!("not-json: {e}"));
                        state.done = true;
                        in_flight -= 1;
                        settled += 1;
                        continue;
                    }
                };
                if state.first.is_none() {
                    state.first = Some(arrival.at);
                }
                state.last = Some(arrival.at);
                state.pieces += 1;
                if let Some(seq) = answer["sequence"].as_u64() {
                    if let Some(expected) = state.next_sequence {
                        if seq != expected {
                            state.out_of_order = true;
                        }
                    }
                    state.next_sequence = Some(seq + 1);
                }
                if let Some(reason) = answer["finish_reason"].as_str() {
                    state.finish_reason = Some(reason.to_owned());
                    state.completion_tokens = answer["usage"]["completion_tokens"].as_u64();
                    state.prompt_tokens = answer["usage"]["prompt_tokens"].as_u64();
                    if state.completion_tokens.is_none() {
                        state.error = Some("no-usage: the last piece has no usage.completion_tokens".into());
                    }
                    state.done = true;
                    in_flight -= 1;
                    settled += 1;
                }
            }
            Some((index, outcome)) = confirms.next(), if !confirms.is_empty() => {
                last_progress = Instant::now();
                let failure = match outcome {
                    PublishOutcome::Confirmed => None,
                    PublishOutcome::Returned(_) => Some(format!("unroutable: no queue {queue} (is the worker up?)")),
                    PublishOutcome::Nacked(_) => Some("refused: the broker nacked the job".to_owned()),
                    PublishOutcome::ChannelLost(e) => Some(format!("channel-lost: {e}")),
                };
                if let Some(failure) = failure {
                    let state = &mut states[index];
                    if !state.done {
                        state.error = Some(failure);
                        state.done = true;
                        in_flight -= 1;
                        settled += 1;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                gave_up = true;
                break;
            }
        }
    }
    let wall = wall(&states, started, gave_up);

    drop(rx);
    let _ = publisher.close(200, "generate-bench done".into()).await;
    let _ = replies.close(200, "generate-bench done".into()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reply_handle).await;
    let _ = connection.close(200, "generate-bench done".into()).await;

    Ok(Outcome {
        states,
        wall,
        stray,
        connections: None,
    })
}
