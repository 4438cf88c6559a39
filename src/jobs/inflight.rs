//! The in-flight guard: owns one delivery from receipt until it is settled, exactly once.
//!
//! Every job, prediction or training, is received as an [`InFlight`] and ends through one of
//! its consuming methods: [`InFlight::answer`] (a result, then ack), [`InFlight::fail`] (an
//! error result, a retry, a requeue or a dead-letter, as the error's [`Fate`] says). Each hands
//! the publisher one command whose completion counts the job once, under one rule:
//! `infermq_jobs_total` (or the training counters) by outcome when the broker did what was
//! asked, the pending gauge and the worker's unsettled count always. A guard dropped without
//! being settled (a bug, or a panic on the way) requeues its job and logs it, so no job is
//! ever left unacked on a live channel. A prediction or generation job is also counted under
//! its tenant ([`InFlight::for_tenant`]) with what it used, once, when it is settled.

use std::sync::Arc;
use std::time::Instant;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use tokio::sync::oneshot;

use super::answerer::Answerer;
use super::error::{Fate, JobError};
use crate::broker::acks::DeliveryRef;
use crate::broker::envelope::{Reply, Route};
use crate::broker::headers::{table_size, MAX_HEADERS_BYTES};
use crate::broker::publisher::{submit, with_error_headers, Settled, Streamed};
use crate::broker::{Command, Disposition, OutgoingMessage, Settlement};
use crate::protocol::{encode_error, ErrorCode, TenantTag};
use crate::telemetry::tenants::TenantUsage;
use crate::telemetry::trace::{JobAttributes, JobStages, JobTrace, TraceContext};
use crate::telemetry::{ModelMetrics, Outcome};

/// Where a delivery came from and how to settle it.
pub struct Delivered {
    pub delivery: DeliveryRef,
    /// The connection generation it came on: a stale one is not answered again.
    pub generation: u64,
    /// The queue it was consumed from (the routing key of its dead-letter copy), shared by
    /// every delivery of its consumer.
    pub queue: Arc<str>,
    pub properties: BasicProperties,
    /// The body as received, kept for dead-lettering.
    pub body: Vec<u8>,
}

/// How a job is counted when it settles.
pub enum Tally {
    /// In `infermq_jobs_total`: per model version once resolved ([`InFlight::attach`]), else
    /// under version "" of the queue's model.
    Jobs(Option<ModelMetrics>),
    /// A training job, under its validated model name ("" until validated).
    Training { samples: u64 },
    /// Not a job (a metadata request): settled like one, counted nowhere.
    Untallied,
}

/// What the batch that ran a job tells its trace: the version that ran it and the rows of
/// its batch (the stages' instants are in [`JobStages`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchSeen {
    pub version: u64,
    pub rows: usize,
}

struct Held {
    answerer: Arc<Answerer>,
    trace: JobTrace,
    stages: JobStages,
    batch: Option<BatchSeen>,
    delivered: Delivered,
    /// The metrics label: the queue's model, or a training job's validated name.
    model: Arc<str>,
    route: Route,
    correlation_id: Option<ShortString>,
    delivery_count: u32,
    received: Instant,
    tally: Tally,
    /// Counted per tenant when set ([`InFlight::for_tenant`]), with what the job used.
    tenant: Option<TenantTag>,
    usage: TenantUsage,
}

/// One delivery between receipt and settlement. Settles exactly once: each settling method
/// consumes it, and dropping it unsettled requeues the job.
pub struct InFlight {
    held: Option<Held>,
}

impl InFlight {
    /// Takes `delivered` over: from now on it is settled exactly once, and counted as `tally`
    /// says. `model` labels its metrics and error results (a training job names it later).
    pub fn new(
        answerer: &Arc<Answerer>,
        delivered: Delivered,
        reply: Reply,
        delivery_count: u32,
        model: Arc<str>,
        received: Instant,
        tally: Tally,
    ) -> InFlight {
        answerer.job_started();
        let headers = delivered.properties.headers().as_ref();
        let trace = answerer
            .tracer()
            .start_job(headers, &delivered.queue, received);
        InFlight {
            held: Some(Held {
                answerer: answerer.clone(),
                trace,
                stages: JobStages::default(),
                batch: None,
                delivered,
                model,
                route: reply.route,
                correlation_id: reply.correlation_id,
                delivery_count,
                received,
                tally,
                tenant: None,
                usage: TenantUsage::default(),
            }),
        }
    }

    /// Counts the job under `tenant` (`infermq_tenant_*`) when it is settled.
    pub fn for_tenant(mut self, tenant: TenantTag) -> InFlight {
        if let Some(held) = self.held.as_mut() {
            held.tenant = Some(tenant);
        }
        self
    }

    /// Adds to what the job used, counted under its tenant when it is settled.
    pub fn record_usage(&mut self, usage: TenantUsage) {
        if let Some(held) = self.held.as_mut() {
            held.usage += usage;
        }
    }

    /// A generation job's usage: its tokens, and its time from receipt to now (its last token).
    pub fn generated(mut self, prompt_tokens: usize, completion_tokens: usize) -> InFlight {
        let compute_seconds = self.received().elapsed().as_secs_f64();
        self.record_usage(TenantUsage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: completion_tokens as u64,
            compute_seconds,
            ..TenantUsage::default()
        });
        self
    }

    fn held(&self) -> &Held {
        self.held
            .as_ref()
            .expect("an InFlight is held until it is consumed")
    }

    /// The body as received.
    pub fn body(&self) -> &[u8] {
        &self.held().delivered.body
    }

    /// When the job was received.
    pub fn received(&self) -> Instant {
        self.held().received
    }

    /// Counts the job under its resolved model version from now on (pending until settled).
    pub fn attach(&mut self, metrics: &ModelMetrics) {
        if let Some(held) = self.held.as_mut() {
            metrics.pending_add(1);
            held.tally = Tally::Jobs(Some(metrics.clone()));
        }
    }

    /// Names a training job's model (a validated name) for its metrics and answers.
    pub fn name_model(&mut self, model: &str) {
        if let Some(held) = self.held.as_mut() {
            held.model = Arc::from(model);
        }
    }

    /// Records, for its trace, when the job was taken into a batch, when that batch ran, and
    /// what it was.
    pub fn record_batch(
        &mut self,
        batched: Option<Instant>,
        compute: Option<(Instant, Instant)>,
        batch: BatchSeen,
    ) {
        if let Some(held) = self.held.as_mut() {
            held.stages.batched = batched;
            held.stages.compute_started = compute.map(|c| c.0);
            held.stages.compute_ended = compute.map(|c| c.1);
            held.batch = Some(batch);
        }
    }

    /// The trace context the job's answers carry (for progress messages published apart).
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.held.as_ref()?.trace.outgoing().cloned()
    }

    /// Records how many samples a training job trained on.
    pub fn set_samples(&mut self, n: u64) {
        if let Some(Held {
            tally: Tally::Training { samples },
            ..
        }) = self.held.as_mut()
        {
            *samples = n;
        }
    }

    /// The job, unless its `reply_to` names one of the fleet's own queues: then it is
    /// dead-lettered with the reason at once (nothing is run for it) and `None` is returned.
    pub fn routable(mut self) -> Option<InFlight> {
        if matches!(self.held().route, Route::Queue(_)) {
            return Some(self);
        }
        self.held.take()?.dead_letter_refused();
        None
    }

    /// The job, unless its body is over `max` bytes (`broker.max_message_bytes`): then it is
    /// answered `too_large` without being parsed (only `message_id` can name it) and `None` is
    /// returned.
    pub fn within(self, max: usize, message_id: Option<&str>) -> Option<InFlight> {
        let size = self.body().len();
        if size <= max {
            return Some(self);
        }
        let message = format!("body: {size} bytes exceeds broker.max_message_bytes = {max}");
        self.fail(JobError::answer(ErrorCode::TooLarge, message), message_id);
        None
    }

    /// Publishes the job's result to its route, then acks (`headers` and `content_type` as the
    /// result needs). A refused route dead-letters the job instead.
    pub fn answer(mut self, body: Vec<u8>, content_type: &str, headers: FieldTable) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        let Route::Queue(queue) = &mut held.route else {
            return held.dead_letter_refused();
        };
        // Answered once: the route's queue name goes to the message.
        let queue = std::mem::take(queue);
        let message = held.reply(queue, content_type, headers, body);
        held.settle(Some(message), Disposition::Answer, Outcome::Success);
    }

    /// Publishes one message of a streamed answer to the job's route, ahead of the answer that
    /// settles it; the receiver says what the broker did with it.
    pub fn stream(&self, body: Vec<u8>, headers: FieldTable) -> oneshot::Receiver<Streamed> {
        let (confirmed, receiver) = oneshot::channel();
        let held = self.held();
        let Route::Queue(queue) = &held.route else {
            let _ = confirmed.send(Streamed::NotKept);
            return receiver;
        };
        let message = held.reply(queue.clone(), "application/json", headers, body);
        let command = Command::Stream {
            message,
            generation: held.delivered.generation,
            confirmed,
        };
        submit(held.answerer.commands(), command);
        receiver
    }

    /// Ends the job as `error`'s fate says; `id` names it in an error result.
    pub fn fail(mut self, error: JobError, id: Option<&str>) {
        let Some(held) = self.held.take() else { return };
        match error.fate {
            Fate::Answer => match &held.route {
                Route::Queue(queue) => {
                    let body = encode_error(id, &held.model, error.code, &error.message);
                    let headers = with_error_headers(None, error.code.as_str(), &error.message);
                    let message = held.reply(queue.clone(), "application/json", headers, body);
                    held.settle(
                        Some(message),
                        Disposition::Answer,
                        Outcome::Error(error.code),
                    );
                }
                Route::Refused(_) => held.dead_letter_refused(),
            },
            Fate::Retry if held.delivery_count + 1 >= held.answerer.delivery_limit() => {
                tracing::warn!(model = %held.model, error = %error.message, delivery_count = held.delivery_count, "Job failed on its last allowed delivery; dead-lettering it");
                held.dead_letter(&error);
            }
            Fate::Retry => {
                tracing::warn!(model = %held.model, error = %error.message, delivery_count = held.delivery_count, "Job failed; requeueing it");
                held.settle(None, Disposition::Requeue, Outcome::Requeued);
            }
            Fate::Requeue => held.settle(None, Disposition::Requeue, Outcome::Requeued),
            Fate::DeadLetter => held.dead_letter(&error),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            tracing::error!(model = %held.model, "Job dropped without an answer; requeueing it");
            held.settle(None, Disposition::Requeue, Outcome::Requeued);
        }
    }
}

impl Held {
    fn reply(
        &self,
        queue: String,
        content_type: &str,
        headers: FieldTable,
        body: Vec<u8>,
    ) -> OutgoingMessage {
        let mut headers = headers;
        self.trace.inject(&mut headers);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.into())
            .with_headers(headers);
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(id.clone());
        }
        OutgoingMessage {
            model: self.model.clone(),
            exchange: String::new(),
            routing_key: queue,
            properties,
            body,
        }
    }

    fn dead_letter_refused(self) {
        let reason = match &self.route {
            Route::Refused(reason) => reason.clone(),
            Route::Queue(_) => String::new(),
        };
        self.dead_letter(&JobError::dead_letter(ErrorCode::InvalidRequest, reason));
    }

    /// Publishes the job as received to the dead-letter exchange with `x-error-code` and
    /// `x-error` added, then acks. Headers too large to copy safely are left out (and
    /// `x-headers-dropped` says so), so the copy always fits a frame.
    fn dead_letter(mut self, error: &JobError) {
        let received = &self.delivered.properties;
        let original = received.headers().as_ref();
        let oversized = original.is_some_and(|t| table_size(t).0 > MAX_HEADERS_BYTES);
        let mut headers = with_error_headers(
            original.filter(|_| !oversized),
            error.code.as_str(),
            &error.message,
        );
        if oversized {
            headers.insert("x-headers-dropped".into(), AMQPValue::Boolean(true));
        }
        self.trace.inject(&mut headers);
        let message = OutgoingMessage {
            model: self.model.clone(),
            exchange: self.answerer.dead_letter_exchange().to_string(),
            routing_key: self.delivered.queue.to_string(),
            properties: received.clone().with_headers(headers),
            body: std::mem::take(&mut self.delivered.body),
        };
        self.settle(
            Some(message),
            Disposition::DeadLetter,
            Outcome::DeadLettered,
        );
    }

    /// Hands the publisher `message` (if any) and the delivery's settlement; counts the job
    /// once that is done.
    fn settle(self, message: Option<OutgoingMessage>, disposition: Disposition, outcome: Outcome) {
        let Held {
            answerer,
            delivered,
            model,
            received,
            tally,
            trace,
            mut stages,
            batch,
            correlation_id,
            tenant,
            usage,
            ..
        } = self;
        let published = message.is_some();
        let handed = Instant::now();
        let done = answerer.clone();
        let on_done: Box<dyn FnOnce(Settled) + Send> = Box::new(move |settled| {
            let ok = settled == Settled::Done(disposition);
            let answered = disposition != Disposition::Requeue;
            match &tally {
                Tally::Jobs(Some(metrics)) => {
                    if ok {
                        metrics.job(outcome);
                        if answered {
                            metrics.publish(handed.elapsed().as_secs_f64());
                            metrics.end_to_end(received.elapsed().as_secs_f64());
                        }
                    }
                    metrics.job_left(received.elapsed().as_secs_f64());
                }
                Tally::Jobs(None) if ok => done.metrics().job(&model, "", outcome),
                Tally::Training { samples } if ok => done.metrics().training_job(
                    &model,
                    outcome,
                    *samples,
                    received.elapsed().as_secs_f64(),
                ),
                _ => {}
            }
            if let (true, true, Some(tenant)) = (ok, answered, &tenant) {
                done.metrics().tenants.job(&model, tenant, &usage);
            }
            if ok && disposition != Disposition::Requeue {
                stages.publish_started = published.then_some(handed);
                let attributes = JobAttributes {
                    model: &model,
                    version: batch.map(|b| b.version),
                    job_id: correlation_id.as_ref().map(|c| c.as_str()),
                    batch_rows: batch.map(|b| b.rows),
                    outcome,
                };
                done.tracer()
                    .record_job(trace, &stages, Instant::now(), &attributes);
            }
            done.job_done();
        });
        let settlement = Settlement {
            delivery: delivered.delivery,
            generation: delivered.generation,
            disposition,
            on_done: Some(on_done),
        };
        let command = match message {
            Some(message) => Command::Publish {
                message,
                settlement,
            },
            None => Command::Settle(settlement),
        };
        submit(answerer.commands(), command);
    }
}
