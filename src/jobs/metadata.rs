//! Metadata requests on a model's queue (`x-infermq-request: metadata`, see `docs/PROTOCOL.md`):
//! answered at once from the registry with [`crate::protocol::metadata::model_metadata`], through
//! the same [`InFlight`] settlement as results (published, confirmed, then acked). Not a job: no
//! batch, and not counted in the job metrics.

use std::sync::Arc;
use std::time::Instant;

use lapin::types::FieldTable;
use lapin::BasicProperties;

use super::answerer::Answerer;
use super::inflight::{Delivered, InFlight, Tally};
use crate::broker::envelope::Envelope;
use crate::broker::headers::{as_string, find};
use crate::protocol::metadata::{model_metadata, METADATA_REQUEST, REQUEST_HEADER};
use crate::serving::ModelRegistry;

/// True when the delivery is a metadata request rather than a job.
pub fn is_metadata_request(properties: &BasicProperties) -> bool {
    find(properties.headers().as_ref(), REQUEST_HEADER)
        .and_then(as_string)
        .is_some_and(|v| v == METADATA_REQUEST)
}

/// Answers a metadata request for `model` (the version named by `x-model-version`, or the
/// newest): the KServe metadata, or an `unknown_model`/`unknown_version` error result.
pub fn answer_metadata(
    registry: &ModelRegistry,
    answerer: &Arc<Answerer>,
    delivered: Delivered,
    envelope: &Envelope,
    model: &Arc<str>,
) {
    let reply = envelope.reply.clone();
    let count = envelope.delivery_count;
    let untallied = Tally::Untallied;
    let request = InFlight::new(
        answerer,
        delivered,
        reply,
        count,
        model.clone(),
        Instant::now(),
        untallied,
    );
    let Some(request) = request.routable() else {
        return;
    };
    let version = match &envelope.headers {
        Ok(headers) => headers.model_version.clone(),
        Err(e) => return request.fail(e.clone().into(), None),
    };
    match registry.resolve(model, version.as_deref()) {
        Ok(served) => {
            let versions: Vec<String> = registry
                .versions_of(model)
                .iter()
                .map(u64::to_string)
                .collect();
            let generate = served.generator.as_ref().map(|g| g.describe());
            let body = model_metadata(
                model,
                &versions,
                &served.signature,
                served.limits.max_batch_size,
                generate.as_ref(),
            );
            request.answer(body, "application/json", FieldTable::default());
        }
        Err(e) => request.fail(e.into(), None),
    }
}
