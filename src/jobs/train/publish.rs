//! How a training job's events leave the worker: progress messages to `reply_to` (informative,
//! no confirm awaited) and the `model_version_ready` announcement of a new version on the models
//! exchange, once the version is written to the repository.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;

use super::TrainContext;
use crate::jobs::error::JobError;
use crate::telemetry::trace::TraceContext;
use crate::training::{EpochReport, TrainOutcome};

/// Publishes each progress report to the job's route (informative: no confirm awaited).
pub(super) async fn forward_progress(
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
pub(super) async fn publish_version(
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

pub(super) fn event_headers(event: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-event"),
        AMQPValue::LongString(LongString::from(event)),
    );
    headers
}
