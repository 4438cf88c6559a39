//! Prediction jobs: from a delivery to chunks in a model version's batcher, and from a batch on
//! an instance thread to each job's answer.
//!
//! Checks run cheapest first — size, headers, deadline, JSON, version, signature — and each
//! failure is answered at once with the contract's code, naming the field. A job that passes is
//! split into chunks of at most `max_batch_size` rows; the batcher never mixes chunks whose
//! non-batch dimensions differ (their shape keys differ).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lapin::message::Delivery;

use super::early::{early_names, message_id};
use super::job::{answer_error, reply_routing_key, Answerer, JobState, OutputPlan, Reply};
use super::models::{ModelRegistry, ServedVersion};
use crate::batching::{split_rows, Item};
use crate::broker::acks::DeliveryRef;
use crate::broker::headers::JobHeaders;
use crate::protocol::{decode_request, validate_request, ErrorCode, InferenceRequest, Tensor};
use crate::runtime::Backend;

/// Non-batch dimensions of every input: jobs batch together only when these are equal.
pub type ShapeKey = Vec<usize>;

/// Part of a job, as the batcher sees it.
pub struct Chunk {
    pub job: Arc<JobState>,
    pub part: usize,
    pub rows: usize,
    /// One tensor per model input, in signature order.
    pub inputs: Vec<Tensor>,
}

/// What a batch needs to know of its model version.
pub struct BatchInfo {
    pub model: Arc<str>,
    pub label: Arc<str>,
    pub metrics: crate::telemetry::ModelMetrics,
}

/// What the consumers of prediction queues share.
pub struct PredictContext {
    pub registry: Arc<ModelRegistry>,
    pub answerer: Arc<Answerer>,
    pub results_queue: String,
    pub max_message_bytes: usize,
}

/// Handles one delivery from `queue` (the prediction queue of `model`).
pub fn handle_delivery(
    ctx: &PredictContext,
    model: &Arc<str>,
    queue: &str,
    delivery: Delivery,
    tracked: DeliveryRef,
    generation: u64,
) {
    let received = Instant::now();
    let Delivery {
        data,
        properties,
        redelivered,
        ..
    } = delivery;
    let routing_key = reply_routing_key(&properties, &ctx.results_queue);
    if redelivered {
        ctx.answerer.metrics.duplicate_delivery(model);
    }
    let mut reply = Reply {
        model: model.clone(),
        routing_key,
        correlation_id: properties.correlation_id().clone(),
        delivery: tracked,
        generation,
        body: Vec::new(),
        properties,
        queue: queue.to_string(),
        delivery_count: 0,
    };
    if super::metadata::is_metadata_request(&reply.properties) {
        return super::metadata::answer_metadata(ctx, reply, model);
    }
    let answerer = &ctx.answerer;
    let message_id = message_id(&reply.properties);
    if data.len() > ctx.max_message_bytes {
        let message = format!(
            "body: {} bytes exceeds broker.max_message_bytes = {}",
            data.len(),
            ctx.max_message_bytes
        );
        // Too large to keep around for dead-lettering either, and answered without being
        // parsed: only `message_id` can name it.
        return answer_error(
            answerer,
            reply,
            model,
            message_id.as_deref(),
            ErrorCode::TooLarge,
            &message,
            None,
        );
    }
    // Refused before the body is decoded (or because it cannot be): named by the body's `id`
    // if the JSON can be read that far, else by `message_id`.
    let refuse = |reply: Reply, header_len: Option<usize>, code: ErrorCode, message: &str| {
        let id = early_names(&data, header_len, message_id.clone()).id;
        answer_error(answerer, reply, model, id.as_deref(), code, message, None)
    };
    let headers = match JobHeaders::read(&reply.properties) {
        Ok(headers) => headers,
        Err(e) => return refuse(reply, None, ErrorCode::InvalidRequest, &e.to_string()),
    };
    reply.delivery_count = headers.delivery_count;
    let header_len = headers.binary_header_len;
    if headers.expired(SystemTime::now()) {
        return refuse(
            reply,
            header_len,
            ErrorCode::DeadlineExceeded,
            "deadline passed before the job was read (x-deadline-ms or expiration)",
        );
    }
    let mut request = match decode_request(&data, header_len) {
        Ok(request) => request,
        Err(e) => return refuse(reply, header_len, e.code(), &e.to_string()),
    };
    if request.id.is_none() {
        request.id = message_id;
    }
    let id = request.id.clone();
    let version = headers
        .model_version
        .as_deref()
        .or(request.model_version.as_deref());
    let served = match ctx.registry.resolve(model, version) {
        Ok(served) => served,
        // Counted under version "": a label never takes a value the producer chose.
        Err((code, message)) => {
            return answer_error(answerer, reply, model, id.as_deref(), code, &message, None)
        }
    };
    if let Err(e) = validate_request(&request, &served.signature) {
        return answer_error(
            answerer,
            reply,
            model,
            id.as_deref(),
            e.code(),
            &e.to_string(),
            Some(&served.metrics),
        );
    }
    reply.body = data;
    submit(&served, answerer, request, reply, headers, received);
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
    answerer: &Arc<Answerer>,
    mut request: InferenceRequest,
    reply: Reply,
    headers: JobHeaders,
    received: Instant,
) {
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
        received,
        served.metrics.clone(),
        answerer.clone(),
        reply,
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
            job.answer_failure(
                ErrorCode::Internal,
                "model version was unloaded before the job ran",
            );
            return;
        }
    }
}

/// Runs chunks as one batch; returns each chunk's outputs, and the assembly and compute times.
fn execute(
    backend: &mut dyn Backend,
    chunks: &[Chunk],
) -> Result<(Vec<Vec<Tensor>>, f64, f64), String> {
    let started = Instant::now();
    if let [chunk] = chunks {
        let outputs = backend.infer(&chunk.inputs).map_err(|e| e.to_string())?;
        return Ok((vec![outputs], 0.0, started.elapsed().as_secs_f64()));
    }
    let inputs: Vec<Tensor> = (0..chunks[0].inputs.len())
        .map(|i| Tensor::concat_rows(&chunks.iter().map(|c| &c.inputs[i]).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let assembled = Instant::now();
    let outputs = backend.infer(&inputs).map_err(|e| e.to_string())?;
    let compute = assembled.elapsed().as_secs_f64();
    let total: usize = chunks.iter().map(|c| c.rows).sum();
    let mut per_chunk: Vec<Vec<Tensor>> = chunks
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in &outputs {
        if output.rows() != total || output.shape.is_empty() {
            return Err(format!(
                "output {} has shape {:?}, expected {total} rows for the batch",
                output.name, output.shape
            ));
        }
        let mut start = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            per_chunk[i].push(output.slice_rows(start, start + chunk.rows));
            start += chunk.rows;
        }
    }
    Ok((
        per_chunk,
        assembled.duration_since(started).as_secs_f64(),
        compute,
    ))
}

/// Runs one batch on an instance thread and hands each job its part of the outputs. A failed
/// batch of several jobs is retried job by job, so one bad job cannot fail the others.
pub fn run_batch(backend: &mut dyn Backend, served: &BatchInfo, items: Vec<Item<ShapeKey, Chunk>>) {
    let start = Instant::now();
    let now = SystemTime::now();
    let mut chunks = Vec::with_capacity(items.len());
    for item in items {
        let job = &item.payload.job;
        if job.is_finished() {
            continue;
        }
        if job.deadline.is_some_and(|d| now >= d) {
            job.answer_failure(
                ErrorCode::DeadlineExceeded,
                "deadline passed while the job waited for a batch (x-deadline-ms or expiration)",
            );
            continue;
        }
        job.started(start);
        chunks.push(item.payload);
    }
    if chunks.is_empty() {
        return;
    }
    let metrics = &served.metrics;
    metrics.inflight_add(1);
    let rows: usize = chunks.iter().map(|c| c.rows).sum();
    match execute(backend, &chunks) {
        Ok((outputs, assembly, compute)) => {
            metrics.batch(rows, assembly, compute);
            metrics.rows(rows as u64);
            for (chunk, outputs) in chunks.iter().zip(outputs) {
                chunk
                    .job
                    .complete_part(chunk.part, outputs, rows, compute * 1e3);
            }
        }
        Err(error) if chunks.len() > 1 => {
            tracing::warn!(model = %served.model, version = %served.label, %error, jobs = chunks.len(), "Batch failed; retrying its jobs one by one");
            for chunk in &chunks {
                match execute(backend, std::slice::from_ref(chunk)) {
                    Ok((mut outputs, _, compute)) => {
                        metrics.batch(chunk.rows, 0.0, compute);
                        metrics.rows(chunk.rows as u64);
                        chunk.job.complete_part(
                            chunk.part,
                            outputs.remove(0),
                            chunk.rows,
                            compute * 1e3,
                        );
                    }
                    Err(error) => chunk.job.answer_failure(ErrorCode::Internal, &error),
                }
            }
        }
        Err(error) => chunks[0].job.answer_failure(ErrorCode::Internal, &error),
    }
    metrics.inflight_add(-1);
}
