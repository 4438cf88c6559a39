//! Training jobs: each runs on ONNX Runtime on a blocking thread, sends progress messages to
//! `reply_to`, writes the model as a new version of the repository (atomically), announces it
//! on the models exchange, and then answers and acks — all through the job's [`InFlight`].
//!
//! A running job stops between batches when its session's `stop` token is cancelled (the
//! worker stops, or its broker connection was lost): its delivery goes back to the queue (or is
//! redelivered by the broker when the channel is gone), and the consumer never waits for it to
//! run to the end.

use std::sync::Arc;
use std::time::Instant;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::early::early_names;
use super::error::JobError;
use super::inflight::{Answerer, Delivered, InFlight};
use crate::broker::authz::authorize;
use crate::broker::envelope::{Envelope, Route};
use crate::broker::Topology;
use crate::protocol::{ErrorCode, ModelName};
use crate::repository::ModelStore;
use crate::runtime::SessionOptions;
use crate::telemetry::trace::TraceContext;
use crate::telemetry::Metrics;
use crate::training::{
    admit, parse_job, train_within, Budget, DataLimits, EpochReport, SessionFactory, TrainOutcome,
    TrainingError,
};

/// What training jobs need.
pub struct TrainContext {
    pub topology: Topology,
    pub store: ModelStore,
    pub options: SessionOptions,
    pub metrics: Arc<Metrics>,
    pub answerer: Arc<Answerer>,
    pub concurrency: u16,
    pub consumer_timeout_ms: u64,
    pub max_message_bytes: usize,
    /// `training.data_dir` (resolved) and `training.max_data_bytes`.
    pub data_limits: DataLimits,
    /// `training.max_*` and `training.progress_interval_ms`.
    pub budget: Budget,
    /// `training.allowed_models` (glob patterns; empty: any name).
    pub allowed_models: Vec<String>,
    /// `training.allowed_users`: broker users whose training jobs are accepted; empty: anyone.
    pub allowed_users: Vec<String>,
    /// Wakes this worker's repository sync when a version was written.
    pub reload: Arc<Notify>,
}

struct WorkerSessions(SessionOptions);

impl SessionFactory for WorkerSessions {
    fn session(&self, model: &[u8]) -> Result<ort::session::Session, String> {
        self.0.session(model).map_err(|e| e.to_string())
    }
}

/// Runs one training job to its settlement. `events` publishes progress and version events;
/// `stop` ends the run early (its job is then requeued).
pub async fn handle_training(
    ctx: Arc<TrainContext>,
    events: Channel,
    delivered: Delivered,
    redelivered: bool,
    stop: CancellationToken,
) {
    let received = Instant::now();
    let envelope = Envelope::read(&delivered.properties, redelivered, &ctx.topology);
    let message_id = envelope.message_id.clone();
    let (reply, count) = (envelope.reply.clone(), envelope.delivery_count);
    let job = InFlight::train(&ctx.answerer, delivered, reply, count, received);
    let Some(job) = job.routable() else {
        return;
    };
    let user_id = envelope.user_id.as_deref();
    let what = "training (training.allowed_users)";
    if let Err(e) = authorize(user_id, &ctx.allowed_users, what) {
        return job.fail(JobError::invalid(e.to_string()), message_id.as_deref());
    }
    let Some(mut job) = job.within(ctx.max_message_bytes, message_id.as_deref()) else {
        return;
    };
    // Training reads no contract header but a bad one is refused the same way as for
    // prediction: one reader, one rule.
    if let Err(error) = envelope.headers {
        let named = early_names(job.body(), None, message_id);
        return job.fail(error.into(), named.id.as_deref());
    }
    let parsed = match parse_job(job.body()) {
        Ok(parsed) => parsed,
        Err(error) => {
            // Named as far as the JSON can be read; only a valid model name is echoed (the
            // training queue is shared, so only the body names the model).
            let named = early_names(job.body(), None, message_id);
            if let Some(model) = named.model_name.filter(|m| ModelName::is_valid(m)) {
                job.name_model(&model);
            }
            return job.fail(error.into(), named.id.as_deref());
        }
    };
    let id = parsed.id().to_string();
    let model = parsed.model_name().to_string();
    job.name_model(&model);
    let rules = match admit(
        &parsed,
        &ctx.store,
        &ctx.data_limits,
        &ctx.budget,
        &ctx.allowed_models,
    ) {
        Ok(rules) => rules,
        Err(e) => return job.fail(e.into(), Some(&id)),
    };
    let init = match parsed.init_from_version() {
        None => None,
        Some(version) => match version
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| ctx.store.read_version(&model, v).ok())
        {
            Some(bytes) => Some(bytes),
            None => {
                let message = format!(
                    "init_from.model_version: model {model:?} has no version {} in the repository",
                    crate::protocol::text::quoted(version)
                );
                let error = JobError::answer(ErrorCode::UnknownVersion, message);
                return job.fail(error, Some(&id));
            }
        },
    };
    ctx.metrics.training_in_progress(1);
    tracing::info!(job = %id, model = %model, "Training started");
    let (progress_tx, progress_rx) = mpsc::unbounded_channel::<EpochReport>();
    let route = match &envelope.reply.route {
        Route::Queue(queue) => queue.clone(),
        Route::Refused(_) => String::new(),
    };
    let forward = tokio::spawn(forward_progress(
        events.clone(),
        progress_rx,
        route,
        envelope.reply.correlation_id.clone(),
        id.clone(),
        job.trace_context(),
    ));
    let options = ctx.options.clone();
    let should_stop = stop.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut progress = |report: &EpochReport| {
            let _ = progress_tx.send(report.clone());
        };
        train_within(
            &parsed,
            &rules,
            init.as_deref(),
            &WorkerSessions(options),
            &mut progress,
            &|| should_stop.is_cancelled(),
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
    match outcome {
        Ok(outcome) => match publish_version(&ctx, &events, &model, &id, outcome).await {
            Ok((body, samples)) => {
                job.set_samples(samples);
                job.answer(body, "application/json", event_headers("result"));
            }
            Err(error) => job.fail(error, Some(&id)),
        },
        Err(error) => job.fail(error.into(), Some(&id)),
    }
}

/// Publishes each progress report to the job's route (informative: no confirm awaited).
async fn forward_progress(
    events: Channel,
    mut reports: mpsc::UnboundedReceiver<EpochReport>,
    routing_key: String,
    correlation_id: Option<ShortString>,
    id: String,
    trace: Option<TraceContext>,
) {
    while let Some(report) = reports.recv().await {
        if routing_key.is_empty() {
            continue;
        }
        let mut body = serde_json::to_value(&report).unwrap_or_default();
        body["id"] = serde_json::Value::String(id.clone());
        let mut headers = event_headers("progress");
        if let Some(trace) = &trace {
            trace.inject(&mut headers);
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(c) = &correlation_id {
            properties = properties.with_correlation_id(c.clone());
        }
        let _ = events
            .basic_publish(
                "".into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body).unwrap_or_default(),
                properties,
            )
            .await;
    }
}

/// Writes the version, announces it, and returns the result body and the samples trained on.
async fn publish_version(
    ctx: &TrainContext,
    events: &Channel,
    model: &str,
    id: &str,
    outcome: TrainOutcome,
) -> Result<(Vec<u8>, u64), JobError> {
    let store = ctx.store.clone();
    let name = model.to_string();
    let bytes = outcome.model.clone();
    let version = tokio::task::spawn_blocking(move || store.write_version(&name, &bytes))
        .await
        .map_err(|e| JobError::internal(e.to_string()))?
        .map_err(|e| JobError::internal(format!("writing the new version: {e}")))?;
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

fn event_headers(event: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-event"),
        AMQPValue::LongString(LongString::from(event)),
    );
    headers
}
