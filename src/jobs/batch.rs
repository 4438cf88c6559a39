//! Running a batch on an instance thread and handing each job its part of the outputs.
//!
//! A failed batch of several jobs is retried job by job, so one bad job cannot fail the others;
//! a job whose deadline passed while it waited is answered `deadline_exceeded` without running.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::assembly::JobState;
use super::error::JobError;
use super::padding::PadPlan;
use crate::batching::{Item, PaddedKey};
use crate::protocol::{ErrorCode, Tensor};
use crate::runtime::Backend;

/// Non-batch dimensions of every input (padded ones written as 0), and the job's lengths in the
/// padded dimensions (none for a model without pad values): jobs batch together only when the
/// first part is equal.
pub type ShapeKey = PaddedKey<Vec<usize>>;

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
    /// Pads the batch's inputs to its longest job and cuts each job's outputs back.
    pub padding: Option<Arc<PadPlan>>,
}

/// Runs chunks as one batch; returns each chunk's outputs, and the assembly and compute times.
fn execute(
    backend: &mut dyn Backend,
    chunks: &[Chunk],
    padding: Option<&PadPlan>,
) -> Result<(Vec<Vec<Tensor>>, f64, f64), String> {
    let started = Instant::now();
    if let [chunk] = chunks {
        let outputs = backend.infer(&chunk.inputs).map_err(|e| e.to_string())?;
        return Ok((vec![outputs], 0.0, started.elapsed().as_secs_f64()));
    }
    if let Some(plan) = padding {
        return execute_padded(backend, chunks, plan, started);
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

/// Runs chunks of different lengths as one batch padded to the longest; cuts each chunk's
/// outputs back to its own lengths.
fn execute_padded(
    backend: &mut dyn Backend,
    chunks: &[Chunk],
    plan: &PadPlan,
    started: Instant,
) -> Result<(Vec<Vec<Tensor>>, f64, f64), String> {
    let jobs: Vec<&[Tensor]> = chunks.iter().map(|c| &c.inputs[..]).collect();
    let (inputs, _) = plan.pad_batch(&jobs).map_err(|e| e.to_string())?;
    let assembled = Instant::now();
    let outputs = backend.infer(&inputs).map_err(|e| e.to_string())?;
    let compute = assembled.elapsed().as_secs_f64();
    let lengths: Vec<Vec<usize>> = (jobs.iter())
        .map(|j| plan.lengths(j))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let shapes: Vec<(usize, &[usize])> = (chunks.iter())
        .zip(&lengths)
        .map(|(c, l)| (c.rows, &l[..]))
        .collect();
    let per_chunk = plan
        .cut_batch(&outputs, &shapes)
        .map_err(|e| e.to_string())?;
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
            job.answer_failure(JobError::answer(
                ErrorCode::DeadlineExceeded,
                "deadline passed while the job waited for a batch (x-deadline-ms or expiration)",
            ));
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
    let busy = Instant::now();
    let rows: usize = chunks.iter().map(|c| c.rows).sum();
    let padding = served.padding.as_deref();
    match execute(backend, &chunks, padding) {
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
                match execute(backend, std::slice::from_ref(chunk), padding) {
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
                    Err(error) => chunk.job.answer_failure(JobError::internal(error)),
                }
            }
        }
        Err(error) => chunks[0].job.answer_failure(JobError::internal(error)),
    }
    metrics.instance_busy(busy.elapsed().as_secs_f64());
    metrics.inflight_add(-1);
}
