//! Training jobs from the `train` queue: each runs on ONNX Runtime on a blocking thread, sends
//! one progress message per epoch to `reply_to`, writes the model as a new version of the
//! repository (atomically), announces it on the models exchange, and then answers and acks.
//!
//! Training has its own consumer with prefetch `training.concurrency`, so it never takes an
//! inference instance. The consumer asks RabbitMQ for `x-consumer-timeout` =
//! `training.consumer_timeout_ms` (honoured from RabbitMQ 3.12; on older brokers raise
//! `consumer_timeout` in rabbitmq.conf), so a long job is not cancelled at the broker's 30-minute
//! default. A job whose worker dies mid-training was never acked: the broker redelivers it.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::early::{early_names, message_id};
use super::job::{error_result, reply_routing_key, requeue_or_dead_letter, send, Answerer, Reply};
use crate::broker::acks::{AckTracker, DeliveryRef};
use crate::broker::authz::authorize;
use crate::broker::headers::JobHeaders;
use crate::broker::publisher::Settled;
use crate::broker::{Disposition, OutgoingMessage, Topology};
use crate::protocol::ErrorCode;
use crate::repository::ModelStore;
use crate::runtime::SessionOptions;
use crate::telemetry::{Metrics, Outcome};
use crate::training::{
    parse_job, train_within, DataLimits, EpochReport, SessionFactory, TrainOutcome, TrainingError,
};

/// What training jobs need.
pub struct TrainContext {
    pub topology: Topology,
    pub store: ModelStore,
    pub options: SessionOptions,
    pub metrics: Arc<Metrics>,
    pub answerer: Arc<Answerer>,
    pub results_queue: String,
    pub concurrency: u16,
    pub consumer_timeout_ms: u64,
    pub max_message_bytes: usize,
    /// `training.data_dir` (resolved) and `training.max_data_bytes`.
    pub data_limits: DataLimits,
    /// `training.allowed_users`: broker users whose training jobs are accepted; empty: anyone.
    pub allowed_users: Vec<String>,
    /// Wakes this worker's repository sync when a version was written.
    pub reload: Arc<Notify>,
    /// Shutdown: running trainings stop between batches and their jobs are requeued.
    pub stop: CancellationToken,
}

struct WorkerSessions(SessionOptions);

impl SessionFactory for WorkerSessions {
    fn session(&self, model: &[u8]) -> Result<ort::session::Session, String> {
        self.0.session(model).map_err(|e| e.to_string())
    }
}

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
    let running = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let tracked = acks.delivered(delivery.delivery_tag);
                    running.spawn(handle_training(ctx.clone(), events.clone(), delivery, tracked, generation, queue.clone()));
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
    // Prefetched jobs that did not start go back when the channel closes; running ones finish
    // (or stop at shutdown) and settle through the publisher.
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

async fn handle_training(
    ctx: Arc<TrainContext>,
    events: Channel,
    delivery: Delivery,
    tracked: DeliveryRef,
    generation: u64,
    queue: String,
) {
    let started = Instant::now();
    ctx.answerer.job_started();
    let Delivery {
        data, properties, ..
    } = delivery;
    let routing_key = reply_routing_key(&properties, &ctx.results_queue);
    let delivery_count = JobHeaders::read(&properties)
        .map(|h| h.delivery_count)
        .unwrap_or(0);
    let mut reply = Reply {
        model: Arc::from(""),
        routing_key,
        correlation_id: properties.correlation_id().clone(),
        delivery: tracked,
        generation,
        body: data,
        properties,
        queue,
        delivery_count,
    };
    let message_id = message_id(&reply.properties);
    let user_id = reply.properties.user_id().as_ref().map(|u| u.as_str());
    if let Err(e) = authorize(
        user_id,
        &ctx.allowed_users,
        "training (training.allowed_users)",
    ) {
        let e = Err((ErrorCode::InvalidRequest, e.to_string()));
        return answer(&ctx, reply, message_id.as_deref(), "", e, started);
    }
    if reply.body.len() > ctx.max_message_bytes {
        let message = format!(
            "body: {} bytes exceeds broker.max_message_bytes = {}",
            reply.body.len(),
            ctx.max_message_bytes
        );
        // Not parsed: only `message_id` can name it.
        return answer(
            &ctx,
            reply,
            message_id.as_deref(),
            "",
            Err((ErrorCode::TooLarge, message)),
            started,
        );
    }
    let job = match parse_job(&reply.body) {
        Ok(job) => job,
        Err(error) => {
            // Name the job in its error result as far as its JSON can be read; the training
            // queue is shared, so only the body can name the model.
            let named = early_names(&reply.body, None, message_id);
            let model = named.model_name.unwrap_or_default();
            reply.model = Arc::from(model.as_str());
            return answer(
                &ctx,
                reply,
                named.id.as_deref(),
                &model,
                Err((error.code(), error.to_string())),
                started,
            );
        }
    };
    let id = job.id().to_string();
    let model = job.model_name().to_string();
    reply.model = Arc::from(model.as_str());
    let init = match job.init_from_version() {
        None => None,
        Some(version) => match version
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| ctx.store.read_version(&model, v).ok())
        {
            Some(bytes) => Some(bytes),
            None => {
                let message = format!("init_from.model_version: model {model:?} has no version {version:?} in the repository");
                return answer(
                    &ctx,
                    reply,
                    Some(&id),
                    &model,
                    Err((ErrorCode::UnknownVersion, message)),
                    started,
                );
            }
        },
    };
    ctx.metrics.training_in_progress(1);
    tracing::info!(job = %id, model = %model, "Training started");
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<EpochReport>();
    let forward = {
        let events = events.clone();
        let routing_key = reply.routing_key.clone();
        let correlation_id = reply.correlation_id.clone();
        let id = id.clone();
        let model_name = model.clone();
        tokio::spawn(async move {
            while let Some(report) = progress_rx.recv().await {
                let mut body = serde_json::to_value(&report).unwrap_or_default();
                body["id"] = serde_json::Value::String(id.clone());
                let message = event_message(
                    &model_name,
                    &routing_key,
                    correlation_id.clone(),
                    "progress",
                    serde_json::to_vec(&body).unwrap_or_default(),
                );
                // Progress is informative: published without waiting for its confirm.
                let _ = events
                    .basic_publish(
                        "".into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        message.properties,
                    )
                    .await;
            }
        })
    };
    let stop = ctx.stop.clone();
    let options = ctx.options.clone();
    let limits = ctx.data_limits.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut progress = |report: &EpochReport| {
            let _ = progress_tx.send(report.clone());
        };
        train_within(
            &job,
            &limits,
            init.as_deref(),
            &WorkerSessions(options),
            &mut progress,
            &|| stop.is_cancelled(),
        )
    })
    .await
    .unwrap_or_else(|e| {
        Err(TrainingError::Runtime(format!(
            "training thread failed: {e}"
        )))
    });
    let _ = forward.await;
    ctx.metrics.training_in_progress(-1);

    let result = match outcome {
        Ok(outcome) => publish_version(&ctx, &events, &model, &id, outcome).await,
        Err(TrainingError::Stopped) => {
            // Shutdown, not the job's fault: always back to the queue, never dead-lettered.
            reply.delivery_count = 0;
            Err((ErrorCode::Internal, TrainingError::Stopped.to_string()))
        }
        Err(error) => Err((error.code(), error.to_string())),
    };
    answer(&ctx, reply, Some(&id), &model, result, started);
}

/// Writes the version, announces it, and returns the result body.
async fn publish_version(
    ctx: &TrainContext,
    events: &Channel,
    model: &str,
    id: &str,
    outcome: TrainOutcome,
) -> Result<(Vec<u8>, u64), (ErrorCode, String)> {
    let store = ctx.store.clone();
    let name = model.to_string();
    let bytes = outcome.model.clone();
    let version = tokio::task::spawn_blocking(move || store.write_version(&name, &bytes))
        .await
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?
        .map_err(|e| (ErrorCode::Internal, format!("writing the new version: {e}")))?;
    let event = serde_json::json!({"event": "model_version_ready", "model_name": model, "model_version": version.to_string()});
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let confirmed = async {
        events
            .basic_publish(
                ctx.topology.models_exchange().as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&event).unwrap_or_default(),
                properties,
            )
            .await?
            .await
    }
    .await;
    if let Err(error) = confirmed {
        // The version is on disk; workers' polling finds it even without the event.
        tracing::warn!(%error, model, version, "Announcing the new version failed");
    }
    ctx.reload.notify_one();
    tracing::info!(job = %id, model, version, duration_ms = outcome.duration_ms as u64, "Training finished; version written");
    let body = serde_json::json!({
        "id": id,
        "model_name": model,
        "model_version": version.to_string(),
        "metrics": outcome.metrics,
        "history": outcome.history,
        "duration_ms": outcome.duration_ms,
    });
    Ok((
        serde_json::to_vec(&body).unwrap_or_default(),
        outcome.samples,
    ))
}

fn event_message(
    model: &str,
    routing_key: &str,
    correlation_id: Option<ShortString>,
    event: &str,
    body: Vec<u8>,
) -> OutgoingMessage {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-event"),
        AMQPValue::LongString(LongString::from(event)),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers);
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id);
    }
    OutgoingMessage {
        model: Arc::from(model),
        exchange: String::new(),
        routing_key: routing_key.to_string(),
        body,
        properties,
    }
}

/// Settles a training job: result, error result, or requeue/dead-letter for internal failures.
fn answer(
    ctx: &TrainContext,
    reply: Reply,
    id: Option<&str>,
    model: &str,
    result: Result<(Vec<u8>, u64), (ErrorCode, String)>,
    started: Instant,
) {
    let metrics = ctx.metrics.clone();
    let answerer = ctx.answerer.clone();
    let model_label = model.to_string();
    let done = move |outcome: Outcome, samples: u64, settled: Settled| {
        if matches!(settled, Settled::Done(_)) {
            metrics.training_job(
                &model_label,
                outcome,
                samples,
                started.elapsed().as_secs_f64(),
            );
        }
        answerer.job_done();
    };
    match result {
        Ok((body, samples)) => {
            let message = event_message(
                model,
                &reply.routing_key,
                reply.correlation_id.clone(),
                "result",
                body,
            );
            send(
                &ctx.answerer,
                message,
                reply,
                Disposition::Answer,
                Box::new(move |settled| done(Outcome::Success, samples, settled)),
            );
        }
        Err((ErrorCode::Internal, message)) => {
            tracing::warn!(model, error = %message, "Training job failed");
            requeue_or_dead_letter(
                &ctx.answerer,
                reply,
                &message,
                Box::new(move |outcome, settled| done(outcome, 0, settled)),
            );
        }
        Err((code, message)) => {
            let out = error_result(&reply, id, model, code, &message);
            send(
                &ctx.answerer,
                out,
                reply,
                Disposition::Answer,
                Box::new(move |settled| done(Outcome::Error(code), 0, settled)),
            );
        }
    }
}
