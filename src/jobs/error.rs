//! Why a job failed, and what the broker should do with it: every error carries its fate as a
//! type, decided where the error is made, never re-derived from its code later.

use crate::broker::headers::HeaderError;
use crate::execution::padding::PadError;
use crate::protocol::text::bounded;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::RuntimeError;
use crate::serving::ResolveError;
use crate::tokenizer::TextError;
use crate::training::TrainingError;

/// What becomes of a job that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The producer's fault: answered with an error result, then acked. Never retried.
    Answer,
    /// The worker's fault: requeued, or dead-lettered with the reason on the last delivery the
    /// queue's limit allows.
    Retry,
    /// Not the job's fault at all (the worker is stopping): always requeued, never
    /// dead-lettered by the worker.
    Requeue,
    /// Cannot be answered (its `reply_to` is refused): dead-lettered with the reason at once.
    DeadLetter,
}

/// A failed job: the contract's code, a bounded message naming the field, and its fate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub code: ErrorCode,
    /// At most [`crate::protocol::text::MAX_MESSAGE`] bytes.
    pub message: String,
    pub fate: Fate,
}

impl JobError {
    /// The producer's error, answered with `code`.
    pub fn answer(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: bounded(message),
            fate: Fate::Answer,
        }
    }

    /// `invalid_request`, answered.
    pub fn invalid(message: impl Into<String>) -> JobError {
        JobError::answer(ErrorCode::InvalidRequest, message)
    }

    /// The worker failed: `internal`, retried up to the delivery limit.
    pub fn internal(message: impl Into<String>) -> JobError {
        JobError {
            code: ErrorCode::Internal,
            message: bounded(message),
            fate: Fate::Retry,
        }
    }

    /// Interrupted by the worker's own stop: back to the queue.
    pub fn stopped(message: impl Into<String>) -> JobError {
        JobError {
            fate: Fate::Requeue,
            ..JobError::internal(message)
        }
    }

    /// Dead-lettered at once with `code` and the reason.
    pub fn dead_letter(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: bounded(message),
            fate: Fate::DeadLetter,
        }
    }
}

impl From<ProtocolError> for JobError {
    fn from(e: ProtocolError) -> JobError {
        JobError::answer(e.code(), e.to_string())
    }
}

impl From<HeaderError> for JobError {
    fn from(e: HeaderError) -> JobError {
        JobError::invalid(e.to_string())
    }
}

impl From<ResolveError> for JobError {
    fn from(e: ResolveError) -> JobError {
        match e {
            ResolveError::UnknownModel(message) => {
                JobError::answer(ErrorCode::UnknownModel, message)
            }
            ResolveError::UnknownVersion(message) => {
                JobError::answer(ErrorCode::UnknownVersion, message)
            }
            ResolveError::Internal(message) => JobError::internal(message),
        }
    }
}

impl From<PadError> for JobError {
    fn from(e: PadError) -> JobError {
        match e.code() {
            ErrorCode::Internal => JobError::internal(e.to_string()),
            code => JobError::answer(code, e.to_string()),
        }
    }
}

impl From<TextError> for JobError {
    fn from(e: TextError) -> JobError {
        JobError::answer(e.code(), e.to_string())
    }
}

impl From<RuntimeError> for JobError {
    fn from(e: RuntimeError) -> JobError {
        JobError::internal(e.to_string())
    }
}

impl From<TrainingError> for JobError {
    fn from(e: TrainingError) -> JobError {
        match e {
            TrainingError::Stopped => JobError::stopped(e.to_string()),
            e if e.code() == ErrorCode::Internal => JobError::internal(e.to_string()),
            e => JobError::answer(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_fate_and_a_bounded_message() {
        let e = JobError::invalid("x".repeat(10_000));
        assert_eq!(e.fate, Fate::Answer);
        assert!(e.message.len() <= crate::protocol::text::MAX_MESSAGE);
        assert_eq!(JobError::from(TrainingError::Stopped).fate, Fate::Requeue);
        assert_eq!(
            JobError::from(TrainingError::Runtime("boom".into())).fate,
            Fate::Retry
        );
        assert_eq!(
            JobError::from(TrainingError::Diverged { epoch: 3 }).fate,
            Fate::Answer
        );
        assert_eq!(
            JobError::from(RuntimeError::InstanceGone).code,
            ErrorCode::Internal
        );
    }
}
