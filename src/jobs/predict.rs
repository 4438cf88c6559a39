//! Prediction jobs: from a delivery to chunks in a model version's batcher.
//!
//! Checks run cheapest first — reply route, size, headers, deadline, JSON, version, signature —
//! and each failure ends the job at once through its [`InFlight`], with the contract's code and a
//! message naming the field. A job that passes is split into chunks of at most
//! `max_batch_size` rows; the batcher never mixes chunks whose non-batch dimensions differ
//! (their shape keys differ).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::assembly::{JobState, OutputPlan};
use super::batch::Chunk;
use super::early::early_names;
use super::error::JobError;
use super::inflight::{Answerer, Delivered, InFlight};
use super::registry::{ModelRegistry, ServedVersion};
use crate::batching::{split_rows, Item};
use crate::broker::authz::authorize;
use crate::broker::envelope::Envelope;
use crate::broker::headers::JobHeaders;
use crate::broker::Topology;
use crate::protocol::{decode_request, validate_request, ErrorCode, InferenceRequest, Tensor};

/// What the consumers of prediction queues share.
pub struct PredictContext {
    pub registry: Arc<ModelRegistry>,
    pub answerer: Arc<Answerer>,
    pub topology: Topology,
    pub max_message_bytes: usize,
}

/// Handles one delivery of `model`'s queue: accepts it into a batcher, or ends it.
pub fn handle_delivery(
    ctx: &PredictContext,
    model: &Arc<str>,
    delivered: Delivered,
    redelivered: bool,
) {
    let received = Instant::now();
    if redelivered {
        ctx.answerer.metrics.duplicate_delivery(model);
    }
    let envelope = Envelope::read(&delivered.properties, redelivered, &ctx.topology);
    if super::metadata::is_metadata_request(&delivered.properties) {
        return super::metadata::answer_metadata(
            &ctx.registry,
            &ctx.answerer,
            delivered,
            &envelope,
            model,
        );
    }
    let message_id = envelope.message_id.clone();
    let reply = envelope.reply;
    let count = envelope.delivery_count;
    let job = InFlight::predict(
        &ctx.answerer,
        delivered,
        reply,
        count,
        model.clone(),
        received,
    );
    let Some(mut job) = job
        .routable()
        .and_then(|job| job.within(ctx.max_message_bytes, message_id.as_deref()))
    else {
        return;
    };
    // Refused before the body is decoded (or because it cannot be): named by the body's `id`
    // if the JSON can be read that far, else by `message_id`.
    let refuse = |job: InFlight, header_len: Option<usize>, error: JobError| {
        let id = early_names(job.body(), header_len, message_id.clone()).id;
        job.fail(error, id.as_deref())
    };
    let headers = match envelope.headers {
        Ok(headers) => headers,
        Err(e) => return refuse(job, None, e.into()),
    };
    let header_len = headers.binary_header_len;
    if headers.expired(SystemTime::now()) {
        let error = JobError::answer(
            ErrorCode::DeadlineExceeded,
            "deadline passed before the job was read (x-deadline-ms or expiration)",
        );
        return refuse(job, header_len, error);
    }
    let mut request = match decode_request(job.body(), header_len) {
        Ok(request) => request,
        Err(e) => return refuse(job, header_len, e.into()),
    };
    if request.id.is_none() {
        request.id = message_id;
    }
    let version = headers
        .model_version
        .as_deref()
        .or(request.model_version.as_deref());
    let served = match ctx.registry.resolve(model, version) {
        Ok(served) => served,
        // Counted under version "": a label never takes a value the producer chose.
        Err(e) => return job.fail(e, request.id.as_deref()),
    };
    job.attach(&served.metrics);
    let user_id = envelope.user_id.as_deref();
    if let Err(e) = authorize(user_id, &served.allowed_users, "this model (allowed_users)") {
        return job.fail(JobError::invalid(e.to_string()), request.id.as_deref());
    }
    if let Err(e) = validate_request(&request, &served.signature) {
        return job.fail(e.into(), request.id.as_deref());
    }
    submit(&served, job, request, headers);
}

fn plan_outputs(served: &ServedVersion, request: &InferenceRequest) -> OutputPlan {
    let outputs = &served.signature.outputs;
    let outputs = match &request.outputs {
        Some(wanted) => wanted
            .iter()
            .filter_map(|w| outputs.iter().position(|o| o.name == w.name))
            .map(|i| (i, request.wants_binary(&outputs[i].name)))
            .collect(),
        None => (0..outputs.len())
            .map(|i| (i, request.wants_binary(&outputs[i].name)))
            .collect(),
    };
    OutputPlan { outputs }
}

fn submit(
    served: &Arc<ServedVersion>,
    job: InFlight,
    mut request: InferenceRequest,
    headers: JobHeaders,
) {
    let received = job.received();
    let plan = plan_outputs(served, &request);
    // Inputs in signature order (validation guarantees each is present exactly once).
    let mut inputs = Vec::with_capacity(served.signature.inputs.len());
    for spec in &served.signature.inputs {
        if let Some(i) = request.inputs.iter().position(|t| t.name == spec.name) {
            inputs.push(request.inputs.swap_remove(i));
        }
    }
    let max = served.limits.max_batch_size;
    let (rows, key) = if max == 0 {
        (1, Vec::new())
    } else {
        let rows = inputs.first().map(Tensor::rows).unwrap_or(1);
        let mut key = Vec::new();
        for t in &inputs {
            key.extend_from_slice(&t.shape[1..]);
            key.push(usize::MAX);
        }
        (rows, key)
    };
    // An unbatched model counts each job as one row: one chunk, whatever its shape.
    let ranges = split_rows(rows, max);
    let job = Arc::new(JobState::new(
        request.id.take(),
        served.model.clone(),
        served.label.clone(),
        plan,
        headers.deadline,
        served.metrics.clone(),
        job,
        ranges.len(),
    ));
    let single = ranges.len() == 1;
    for (part, range) in ranges.into_iter().enumerate() {
        let chunk_inputs = if single {
            std::mem::take(&mut inputs)
        } else {
            inputs
                .iter()
                .map(|t| t.slice_rows(range.start, range.end))
                .collect()
        };
        let item = Item {
            key: key.clone(),
            rows: if max == 0 { 1 } else { range.len() },
            arrived: received,
            payload: Chunk {
                job: job.clone(),
                part,
                rows: range.len(),
                inputs: chunk_inputs,
            },
        };
        if served.send(item).is_err() {
            job.answer_failure(JobError::internal(
                "model version was unloaded before the job ran",
            ));
            return;
        }
    }
}
