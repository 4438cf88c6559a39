//! One prediction job from delivery to settlement, and every way it can end: a result, an
//! error result, a requeue, or the dead-letter exchange. Whatever happens, [`JobState`] answers
//! exactly once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use tokio::sync::{mpsc, Notify};

use crate::broker::acks::DeliveryRef;
use crate::broker::headers::BINARY_HEADER;
use crate::broker::publisher::{submit, with_error_headers, Settled};
use crate::broker::{Command, Disposition, OutgoingMessage, Settlement};
use crate::protocol::{
    encode_error, encode_response, ErrorCode, InferenceResponse, OutputTensor, ResultParameters,
    Tensor,
};
use crate::telemetry::{Metrics, ModelMetrics, Outcome};

/// Everything the answering side needs, shared by all jobs of a worker.
pub struct Answerer {
    pub commands: mpsc::UnboundedSender<Command>,
    pub metrics: Arc<Metrics>,
    pub dead_letter_exchange: String,
    pub delivery_limit: u32,
    /// Jobs received and not yet settled, for graceful shutdown.
    pub unsettled: AtomicI64,
    pub settled: Notify,
    /// Stopped consumers' channels, closed once every job is settled
    /// ([`super::consumer::close_when_settled`]); a graceful stop waits for them before it
    /// closes the connection.
    pub closing: tokio_util::task::TaskTracker,
}

impl Answerer {
    /// Counts a job as received and not yet settled (for graceful shutdown).
    pub fn job_started(&self) {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a job as settled.
    pub fn job_done(&self) {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Waits until no received job is left unsettled.
    pub async fn wait_settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.unsettled.load(Ordering::Acquire) <= 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Where a job's answers go: its `reply_to`, or the results queue when it has none.
pub fn reply_routing_key(properties: &BasicProperties, results_queue: &str) -> String {
    properties
        .reply_to()
        .as_ref()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(results_queue)
        .to_string()
}

/// Where and how to answer one delivery.
pub struct Reply {
    /// The model this delivery is for (from its queue; "" until a training job is read).
    pub model: Arc<str>,
    pub routing_key: String,
    pub correlation_id: Option<ShortString>,
    pub delivery: DeliveryRef,
    pub generation: u64,
    /// The delivery as received, kept for dead-lettering.
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub queue: String,
    pub delivery_count: u32,
}

impl Reply {
    fn result_properties(&self, content_type: &str, headers: FieldTable) -> BasicProperties {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.into())
            .with_headers(headers);
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(id.clone());
        }
        properties
    }
}

/// Answers a delivery with an error result before it became a job. Counted on `metrics` when
/// the version is known, else under version "" (never a producer-chosen label value).
pub fn answer_error(
    answerer: &Arc<Answerer>,
    reply: Reply,
    model: &str,
    id: Option<&str>,
    code: ErrorCode,
    message: &str,
    metrics: Option<&ModelMetrics>,
) {
    answerer.job_started();
    let message = error_result(&reply, id, model, code, message);
    let outcome = Outcome::Error(code);
    match metrics {
        Some(m) => m.job(outcome),
        None => answerer.metrics.job(model, "", outcome),
    }
    let done = answerer.clone();
    send(
        answerer,
        message,
        reply,
        Disposition::Answer,
        Box::new(move |_| done.job_done()),
    );
}

/// An error result for `reply`, with the `x-error-code` and `x-error` headers.
pub fn error_result(
    reply: &Reply,
    id: Option<&str>,
    model: &str,
    code: ErrorCode,
    message: &str,
) -> OutgoingMessage {
    OutgoingMessage {
        model: reply.model.clone(),
        exchange: String::new(),
        routing_key: reply.routing_key.clone(),
        properties: reply.result_properties(
            "application/json",
            with_error_headers(None, code.as_str(), message),
        ),
        body: encode_error(id, model, code, message),
    }
}

/// An internal failure: requeue the job, or — on what the queue's delivery limit makes its last
/// delivery — publish it to the dead-letter exchange with `x-error-code: internal` and `x-error`
/// added, then ack. `on_done` learns which (`Requeued` or `DeadLettered`) and how it settled.
pub fn requeue_or_dead_letter(
    answerer: &Answerer,
    reply: Reply,
    message: &str,
    on_done: Box<dyn FnOnce(Outcome, Settled) + Send>,
) {
    if reply.delivery_count + 1 >= answerer.delivery_limit {
        let headers = with_error_headers(
            reply.properties.headers().as_ref(),
            ErrorCode::Internal.as_str(),
            message,
        );
        let out = OutgoingMessage {
            model: reply.model.clone(),
            exchange: answerer.dead_letter_exchange.clone(),
            routing_key: reply.queue.clone(),
            properties: reply.properties.clone().with_headers(headers),
            body: reply.body.clone(),
        };
        send(
            answerer,
            out,
            reply,
            Disposition::DeadLetter,
            Box::new(move |settled| on_done(Outcome::DeadLettered, settled)),
        );
        return;
    }
    let settlement = Settlement {
        delivery: reply.delivery,
        generation: reply.generation,
        disposition: Disposition::Requeue,
        on_done: Some(Box::new(move |settled| on_done(Outcome::Requeued, settled))),
    };
    submit(&answerer.commands, Command::Settle(settlement));
}

/// Hands a message and its job's settlement to the publisher; `on_done` runs once settled.
pub fn send(
    answerer: &Answerer,
    message: OutgoingMessage,
    reply: Reply,
    disposition: Disposition,
    on_done: Box<dyn FnOnce(Settled) + Send>,
) {
    let settlement = Settlement {
        delivery: reply.delivery,
        generation: reply.generation,
        disposition,
        on_done: Some(on_done),
    };
    submit(
        &answerer.commands,
        Command::Publish {
            message,
            settlement,
        },
    );
}

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
    answerer: Arc<Answerer>,
    reply: Mutex<Option<Reply>>,
    parts: Mutex<Parts>,
}

impl JobState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Option<String>,
        model: Arc<str>,
        version: Arc<str>,
        plan: OutputPlan,
        deadline: Option<SystemTime>,
        received: Instant,
        metrics: ModelMetrics,
        answerer: Arc<Answerer>,
        reply: Reply,
        chunks: usize,
    ) -> JobState {
        answerer.unsettled.fetch_add(1, Ordering::AcqRel);
        metrics.pending_add(1);
        JobState {
            id,
            model,
            version,
            plan,
            deadline,
            received,
            metrics,
            answerer,
            reply: Mutex::new(Some(reply)),
            parts: Mutex::new(Parts {
                outputs: (0..chunks).map(|_| None).collect(),
                remaining: chunks,
                batch_size: 0,
                compute_ms: 0.0,
                queue_ms: None,
                finished: false,
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
        drop(parts);
        match self.assemble(chunks) {
            Ok(tensors) => self.answer(tensors, parameters),
            Err(message) => self.fail(ErrorCode::Internal, &message),
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
        let Some(reply) = self.take_reply() else {
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
        let message = OutgoingMessage {
            model: self.model.clone(),
            exchange: String::new(),
            routing_key: reply.routing_key.clone(),
            properties: reply.result_properties(encoded.content_type, headers),
            body: encoded.body,
        };
        self.settle(message, reply, Disposition::Answer, Outcome::Success);
    }

    /// Answers with an error result (invalid input found late, deadline), or — for `internal` —
    /// requeues the job, or dead-letters it with the reason when this was its last delivery.
    pub fn answer_failure(&self, code: ErrorCode, message: &str) {
        match self.parts.lock() {
            Ok(mut parts) if !parts.finished => parts.finished = true,
            _ => return,
        }
        self.fail(code, message);
    }

    fn fail(&self, code: ErrorCode, message: &str) {
        let Some(reply) = self.take_reply() else {
            return;
        };
        if code != ErrorCode::Internal {
            let out = error_result(&reply, self.id.as_deref(), &self.model, code, message);
            self.settle(out, reply, Disposition::Answer, Outcome::Error(code));
            return;
        }
        tracing::warn!(model = %self.model, version = %self.version, error = %message, delivery_count = reply.delivery_count, "Job failed");
        let metrics = self.metrics.clone();
        let answerer = self.answerer.clone();
        let handed = Instant::now();
        let received = self.received;
        requeue_or_dead_letter(
            &self.answerer,
            reply,
            message,
            Box::new(move |outcome, settled| {
                if settled == Settled::Done(Disposition::DeadLetter) {
                    metrics.publish(handed.elapsed().as_secs_f64());
                    metrics.end_to_end(received.elapsed().as_secs_f64());
                }
                if matches!(settled, Settled::Done(_)) {
                    metrics.job(outcome);
                }
                metrics.pending_add(-1);
                answerer.job_done();
            }),
        );
    }

    fn take_reply(&self) -> Option<Reply> {
        self.reply.lock().ok()?.take()
    }

    fn settle(
        &self,
        message: OutgoingMessage,
        reply: Reply,
        disposition: Disposition,
        outcome: Outcome,
    ) {
        let metrics = self.metrics.clone();
        let answerer = self.answerer.clone();
        let received = self.received;
        let handed = Instant::now();
        let on_done: Box<dyn FnOnce(Settled) + Send> = Box::new(move |settled| {
            if settled == Settled::Done(disposition) {
                metrics.job(outcome);
                metrics.publish(handed.elapsed().as_secs_f64());
                metrics.end_to_end(received.elapsed().as_secs_f64());
            }
            metrics.pending_add(-1);
            answerer.job_done();
        });
        send(&self.answerer, message, reply, disposition, on_done);
    }
}
