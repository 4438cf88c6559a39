//! A prediction job between acceptance and its answer: the chunks a large job was split into,
//! their outputs as batches finish them, and the result assembled once the last one is in.
//! Whatever happens, the job's [`InFlight`] is settled exactly once.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::error::JobError;
use super::inflight::{InFlight, Stages};
use crate::broker::headers::BINARY_HEADER;
use crate::protocol::{encode_response, InferenceResponse, OutputTensor, ResultParameters, Tensor};
use crate::telemetry::ModelMetrics;
use std::sync::Arc;

/// Which outputs to return, in order, and whether each is binary.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    /// (index in the model's outputs, binary)
    pub outputs: Vec<(usize, bool)>,
}

struct Parts {
    outputs: Vec<Option<Vec<Tensor>>>,
    remaining: usize,
    batch_size: usize,
    compute_ms: f64,
    queue_ms: Option<f64>,
    finished: bool,
    /// For the job's trace: when its first chunk was taken into a batch, and the span of the
    /// runs that computed it.
    batched: Option<Instant>,
    compute: Option<(Instant, Instant)>,
}

/// An accepted job: decoded, validated, routed to a model version.
pub struct JobState {
    pub id: Option<String>,
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub plan: OutputPlan,
    pub deadline: Option<SystemTime>,
    pub received: Instant,
    pub metrics: ModelMetrics,
    inflight: Mutex<Option<InFlight>>,
    parts: Mutex<Parts>,
}

impl JobState {
    /// Takes over `inflight` (already attached to `metrics`) for a job of `chunks` parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Option<String>,
        model: Arc<str>,
        version: Arc<str>,
        plan: OutputPlan,
        deadline: Option<SystemTime>,
        metrics: ModelMetrics,
        inflight: InFlight,
        chunks: usize,
    ) -> JobState {
        JobState {
            id,
            model,
            version,
            plan,
            deadline,
            received: inflight.received(),
            metrics,
            inflight: Mutex::new(Some(inflight)),
            parts: Mutex::new(Parts {
                outputs: (0..chunks).map(|_| None).collect(),
                remaining: chunks,
                batch_size: 0,
                compute_ms: 0.0,
                queue_ms: None,
                finished: false,
                batched: None,
                compute: None,
            }),
        }
    }

    /// True once the job was answered or failed (later chunks are skipped).
    pub fn is_finished(&self) -> bool {
        self.parts.lock().map(|p| p.finished).unwrap_or(true)
    }

    /// Records that a chunk's batch started running now.
    pub fn started(&self, now: Instant) {
        if let Ok(mut parts) = self.parts.lock() {
            if parts.queue_ms.is_none() {
                parts.batched = Some(now);
                let wait = now.duration_since(self.received);
                parts.queue_ms = Some(wait.as_secs_f64() * 1e3);
                self.metrics.queue_wait(wait.as_secs_f64());
            }
        }
    }

    /// Stores the outputs of chunk `part`; answers the job when it was the last one.
    pub fn complete_part(
        &self,
        part: usize,
        outputs: Vec<Tensor>,
        batch_size: usize,
        compute_ms: f64,
    ) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        if parts.finished || part >= parts.outputs.len() || parts.outputs[part].is_some() {
            return;
        }
        parts.outputs[part] = Some(outputs);
        // Called right after the batch ran: it ran for `compute_ms` up to now.
        let ended = Instant::now();
        let began = ended
            .checked_sub(std::time::Duration::from_secs_f64(
                compute_ms.max(0.0) / 1e3,
            ))
            .unwrap_or(ended);
        parts.compute = Some(match parts.compute {
            Some((first, _)) => (first.min(began), ended),
            None => (began, ended),
        });
        parts.remaining -= 1;
        parts.batch_size = parts.batch_size.max(batch_size);
        parts.compute_ms += compute_ms;
        if parts.remaining > 0 {
            return;
        }
        parts.finished = true;
        let chunks: Vec<Vec<Tensor>> = parts
            .outputs
            .iter_mut()
            .map(|p| p.take().unwrap_or_default())
            .collect();
        let parameters = ResultParameters {
            batch_size: parts.batch_size,
            queue_ms: parts.queue_ms.unwrap_or(0.0),
            compute_ms: parts.compute_ms,
        };
        let stages = Stages {
            batched: parts.batched,
            compute_started: parts.compute.map(|c| c.0),
            compute_ended: parts.compute.map(|c| c.1),
            batch_rows: Some(parts.batch_size),
            version: self.version.parse().ok(),
        };
        drop(parts);
        if let Ok(mut inflight) = self.inflight.lock() {
            if let Some(inflight) = inflight.as_mut() {
                inflight.set_stages(stages);
            }
        }
        match self.assemble(chunks) {
            Ok(tensors) => self.answer(tensors, parameters),
            Err(message) => self.fail(JobError::internal(message)),
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
            model_version: &self.version,
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
        match self.parts.lock() {
            Ok(mut parts) if !parts.finished => parts.finished = true,
            _ => return,
        }
        self.fail(error);
    }

    fn fail(&self, error: JobError) {
        if let Some(inflight) = self.take() {
            inflight.fail(error, self.id.as_deref());
        }
    }

    fn take(&self) -> Option<InFlight> {
        self.inflight.lock().ok()?.take()
    }
}
