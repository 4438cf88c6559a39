//! Running a batch on an instance thread and handing each job its part of the outputs.
//!
//! A failed batch of several jobs is retried job by job, so one bad job cannot fail the others;
//! a job whose deadline passed while it waited is answered `deadline_exceeded` without running.
//! A padded batch is padded to its longest job with the lengths each job's batch key holds
//! (measured once, when the job was accepted), and each job's outputs are cut back to them.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::padding::PadPlan;
use crate::batching::{Item, LengthsKey};
use crate::protocol::Tensor;
use crate::runtime::Backend;

/// Non-batch dimensions of every input (padded ones written as 0), and the job's lengths in the
/// padded dimensions (none for a model without pad values): jobs batch together only when the
/// first part is equal.
pub type ShapeKey = LengthsKey<Vec<usize>>;

/// A job as a batch sees it; `jobs` implements it for the jobs it accepted.
pub trait BatchJob: Send + Sync {
    /// When the job must be answered by (`x-deadline-ms` or the message's expiration).
    fn deadline(&self) -> Option<SystemTime>;
    /// True once the job was answered or failed: its chunks still queued are skipped.
    fn is_finished(&self) -> bool;
    /// One of its chunks was taken into a batch that starts at `now`.
    fn started(&self, now: Instant);
    /// The outputs of chunk `part`, from a batch of `batch_rows` rows whose run on the backend
    /// took from `compute.0` to `compute.1`.
    fn complete_part(
        &self,
        part: usize,
        outputs: Vec<Tensor>,
        batch_rows: usize,
        compute: (Instant, Instant),
    );
    /// Ends the job with `failure`, unless it already ended.
    fn fail(&self, failure: BatchFailure);
}

/// Why a batch could not answer a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchFailure {
    /// Its deadline passed while it waited (answered `deadline_exceeded`).
    DeadlineExceeded,
    /// The batch failed (answered `internal`, retried up to the delivery limit).
    Internal(String),
}

/// Part of a job, as the batcher sees it.
pub struct Chunk {
    pub job: Arc<dyn BatchJob>,
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
    pub pad_plan: Option<Arc<PadPlan>>,
}

/// A batch run: each chunk's outputs, when its inputs were assembled, and its run's span.
struct Ran {
    outputs: Vec<Vec<Tensor>>,
    assembled: Instant,
    compute: (Instant, Instant),
}

/// Runs `chunks` (with each one's lengths in the padded dimensions) as one batch.
fn execute(
    backend: &mut dyn Backend,
    chunks: &[(Chunk, Vec<usize>)],
    padding: Option<&PadPlan>,
) -> Result<Ran, String> {
    if let [(chunk, _)] = chunks {
        let started = Instant::now();
        let outputs = backend.infer(&chunk.inputs).map_err(|e| e.to_string())?;
        return Ok(Ran {
            outputs: vec![outputs],
            assembled: started,
            compute: (started, Instant::now()),
        });
    }
    if let Some(plan) = padding {
        return execute_padded(backend, chunks, plan);
    }
    let inputs: Vec<Tensor> = (0..chunks[0].0.inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = chunks.iter().map(|(c, _)| &c.inputs[i]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let assembled = Instant::now();
    let outputs = backend.infer(&inputs).map_err(|e| e.to_string())?;
    let ended = Instant::now();
    let total: usize = chunks.iter().map(|(c, _)| c.rows).sum();
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
        for (i, (chunk, _)) in chunks.iter().enumerate() {
            per_chunk[i].push(output.slice_rows(start, start + chunk.rows));
            start += chunk.rows;
        }
    }
    Ok(Ran {
        outputs: per_chunk,
        assembled,
        compute: (assembled, ended),
    })
}

/// Runs chunks of different lengths as one batch padded to the longest; cuts each chunk's
/// outputs back to its own lengths.
fn execute_padded(
    backend: &mut dyn Backend,
    chunks: &[(Chunk, Vec<usize>)],
    plan: &PadPlan,
) -> Result<Ran, String> {
    let jobs: Vec<&[Tensor]> = chunks.iter().map(|(c, _)| &c.inputs[..]).collect();
    let lengths: Vec<&[usize]> = chunks.iter().map(|(_, l)| &l[..]).collect();
    let inputs = plan.pad_batch(&jobs, &lengths).map_err(|e| e.to_string())?;
    let assembled = Instant::now();
    let outputs = backend.infer(&inputs).map_err(|e| e.to_string())?;
    let ended = Instant::now();
    let shapes: Vec<(usize, &[usize])> = chunks.iter().map(|(c, l)| (c.rows, &l[..])).collect();
    let per_chunk = plan
        .cut_batch(&outputs, &shapes)
        .map_err(|e| e.to_string())?;
    Ok(Ran {
        outputs: per_chunk,
        assembled,
        compute: (assembled, ended),
    })
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
        if job.deadline().is_some_and(|d| now >= d) {
            job.fail(BatchFailure::DeadlineExceeded);
            continue;
        }
        job.started(start);
        chunks.push((item.payload, item.key.lengths));
    }
    if chunks.is_empty() {
        return;
    }
    let metrics = &served.metrics;
    metrics.inflight_add(1);
    let busy = Instant::now();
    let rows: usize = chunks.iter().map(|(c, _)| c.rows).sum();
    let padding = served.pad_plan.as_deref();
    match execute(backend, &chunks, padding) {
        Ok(ran) => {
            let assembly = ran.assembled.duration_since(start).as_secs_f64();
            let compute = ran.compute.1.duration_since(ran.compute.0).as_secs_f64();
            metrics.batch(rows, assembly, compute);
            metrics.rows(rows as u64);
            for ((chunk, _), outputs) in chunks.iter().zip(ran.outputs) {
                chunk
                    .job
                    .complete_part(chunk.part, outputs, rows, ran.compute);
            }
        }
        Err(error) if chunks.len() > 1 => {
            tracing::warn!(model = %served.model, version = %served.label, %error, jobs = chunks.len(), "Batch failed; retrying its jobs one by one");
            for one in &chunks {
                let (chunk, _) = one;
                match execute(backend, std::slice::from_ref(one), padding) {
                    Ok(mut ran) => {
                        let compute = ran.compute.1.duration_since(ran.compute.0);
                        metrics.batch(chunk.rows, 0.0, compute.as_secs_f64());
                        metrics.rows(chunk.rows as u64);
                        let outputs = ran.outputs.remove(0);
                        chunk
                            .job
                            .complete_part(chunk.part, outputs, chunk.rows, ran.compute);
                    }
                    Err(error) => chunk.job.fail(BatchFailure::Internal(error)),
                }
            }
        }
        Err(error) => chunks[0].0.job.fail(BatchFailure::Internal(error)),
    }
    metrics.instance_busy(busy.elapsed().as_secs_f64());
    metrics.inflight_add(-1);
}
