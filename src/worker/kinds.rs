//! The kinds of job this worker consumes, registered in one place: each is made here from the
//! settings and the worker's shared parts, and from then on its consumers are started,
//! supervised and stopped by the one consumer loop (`consumer.rs`, `supervisor.rs`).
//!
//! Adding a kind: its module under `jobs/` (a [`crate::jobs::kind::JobKind`]), one entry
//! here, and its part of `docs/PROTOCOL.md` (see "Adding a job kind" in the README).

use std::sync::Arc;

use super::consumer::Kind;
use super::Parts;
use crate::config::Settings;
use crate::jobs::predict::PredictContext;
use crate::jobs::train::{TrainContext, Training};
use crate::repository::ModelStore;

/// The kinds of job consumed with `settings`: prediction (metadata requests included) always,
/// training when `training.enabled`.
pub(super) fn register(settings: &Settings, parts: &Parts) -> Vec<Arc<dyn Kind>> {
    let mut kinds: Vec<Arc<dyn Kind>> = vec![Arc::new(prediction(settings, parts))];
    if settings.training.enabled {
        kinds.push(Arc::new(Training::new(training(settings, parts))));
    }
    kinds
}

fn prediction(settings: &Settings, parts: &Parts) -> PredictContext {
    PredictContext {
        registry: parts.registry.clone(),
        answerer: parts.answerer.clone(),
        topology: parts.topology.clone(),
        max_message_bytes: settings.broker.max_message_bytes,
        prefetch: settings.broker.prefetch,
        metrics: parts.metrics.clone(),
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
