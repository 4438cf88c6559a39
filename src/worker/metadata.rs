//! Metadata requests on a model's queue (`x-infermq-request: metadata`, see `docs/PROTOCOL.md`):
//! answered at once from the registry with [`crate::protocol::metadata::model_metadata`], through
//! the same publish-then-ack path as results. Not a job: no batch, no job metrics.

use std::sync::Arc;

use lapin::BasicProperties;

use super::job::{error_result, send, Reply};
use super::predict::PredictContext;
use crate::broker::headers::{as_string, find};
use crate::broker::{Disposition, OutgoingMessage};
use crate::protocol::metadata::{model_metadata, METADATA_REQUEST, REQUEST_HEADER};

/// True when the delivery is a metadata request rather than a job.
pub fn is_metadata_request(properties: &BasicProperties) -> bool {
    find(properties.headers().as_ref(), REQUEST_HEADER)
        .and_then(as_string)
        .is_some_and(|v| v == METADATA_REQUEST)
}

/// Answers a metadata request for `model` (the version named by `x-model-version`, or the
/// newest): the KServe metadata, or an `unknown_model`/`unknown_version` error result.
pub fn answer_metadata(ctx: &PredictContext, reply: Reply, model: &Arc<str>) {
    let version = find(reply.properties.headers().as_ref(), "x-model-version").and_then(as_string);
    let message = match ctx.registry.resolve(model, version.as_deref()) {
        Ok(served) => {
            let versions: Vec<String> = ctx
                .registry
                .versions_of(model)
                .iter()
                .map(u64::to_string)
                .collect();
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if let Some(id) = &reply.correlation_id {
                properties = properties.with_correlation_id(id.clone());
            }
            OutgoingMessage {
                model: model.clone(),
                exchange: String::new(),
                routing_key: reply.routing_key.clone(),
                properties,
                body: model_metadata(model, &versions, &served.signature),
            }
        }
        Err((code, text)) => error_result(&reply, None, model, code, &text),
    };
    let answerer = ctx.answerer.clone();
    // Counted as unsettled (so a graceful stop waits for its ack), never as a job.
    answerer.job_started();
    let done = answerer.clone();
    send(
        &answerer,
        message,
        reply,
        Disposition::Answer,
        Box::new(move |_| done.job_done()),
    );
}
