//! [`TrainingError`]: why a training job failed, its error code and its metric label. A leaf:
//! every other training module may use it, it uses none of them.
//!
//! Messages quote producer text (names, unknown fields, values), so each part is cut when shown:
//! a field to [`MAX_FIELD`] bytes and a message to [`MAX_MESSAGE`], so that an error result's
//! `x-error` header stays under 1 KiB whatever the job held.

use std::borrow::Cow;

use crate::protocol::ErrorCode;

/// Longest field name shown in an error.
pub const MAX_FIELD: usize = 128;
/// Longest message shown in an error (after the field).
pub const MAX_MESSAGE: usize = 768;

/// `s` cut to at most `max` bytes on a character boundary, marked with `...` when cut.
fn cut(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let kept = crate::protocol::text::prefix(s, max.saturating_sub(3));
    Cow::Owned(format!("{kept}..."))
}

/// Why a training job failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The body is not JSON of the job's schema.
    #[error("invalid training job: {}", cut(.0, MAX_MESSAGE))]
    BadJson(String),
    #[error("{}: {}", cut(.field, MAX_FIELD), cut(.message, MAX_MESSAGE))]
    InvalidJob { field: String, message: String },
    #[error("{}: {}", cut(.field, MAX_FIELD), cut(.message, MAX_MESSAGE))]
    InvalidData { field: String, message: String },
    /// The `init_from` model does not fit the job's layers.
    #[error("init_from: {}", cut(.0, MAX_MESSAGE))]
    InitMismatch(String),
    /// The job exceeds one of the worker's `training.max_*` limits (the message names the key).
    #[error("{}: {}", cut(.field, MAX_FIELD), cut(.message, MAX_MESSAGE))]
    OverBudget { field: String, message: String },
    /// The job may not write to this model (its name or its inference signature).
    #[error("model_name: {}", cut(.0, MAX_MESSAGE))]
    ModelRefused(String),
    /// The loss became NaN or infinite (usually a learning rate too high).
    #[error(
        "training diverged: the loss is not finite at epoch {epoch}; lower optimizer.learning_rate"
    )]
    Diverged { epoch: usize },
    #[error("ONNX Runtime failed during training: {}", cut(.0, MAX_MESSAGE))]
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
