//! [`TrainingError`]: why a training job failed, its error code and its metric label. A leaf:
//! every other training module may use it, it uses none of them.

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
    /// The job exceeds one of the worker's `training.max_*` limits (the message names the key).
    #[error("{field}: {message}")]
    OverBudget { field: String, message: String },
    /// The job may not write to this model (its name or its inference signature).
    #[error("model_name: {0}")]
    ModelRefused(String),
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
            TrainingError::OverBudget { .. } => "over_budget",
            TrainingError::ModelRefused(_) => "model_refused",
            TrainingError::Diverged { .. } => "diverged",
            TrainingError::Runtime(_) => "runtime",
            TrainingError::Stopped => "stopped",
        }
    }
}
