//! Prediction jobs: from a delivery to chunks in a model version's batcher. The prediction kind
//! of job ([`PredictContext`]) has one consumer per served model, on its model's queue (declared
//! when the consumer starts), with coalesced acks; a lost consumer is restarted on its own.
//!
//! Checks run cheapest first — reply route, size, headers, deadline, JSON, version, signature —
//! and each failure ends the job at once through its [`InFlight`], with the contract's code and a
//! message naming the field. A job that passes is split into chunks of at most
//! `max_batch_size` rows; the batcher never mixes chunks whose non-batch dimensions differ
//! (their shape keys differ), except in the padded dimensions of a model with pad values. A
//! text model's strings are tokenized into its token inputs before the key is taken
//! ([`super::text`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::watch;

use super::answerer::Answerer;
use super::assembly::{JobState, OutputPlan};
use super::cancel::CancelBoard;
use super::early::early_names;
use super::error::JobError;
use super::generate;
use super::inflight::{Delivered, InFlight, Tally};
use super::kind::{Acks, Consume, ConsumerEnd, JobTasks, OnLost};
use crate::batching::{split_rows, Item, LengthsKey};
use crate::broker::authz::authorize;
use crate::broker::envelope::Envelope;
use crate::broker::headers::JobHeaders;
use crate::broker::topology::predict_queue;
use crate::broker::Topology;
use crate::execution::batch::{Chunk, ShapeKey};
use crate::protocol::{decode_request, validate_request, ErrorCode, InferenceRequest, Tensor};
use crate::serving::{ConsumingGuard, ModelRegistry, ServedVersion};
use crate::telemetry::Metrics;

/// The prediction kind of job: what the consumers of prediction queues share, one consumer per
/// served model.
pub struct PredictContext {
    pub registry: Arc<ModelRegistry>,
    pub answerer: Arc<Answerer>,
    pub topology: Topology,
    pub max_message_bytes: usize,
    /// `broker.prefetch`; 0: enough to fill batches (see [`PredictContext::prefetch_for`]).
    pub prefetch: u16,
    /// Where the consumer's job slots (its prefetch) are published for autoscalers.
    pub metrics: Arc<Metrics>,
    /// The generation jobs a cancel message can reach.
    pub cancels: Arc<CancelBoard>,
}

/// One prediction consumer: its model's label, and (once consuming) the guard that counts it
/// for readiness.
pub struct PredictLane {
    label: Arc<str>,
    /// Held, never read: dropping it marks the consumer stopped.
    _consuming: Option<ConsumingGuard>,
}

impl PredictContext {
    /// One consumer per served model; a lost one is started again.
    pub const ON_LOST: OnLost = OnLost::Restart;

    /// The served models, one consumer each.
    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        self.registry.names()
    }

    /// Declares `model`'s queue on `channel` and says how to consume it.
    pub async fn open(
        &self,
        channel: &Channel,
        model: &str,
    ) -> Result<(Consume, PredictLane), ConsumerEnd> {
        if let Err(error) = self.topology.declare_model(channel, model).await {
            return Err(ConsumerEnd::DeclareRefused(error.to_string()));
        }
        self.registry.set_unavailable(model, None);
        let prefetch = self.prefetch_for(model);
        self.metrics.load.set_job_slots(model, prefetch);
        // A generation job runs for seconds, and finishes in no particular order.
        let generates = self
            .registry
            .resolve(model, None)
            .is_ok_and(|v| v.generator.is_some());
        let consume = Consume {
            queue: predict_queue(&self.topology.prefix, model),
            prefetch,
            arguments: FieldTable::default(),
            acks: if generates {
                Acks::Individual
            } else {
                Acks::Coalesced
            },
        };
        let lane = PredictLane {
            label: Arc::from(model),
            _consuming: None,
        };
        Ok((consume, lane))
    }

    /// The broker confirmed the consumer: the model counts as consumed for readiness.
    pub fn consuming(&self, lane: &mut PredictLane) {
        lane._consuming = Some(self.registry.consuming(&lane.label));
    }

    /// Takes one delivery of the lane's model over (it settles once its batch ran, or, a
    /// generation job, from a task of `tasks`).
    pub fn handle(
        &self,
        lane: &PredictLane,
        delivered: Delivered,
        redelivered: bool,
        tasks: &JobTasks,
    ) {
        handle_delivery(self, &lane.label, delivered, redelivered, tasks);
    }

    /// `broker.prefetch`, or enough to fill batches: 2 × max_batch_size × instances, at least 64;
    /// for a padded model, that many per length bucket (a batch holds one bucket only). A
    /// decoder's: its rows and waiting jobs (`[generate]`), whatever `broker.prefetch` says, so
    /// that no job waits unacked in the worker longer than the jobs before it take (RabbitMQ's
    /// `consumer_timeout` counts from the delivery).
    fn prefetch_for(&self, model: &str) -> u16 {
        let served = self.registry.resolve(model, None);
        if let Some(generator) = served.as_ref().ok().and_then(|v| v.generator.as_ref()) {
            let b = generator.spec.budgets;
            return (b.max_active_rows + b.max_waiting_jobs).clamp(1, u16::MAX as usize) as u16;
        }
        if self.prefetch > 0 {
            return self.prefetch;
        }
        let wanted = served
            .map(|v| {
                let buckets = match v.pad_plan {
                    Some(_) => v.limits.padding.length_buckets.len() + 1,
                    None => 1,
                };
                2 * v.limits.max_batch_size.max(1) * v.instances.max(1) * buckets
            })
            .unwrap_or(64);
        wanted.clamp(64, u16::MAX as usize) as u16
    }
}

/// Handles one delivery of `model`'s queue: accepts it into a batcher, or ends it.
pub fn handle_delivery(
    ctx: &PredictContext,
    model: &Arc<str>,
    delivered: Delivered,
    redelivered: bool,
    tasks: &JobTasks,
) {
    let received = Instant::now();
    if redelivered {
        ctx.answerer.metrics().duplicate_delivery(model);
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
    let Envelope {
        reply,
        message_id,
        user_id,
        delivery_count,
        headers,
        tenant,
        ..
    } = envelope;
    let answerer = &ctx.answerer;
    let tally = Tally::Jobs(None);
    let job = InFlight::new(
        answerer,
        delivered,
        reply,
        delivery_count,
        model.clone(),
        received,
        tally,
    )
    .for_tenant(tenant);
    let Some(job) = job
        .routable()
        .and_then(|job| job.within(ctx.max_message_bytes, message_id.as_deref()))
    else {
        return;
    };
    match headers {
        Ok(headers) => accept(
            ctx,
            model,
            job,
            headers,
            message_id,
            user_id.as_deref(),
            tasks,
        ),
        Err(e) => refuse(job, None, message_id, e.into()),
    }
}

/// Ends a job refused before its body is decoded (or because it cannot be): named by the body's
/// `id` if the JSON can be read that far, else by `message_id`.
fn refuse(job: InFlight, header_len: Option<usize>, message_id: Option<String>, error: JobError) {
    let id = early_names(job.body(), header_len, message_id).id;
    job.fail(error, id.as_deref())
}

/// Checks a job whose headers were read — deadline, body, version, user, signature — and
/// submits it to its version's batcher, or ends it at the first failure. A decoder version's
/// jobs are generation jobs ([`super::generate`]).
fn accept(
    ctx: &PredictContext,
    model: &Arc<str>,
    mut job: InFlight,
    headers: JobHeaders,
    message_id: Option<String>,
    user_id: Option<&str>,
    tasks: &JobTasks,
) {
    let header_len = headers.binary_header_len;
    if headers.expired(SystemTime::now()) {
        let error = JobError::answer(
            ErrorCode::DeadlineExceeded,
            "deadline passed before the job was read (x-deadline-ms or expiration)",
        );
        return refuse(job, header_len, message_id, error);
    }
    let generates = |v: &Arc<ServedVersion>| v.generator.is_some();
    let first = ctx
        .registry
        .resolve(model, headers.model_version.as_deref());
    let resolved = match first {
        Ok(served) if generates(&served) => {
            let generator = served.generator.clone().expect("a decoder has its engine");
            job.attach(&served.metrics);
            let allowed = authorize(user_id, &served.allowed_users, "this model (allowed_users)");
            if let Err(e) = allowed {
                return refuse(job, None, message_id, JobError::invalid(e.to_string()));
            }
            return generate::accept(
                served,
                generator,
                &ctx.cancels,
                job,
                headers,
                message_id,
                tasks,
            );
        }
        // A decoder's job naming a version it does not serve: its body is a generation body,
        // which the prediction checks below would misread.
        Err(e)
            if ctx
                .registry
                .resolve(model, None)
                .is_ok_and(|v| generates(&v)) =>
        {
            return refuse(job, None, message_id, e.into());
        }
        other => other,
    };
    let mut request = match decode_request(job.body(), header_len) {
        Ok(request) => request,
        Err(e) => return refuse(job, header_len, message_id, e.into()),
    };
    if request.id.is_none() {
        request.id = message_id;
    }
    let version = headers
        .model_version
        .as_deref()
        .or(request.model_version.as_deref());
    // The version resolved above, unless the body names another one.
    let again = headers.model_version.is_none() && request.model_version.is_some();
    let resolved = if again {
        ctx.registry.resolve(model, version)
    } else {
        resolved
    };
    let served = match resolved {
        Ok(served) => served,
        // Counted under version "": a label never takes a value the producer chose.
        Err(e) => return job.fail(e.into(), request.id.as_deref()),
    };
    job.attach(&served.metrics);
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

/// A job's inputs in the model's signature order (validation guarantees each is present exactly
/// once); a text model's text tokenized into its token inputs.
fn model_inputs(served: &ServedVersion, mut sent: Vec<Tensor>) -> Result<Vec<Tensor>, JobError> {
    if let Some(text) = &served.text {
        return Ok(text.model_inputs(sent)?);
    }
    let mut inputs = Vec::with_capacity(served.signature.inputs.len());
    for spec in &served.signature.inputs {
        if let Some(i) = sent.iter().position(|t| t.name == spec.name) {
            inputs.push(sent.swap_remove(i));
        }
    }
    Ok(inputs)
}

/// The job's batching key: its inputs' non-batch dimensions, and with padding its lengths in
/// the padded dimensions (refused when two inputs disagree on one).
fn shape_key(served: &ServedVersion, inputs: &[Tensor]) -> Result<ShapeKey, JobError> {
    if let Some(plan) = &served.pad_plan {
        return Ok(LengthsKey {
            exact: plan.exact_key(inputs),
            lengths: plan.lengths(inputs)?,
        });
    }
    let mut exact = Vec::new();
    for t in inputs.iter().filter(|_| served.limits.max_batch_size > 0) {
        exact.extend_from_slice(&t.shape[1..]);
        exact.push(usize::MAX);
    }
    Ok(LengthsKey {
        exact,
        lengths: Vec::new(),
    })
}

fn submit(
    served: &Arc<ServedVersion>,
    job: InFlight,
    mut request: InferenceRequest,
    headers: JobHeaders,
) {
    let received = job.received();
    let plan = plan_outputs(served, &request);
    let mut inputs = match model_inputs(served, std::mem::take(&mut request.inputs)) {
        Ok(inputs) => inputs,
        Err(e) => return job.fail(e, request.id.as_deref()),
    };
    let max = served.limits.max_batch_size;
    let (rows, key) = match shape_key(served, &inputs) {
        Ok(key) if max == 0 => (1, key),
        Ok(key) => (inputs.first().map(Tensor::rows).unwrap_or(1), key),
        Err(e) => return job.fail(e, request.id.as_deref()),
    };
    // An unbatched model counts each job as one row: one chunk, whatever its shape.
    let ranges = split_rows(rows, max);
    let job = Arc::new(JobState::new(
        served,
        request.id.take(),
        plan,
        headers.deadline,
        job,
        ranges.iter().map(|range| range.len()).collect(),
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
        if !served.send(item) {
            job.answer_failure(JobError::internal(
                "model version was unloaded before the job ran",
            ));
            return;
        }
    }
}
