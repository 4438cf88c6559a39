//! Training jobs: the training lane, and each job from its delivery to its settlement.
//!
//! The lane is one consumer of `<prefix>.train` with prefetch `training.concurrency`, so
//! training never takes an inference instance. It asks RabbitMQ for `x-consumer-timeout` =
//! `training.consumer_timeout_ms` (honoured from RabbitMQ 3.12; on older brokers raise
//! `consumer_timeout` in rabbitmq.conf), so a long job is not cancelled at the broker's
//! 30-minute default. Its acks are individual: a long job's ack never waits for another's. A
//! lost training channel ends the broker session (the worker reconnects).
//!
//! Each delivery runs as a task: it runs on ONNX Runtime on a blocking thread, sends progress
//! messages to `reply_to`, writes the model as a new version of the repository (atomically),
//! announces it on the models exchange ([`publish`]), and then answers and acks — all through
//! the job's [`InFlight`]. A running job stops between batches when its consumer ends (the
//! worker stops, or its channel or connection was lost): its delivery goes back to the queue
//! (or is redelivered by the broker when the channel is gone), and a reconnect never waits for
//! a training run. A job whose worker dies mid-training was never acked: the broker redelivers
//! it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::answerer::Answerer;
use super::early::early_names;
use super::error::JobError;
use super::inflight::{Delivered, InFlight, Tally};
use super::kind::{Acks, Consume, ConsumerEnd, JobTasks, OnLost};
use crate::broker::authz::authorize;
use crate::broker::envelope::{Envelope, Route};
use crate::broker::Topology;
use crate::protocol::{ErrorCode, ModelName};
use crate::repository::ModelStore;
use crate::runtime::SessionOptions;
use crate::telemetry::Metrics;
use crate::training::{
    admit, parse_job, train_within, Budget, DataLimits, EpochReport, Rules, SessionFactory,
    TrainJob, TrainOutcome, TrainingError,
};

mod publish;

use publish::{event_headers, forward_progress, publish_version};

/// What training jobs need.
pub struct TrainContext {
    pub topology: Topology,
    pub store: ModelStore,
    pub options: SessionOptions,
    pub metrics: Arc<Metrics>,
    pub answerer: Arc<Answerer>,
    pub concurrency: u16,
    pub consumer_timeout_ms: u64,
    pub max_message_bytes: usize,
    /// `training.data_dir` (resolved) and `training.max_data_bytes`.
    pub data_limits: DataLimits,
    /// `training.max_*` and `training.progress_interval_ms`.
    pub budget: Budget,
    /// `training.allowed_models` (glob patterns; empty: any name).
    pub allowed_models: Vec<String>,
    /// `training.allowed_users`: broker users whose training jobs are accepted; empty: anyone.
    pub allowed_users: Vec<String>,
    /// Wakes this worker's repository sync when a version was written.
    pub reload: Arc<Notify>,
}

/// The training kind of job: one consumer, named `training`.
pub struct Training {
    ctx: Arc<TrainContext>,
    wanted: watch::Sender<BTreeSet<String>>,
}

impl Training {
    pub fn new(ctx: TrainContext) -> Training {
        let lane = BTreeSet::from(["training".to_string()]);
        Training {
            ctx: Arc::new(ctx),
            wanted: watch::Sender::new(lane),
        }
    }
}

impl Training {
    /// The training consumer is part of the session: losing it ends the session.
    pub const ON_LOST: OnLost = OnLost::EndSession;

    /// One consumer, `training`.
    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// Says how to consume the training queue (declared with the shared topology, at each
    /// session's start) and opens the channel, in confirm mode, that progress and version
    /// events are published on: the lane of its consumer.
    pub async fn open(&self, connection: &Connection) -> Result<(Consume, Channel), ConsumerEnd> {
        let events = async {
            let events = connection.create_channel().await?;
            events
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(events)
        };
        let events = events
            .await
            .map_err(|e| ConsumerEnd::StartFailed(format!("opening the events channel: {e}")))?;
        let mut arguments = FieldTable::default();
        let timeout = self.ctx.consumer_timeout_ms.min(i64::MAX as u64) as i64;
        arguments.insert(
            ShortString::from("x-consumer-timeout"),
            AMQPValue::LongLongInt(timeout),
        );
        let consume = Consume {
            queue: self.ctx.topology.train_queue(),
            prefetch: self.ctx.concurrency,
            arguments,
            acks: Acks::Individual,
        };
        Ok((consume, events))
    }

    /// Runs one training job as a task of the consumer (told to stop when it ends).
    pub fn handle(
        &self,
        events: &Channel,
        delivered: Delivered,
        redelivered: bool,
        tasks: &JobTasks,
    ) {
        let ctx = self.ctx.clone();
        let events = events.clone();
        tasks.spawn(move |stop| handle_training(ctx, events, delivered, redelivered, stop));
    }
}

struct WorkerSessions(SessionOptions);

impl SessionFactory for WorkerSessions {
    fn session(&self, model: &[u8]) -> Result<ort::session::Session, String> {
        self.0.session(model).map_err(|e| e.to_string())
    }
}

/// A training job that passed every check, ready to run.
struct Admitted {
    job: InFlight,
    parsed: TrainJob,
    rules: Rules,
    /// The version training starts from (`init_from`), read.
    init: Option<Vec<u8>>,
}

/// Runs one training job to its settlement. `events` publishes progress and version events;
/// `stop` ends the run early (its job is then requeued).
pub async fn handle_training(
    ctx: Arc<TrainContext>,
    events: Channel,
    delivered: Delivered,
    redelivered: bool,
    stop: CancellationToken,
) {
    let received = Instant::now();
    let envelope = Envelope::read(&delivered.properties, redelivered, &ctx.topology);
    let Some(admitted) = admit_job(&ctx, delivered, &envelope, received) else {
        return;
    };
    let Admitted {
        mut job,
        parsed,
        rules,
        init,
    } = admitted;
    let id = parsed.id().to_string();
    let model = parsed.model_name().to_string();
    ctx.metrics.training_in_progress(1);
    tracing::info!(job = %id, model = %model, "Training started");
    let (progress_tx, progress_rx) = mpsc::unbounded_channel::<EpochReport>();
    let route = match &envelope.reply.route {
        Route::Queue(queue) => queue.clone(),
        Route::Refused(_) => String::new(),
    };
    let correlation_id = envelope.reply.correlation_id.clone();
    let trace = job.trace_context();
    let forward = forward_progress(
        events.clone(),
        progress_rx,
        route,
        correlation_id,
        id.clone(),
        trace,
    );
    let forward = tokio::spawn(forward);
    let outcome = train(&ctx, parsed, rules, init, progress_tx, stop).await;
    let _ = forward.await;
    ctx.metrics.training_in_progress(-1);
    match outcome {
        Ok(outcome) => match publish_version(&ctx, &events, &model, &id, outcome).await {
            Ok((body, samples)) => {
                job.set_samples(samples);
                job.answer(body, "application/json", event_headers("result"));
            }
            Err(error) => job.fail(error, Some(&id)),
        },
        Err(error) => job.fail(error.into(), Some(&id)),
    }
}

/// Takes the delivery over and checks it, cheapest first — route, user, size, headers, body,
/// admission, the version to start from; the first failure ends the job (`None`).
fn admit_job(
    ctx: &TrainContext,
    delivered: Delivered,
    envelope: &Envelope,
    received: Instant,
) -> Option<Admitted> {
    let mut job = receive(ctx, delivered, envelope, received)?;
    let parsed = match parse_job(job.body()) {
        Ok(parsed) => parsed,
        Err(error) => {
            // Named as far as the JSON can be read; only a valid model name is echoed (the
            // training queue is shared, so only the body names the model).
            let named = early_names(job.body(), None, envelope.message_id.clone());
            if let Some(model) = named.model_name.filter(|m| ModelName::is_valid(m)) {
                job.name_model(&model);
            }
            job.fail(error.into(), named.id.as_deref());
            return None;
        }
    };
    job.name_model(parsed.model_name());
    let store = &ctx.store;
    let limits = &ctx.data_limits;
    let budget = &ctx.budget;
    let admitted = admit(&parsed, store, limits, budget, &ctx.allowed_models)
        .map_err(JobError::from)
        .and_then(|rules| Ok((rules, initial_version(ctx, &parsed)?)));
    match admitted {
        Ok((rules, init)) => Some(Admitted {
            job,
            parsed,
            rules,
            init,
        }),
        Err(error) => {
            job.fail(error, Some(parsed.id()));
            None
        }
    }
}

/// Takes the delivery over, unless its route, its user, its size or its headers refuse it
/// (the job is then ended).
fn receive(
    ctx: &TrainContext,
    delivered: Delivered,
    envelope: &Envelope,
    received: Instant,
) -> Option<InFlight> {
    let message_id = envelope.message_id.as_deref();
    let reply = envelope.reply.clone();
    let count = envelope.delivery_count;
    let tally = Tally::Training { samples: 0 };
    let unnamed = Arc::from("");
    let job = InFlight::new(
        &ctx.answerer,
        delivered,
        reply,
        count,
        unnamed,
        received,
        tally,
    );
    let job = job.routable()?;
    let user_id = envelope.user_id.as_deref();
    let what = "training (training.allowed_users)";
    if let Err(e) = authorize(user_id, &ctx.allowed_users, what) {
        job.fail(JobError::invalid(e.to_string()), message_id);
        return None;
    }
    let job = job.within(ctx.max_message_bytes, message_id)?;
    // Training reads no contract header but a bad one is refused the same way as for
    // prediction: one reader, one rule.
    if let Err(error) = &envelope.headers {
        let named = early_names(job.body(), None, envelope.message_id.clone());
        job.fail(error.clone().into(), named.id.as_deref());
        return None;
    }
    Some(job)
}

/// The version `init_from.model_version` names, read from the repository; `None` without one.
fn initial_version(ctx: &TrainContext, parsed: &TrainJob) -> Result<Option<Vec<u8>>, JobError> {
    let Some(version) = parsed.init_from_version() else {
        return Ok(None);
    };
    let model = parsed.model_name();
    let read =
        (version.trim().parse::<u64>().ok()).and_then(|v| ctx.store.read_version(model, v).ok());
    read.map(Some).ok_or_else(|| {
        let message = format!(
            "init_from.model_version: model {model:?} has no version {} in the repository",
            crate::protocol::text::quoted(version)
        );
        JobError::answer(ErrorCode::UnknownVersion, message)
    })
}

/// Trains on a blocking thread; each epoch's report goes to `progress`.
async fn train(
    ctx: &TrainContext,
    parsed: TrainJob,
    rules: Rules,
    init: Option<Vec<u8>>,
    progress: mpsc::UnboundedSender<EpochReport>,
    stop: CancellationToken,
) -> Result<TrainOutcome, TrainingError> {
    let options = ctx.options.clone();
    tokio::task::spawn_blocking(move || {
        let mut report = |report: &EpochReport| {
            let _ = progress.send(report.clone());
        };
        train_within(
            &parsed,
            &rules,
            init.as_deref(),
            &WorkerSessions(options),
            &mut report,
            &|| stop.is_cancelled(),
        )
    })
    .await
    .unwrap_or_else(|e| {
        Err(TrainingError::Runtime(format!(
            "training thread failed: {e}"
        )))
    })
}
