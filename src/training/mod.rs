//! Training: turns a job from `infermq.train` into a new model version.
//!
//! The flow: [`parse_job`] (JSON → [`TrainJob`]) → [`data`] (inline rows, CSV or `.npy` files)
//! → [`graph`] (ONNX graphs built here in Rust: inference, evaluation, and a training step whose
//! gradients come from [`autodiff`] and whose update comes from [`optimizer`]) → [`train`] (the
//! minibatch loop on ONNX Runtime, through a [`SessionFactory`] so the worker's execution
//! providers apply) → [`TrainOutcome::model`], a plain ONNX inference model.
//!
//! No other ML framework is involved and nothing runs Python.

pub mod autodiff;
mod csv;
pub mod data;
pub mod engine;
mod files;
pub mod graph;
mod inline;
pub mod job;
pub mod metrics;
pub mod npy;
pub mod optimizer;
pub mod rng;
pub mod spec;
mod state;

#[cfg(test)]
mod job_tests;

pub use engine::{train, train_within, CpuSessions, EpochReport, SessionFactory, TrainOutcome};
pub use files::DataLimits;
pub use job::{parse_job, TrainJob};

use crate::protocol::ErrorCode;

/// Why a training job failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The body is not JSON of the job's schema.
    #[error("invalid training job: {0}")]
    BadJson(String),
    #[error("{field}: {message}")]
    InvalidJob { field: String, message: String },
    #[error("{field}: {message}")]
    InvalidData { field: String, message: String },
    /// The `init_from` model does not fit the job's layers.
    #[error("init_from: {0}")]
    InitMismatch(String),
    /// The loss became NaN or infinite (usually a learning rate too high).
    #[error(
        "training diverged: the loss is not finite at epoch {epoch}; lower optimizer.learning_rate"
    )]
    Diverged { epoch: usize },
    #[error("ONNX Runtime failed during training: {0}")]
    Runtime(String),
    /// `should_stop` asked the run to end (shutdown); the job should be retried elsewhere.
    #[error("training stopped before it finished")]
    Stopped,
}

impl TrainingError {
    /// `invalid_request` for bad jobs and data, `internal` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            TrainingError::Runtime(_) | TrainingError::Stopped => ErrorCode::Internal,
            _ => ErrorCode::InvalidRequest,
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TrainingError::BadJson(_) => "bad_json",
            TrainingError::InvalidJob { .. } => "invalid_job",
            TrainingError::InvalidData { .. } => "invalid_data",
            TrainingError::InitMismatch(_) => "init_mismatch",
            TrainingError::Diverged { .. } => "diverged",
            TrainingError::Runtime(_) => "runtime",
            TrainingError::Stopped => "stopped",
        }
    }
}
