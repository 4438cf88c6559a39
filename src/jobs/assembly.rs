//! A prediction job between acceptance and its answer: the chunks a large job was split into,
//! their outputs as batches finish them, and the result assembled once the last one is in.
//! Whatever happens, the job's [`InFlight`] is settled exactly once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::error::JobError;
use super::inflight::{BatchSeen, InFlight};
use crate::broker::headers::BINARY_HEADER;
use crate::execution::batch::{BatchFailure, BatchJob};
use crate::protocol::{
    encode_response, ErrorCode, InferenceResponse, OutputTensor, ResultParameters, Tensor,
};
use crate::serving::ServedVersion;
use crate::telemetry::tenants::TenantUsage;
use crate::telemetry::ModelMetrics;

/// Which outputs to return, in order, and whether each is binary.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    /// (index in the model's outputs, binary)
    pub outputs: Vec<(usize, bool)>,
}

/// What the batches have done with the job's chunks so far.
struct Progress {
    outputs: Vec<Option<Vec<Tensor>>>,
    remaining: usize,
    /// Rows of the largest batch that ran one of its chunks.
    batch_rows: usize,
    /// When its first chunk was taken into a batch.
    batched: Option<Instant>,
    /// From the start of the first run that computed a chunk to the end of the last.
    compute: Option<(Instant, Instant)>,
    /// The runs' time, summed over chunks.
    compute_time: Duration,
    /// The job's share of those runs: each run's time times the chunk's rows over the run's.
    compute_share: f64,
    finished: bool,
}

/// An accepted job: decoded, validated, routed to a model version.
pub struct JobState {
    pub id: Option<String>,
    pub model: Arc<str>,
    /// The version that runs it, and its label in answers and metrics.
    pub version: u64,
    pub label: Arc<str>,
    pub plan: OutputPlan,
    pub deadline: Option<SystemTime>,
    pub received: Instant,
    pub metrics: ModelMetrics,
    /// Rows of each chunk, in order.
    part_rows: Vec<usize>,
    inflight: Mutex<Option<InFlight>>,
    progress: Mutex<Progress>,
}

impl JobState {
    /// Takes over `inflight` (already attached to `served`'s metrics) for a job `id` run by
    /// `served` in chunks of `part_rows` rows.
    pub fn new(
        served: &ServedVersion,
        id: Option<String>,
        plan: OutputPlan,
        deadline: Option<SystemTime>,
        inflight: InFlight,
        part_rows: Vec<usize>,
    ) -> JobState {
        let chunks = part_rows.len();
        JobState {
            id,
            model: served.model.clone(),
            version: served.version,
            label: served.label.clone(),
            plan,
            deadline,
            received: inflight.received(),
            metrics: served.metrics.clone(),
            part_rows,
            inflight: Mutex::new(Some(inflight)),
            progress: Mutex::new(Progress {
                outputs: (0..chunks).map(|_| None).collect(),
                remaining: chunks,
                batch_rows: 0,
                batched: None,
                compute: None,
                compute_time: Duration::ZERO,
                compute_share: 0.0,
                finished: false,
            }),
        }
    }

    fn assemble(&self, mut chunks: Vec<Vec<Tensor>>) -> Result<Vec<OutputTensor>, String> {
        let plan = &self.plan.outputs;
        let mut selected = Vec::with_capacity(plan.len());
        for (position, &(index, binary)) in plan.iter().enumerate() {
            let missing = || format!("output #{index} missing from the model's results");
            let tensor = if let [only] = chunks.as_mut_slice() {
                // Move the output out of the results; copy only one asked for twice.
                let again = plan[position + 1..].iter().any(|&(i, _)| i == index);
                let t = only.get_mut(index).ok_or_else(missing)?;
                if again {
                    t.clone()
                } else {
                    std::mem::replace(t, Tensor::from_f32("", vec![0], &[]))
                }
            } else {
                let pieces: Option<Vec<&Tensor>> = chunks.iter().map(|c| c.get(index)).collect();
                Tensor::concat_rows(&pieces.ok_or_else(missing)?).map_err(|e| e.to_string())?
            };
            selected.push(OutputTensor { tensor, binary });
        }
        Ok(selected)
    }

    fn answer(&self, outputs: Vec<OutputTensor>, parameters: ResultParameters) {
        let Some(inflight) = self.take() else {
            return;
        };
        let encoded = encode_response(&InferenceResponse {
            id: self.id.as_deref(),
            model_name: &self.model,
            model_version: &self.label,
            outputs,
            parameters,
        });
        let mut headers = FieldTable::default();
        if let Some(len) = encoded.header_len {
            headers.insert(
                ShortString::from(BINARY_HEADER),
                AMQPValue::LongLongInt(len as i64),
            );
        }
        inflight.answer(encoded.body, encoded.content_type, headers);
    }

    /// Ends the job with `error` (invalid input found late, a deadline, an internal failure),
    /// unless it already ended; later chunks are then skipped.
    pub fn answer_failure(&self, error: JobError) {
        match self.progress.lock() {
            Ok(mut progress) if !progress.finished => progress.finished = true,
            _ => return,
        }
        self.end(error);
    }

    /// Fails the job with `error` (its progress already says it finished).
    fn end(&self, error: JobError) {
        if let Some(inflight) = self.take() {
            inflight.fail(error, self.id.as_deref());
        }
    }

    fn take(&self) -> Option<InFlight> {
        self.inflight.lock().ok()?.take()
    }
}

impl BatchJob for JobState {
    fn deadline(&self) -> Option<SystemTime> {
        self.deadline
    }

    fn is_finished(&self) -> bool {
        self.progress.lock().map(|p| p.finished).unwrap_or(true)
    }

    fn started(&self, now: Instant) {
        if let Ok(mut progress) = self.progress.lock() {
            if progress.batched.is_none() {
                progress.batched = Some(now);
                self.metrics
                    .queue_wait(now.duration_since(self.received).as_secs_f64());
            }
        }
    }

    /// Stores the outputs of chunk `part`; answers the job when it was the last one.
    fn complete_part(
        &self,
        part: usize,
        outputs: Vec<Tensor>,
        batch_rows: usize,
        compute: (Instant, Instant),
    ) {
        let Ok(mut progress) = self.progress.lock() else {
            return;
        };
        let known = progress.outputs.get(part).is_some_and(Option::is_none);
        if progress.finished || !known {
            return;
        }
        progress.outputs[part] = Some(outputs);
        progress.compute = Some(match progress.compute {
            Some((first, _)) => (first.min(compute.0), compute.1),
            None => compute,
        });
        let ran = compute.1.duration_since(compute.0);
        progress.compute_time += ran;
        let rows = self.part_rows.get(part).copied().unwrap_or(0);
        progress.compute_share += ran.as_secs_f64() * rows as f64 / batch_rows.max(1) as f64;
        progress.batch_rows = progress.batch_rows.max(batch_rows);
        progress.remaining -= 1;
        if progress.remaining > 0 {
            return;
        }
        progress.finished = true;
        let chunks: Vec<Vec<Tensor>> = progress
            .outputs
            .iter_mut()
            .map(|p| p.take().unwrap_or_default())
            .collect();
        let queue_wait = progress.batched.map(|b| b.duration_since(self.received));
        let parameters = ResultParameters {
            batch_size: progress.batch_rows,
            queue_ms: queue_wait.unwrap_or_default().as_secs_f64() * 1e3,
            compute_ms: progress.compute_time.as_secs_f64() * 1e3,
        };
        let seen = BatchSeen {
            version: self.version,
            rows: progress.batch_rows,
        };
        if let Ok(mut inflight) = self.inflight.lock() {
            if let Some(inflight) = inflight.as_mut() {
                inflight.record_batch(progress.batched, progress.compute, seen);
                inflight.record_usage(TenantUsage {
                    rows: self.part_rows.iter().sum::<usize>() as u64,
                    compute_seconds: progress.compute_share,
                    ..TenantUsage::default()
                });
            }
        }
        drop(progress);
        match self.assemble(chunks) {
            Ok(tensors) => self.answer(tensors, parameters),
            Err(message) => self.end(JobError::internal(message)),
        }
    }

    fn fail(&self, failure: BatchFailure) {
        self.answer_failure(match failure {
            BatchFailure::DeadlineExceeded => JobError::answer(
                ErrorCode::DeadlineExceeded,
                "deadline passed while the job waited for a batch (x-deadline-ms or expiration)",
            ),
            BatchFailure::Internal(message) => JobError::internal(message),
        });
    }
}
