//! The kinds of job this worker consumes, as one enum matched in one place (mini-redis's
//! `Command`): each variant's module under `jobs/` says how its consumers open, which queue
//! they read, and what becomes of a delivery; the consumer loop (`consumer.rs`) and the
//! supervisor (`supervisor.rs`) start, supervise and stop the consumers of every kind alike.
//!
//! Adding a kind: its module under `jobs/`, a variant here (and of [`Lane`]) with its arm in
//! each match, its queue in `broker::topology`, and its part of `docs/PROTOCOL.md` (see
//! "Adding a job kind" in the README).

use std::collections::BTreeSet;
use std::sync::Arc;

use lapin::{Channel, Connection};
use tokio::sync::watch;

use super::Parts;
use crate::config::Settings;
use crate::jobs::cancel::{CancelBoard, CancelContext};
use crate::jobs::inflight::Delivered;
use crate::jobs::kind::{Consume, ConsumerEnd, JobTasks, OnLost};
use crate::jobs::predict::{PredictContext, PredictLane};
use crate::jobs::train::{TrainContext, Training};
use crate::repository::ModelStore;

/// A kind of job, with what its consumers share.
#[derive(Clone)]
pub enum JobKind {
    /// Prediction jobs and metadata requests: one consumer per served model.
    Predict(Arc<PredictContext>),
    /// Training jobs: one consumer, `training`.
    Train(Arc<Training>),
    /// Cancel messages for generation jobs: one consumer, `cancel`, on this worker's queue of
    /// the cancel exchange.
    Cancel(Arc<CancelContext>),
}

/// One running consumer of a kind: its kind, and what the consumer holds (dropped when it
/// ends). Made by [`JobKind::open`], so a lane always matches its kind.
pub enum Lane {
    /// Its model's label, and the guard that counts it for readiness.
    Predict(Arc<PredictContext>, PredictLane),
    /// The channel, in confirm mode, that training progress and version events go out on.
    Train(Arc<Training>, Channel),
    Cancel(Arc<CancelContext>),
}

impl JobKind {
    /// Its name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Predict(_) => "prediction",
            JobKind::Train(_) => "training",
            JobKind::Cancel(_) => "cancel",
        }
    }

    /// What a consumer's end on its own does.
    pub fn on_lost(&self) -> OnLost {
        match self {
            JobKind::Predict(_) => PredictContext::ON_LOST,
            JobKind::Train(_) => Training::ON_LOST,
            JobKind::Cancel(_) => CancelContext::ON_LOST,
        }
    }

    /// The names of the consumers this kind wants now; each change is acted on at once.
    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        match self {
            JobKind::Predict(predict) => predict.wanted(),
            JobKind::Train(train) => train.wanted(),
            JobKind::Cancel(cancel) => cancel.wanted(),
        }
    }

    /// Prepares consumer `name` on its new `channel` and says how to consume;
    /// `connection` is for channels of its own.
    pub async fn open(
        &self,
        connection: &Connection,
        channel: &Channel,
        name: &str,
    ) -> Result<(Consume, Lane), ConsumerEnd> {
        match self {
            JobKind::Predict(predict) => {
                let (consume, lane) = predict.open(channel, name).await?;
                Ok((consume, Lane::Predict(predict.clone(), lane)))
            }
            JobKind::Train(train) => {
                let (consume, events) = train.open(connection).await?;
                Ok((consume, Lane::Train(train.clone(), events)))
            }
            JobKind::Cancel(cancel) => {
                let consume = cancel.open(channel).await?;
                Ok((consume, Lane::Cancel(cancel.clone())))
            }
        }
    }
}

impl Lane {
    /// Called once the broker has confirmed the consumer (`consume-ok`).
    pub fn consuming(&mut self) {
        if let Lane::Predict(predict, lane) = self {
            predict.consuming(lane);
        }
    }

    /// Takes one delivery over. It ends in its `InFlight`'s settlement: at once, later (a
    /// batch), or in a task spawned on `tasks`, which is told to stop when the consumer ends and
    /// is waited for before its channel closes.
    pub fn handle(&self, delivered: Delivered, redelivered: bool, tasks: &JobTasks) {
        match self {
            Lane::Predict(predict, lane) => predict.handle(lane, delivered, redelivered, tasks),
            Lane::Train(train, events) => train.handle(events, delivered, redelivered, tasks),
            Lane::Cancel(cancel) => cancel.handle(delivered),
        }
    }
}

/// The kinds of job consumed with `settings`: prediction (generation and metadata requests
/// included) and cancel messages always, training when `training.enabled`.
pub(super) fn register(settings: &Settings, parts: &Parts) -> Vec<JobKind> {
    let cancels = Arc::new(CancelBoard::default());
    let cancel = CancelContext::new(
        cancels.clone(),
        parts.topology.clone(),
        parts.answerer.clone(),
    );
    let mut kinds = vec![
        JobKind::Predict(Arc::new(prediction(settings, parts, cancels))),
        JobKind::Cancel(Arc::new(cancel)),
    ];
    if settings.training.enabled {
        let training = Training::new(training(settings, parts));
        kinds.push(JobKind::Train(Arc::new(training)));
    }
    kinds
}

fn prediction(settings: &Settings, parts: &Parts, cancels: Arc<CancelBoard>) -> PredictContext {
    PredictContext {
        registry: parts.registry.clone(),
        answerer: parts.answerer.clone(),
        topology: parts.topology.clone(),
        max_message_bytes: settings.broker.max_message_bytes,
        prefetch: settings.broker.prefetch,
        metrics: parts.metrics.clone(),
        cancels,
    }
}

fn training(settings: &Settings, parts: &Parts) -> TrainContext {
    let training = &settings.training;
    TrainContext {
        topology: parts.topology.clone(),
        store: ModelStore::new(&settings.repository.path, vec![]),
        options: parts.sync.options.clone(),
        metrics: parts.metrics.clone(),
        answerer: parts.answerer.clone(),
        concurrency: training.concurrency.min(u16::MAX as usize) as u16,
        consumer_timeout_ms: training.consumer_timeout_ms,
        max_message_bytes: settings.broker.max_message_bytes,
        data_limits: parts.data_limits.clone(),
        budget: training.into(),
        allowed_models: training.allowed_models.clone(),
        allowed_users: training.allowed_users.clone(),
        reload: parts.reload.clone(),
    }
}
