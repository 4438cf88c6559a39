//! How a prediction or training job ended, as the `outcome` label of the metrics says it: a
//! bounded set (success, the contract's error codes, requeued, dead-lettered).

use crate::protocol::ErrorCode;

/// How a job ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a result.
    Success,
    /// Answered with an error result carrying this code.
    Error(ErrorCode),
    /// Nacked back to its queue (an `internal` failure below the delivery limit).
    Requeued,
    /// Sent to the dead-letter exchange.
    DeadLettered,
}

impl Outcome {
    /// Every outcome, in label order; `model()` creates one series for each.
    pub const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::Error(ErrorCode::InvalidRequest),
        Outcome::Error(ErrorCode::UnknownModel),
        Outcome::Error(ErrorCode::UnknownVersion),
        Outcome::Error(ErrorCode::DeadlineExceeded),
        Outcome::Error(ErrorCode::TooLarge),
        Outcome::Error(ErrorCode::Internal),
        Outcome::Requeued,
        Outcome::DeadLettered,
    ];

    /// The label value: `success`, the error code (`invalid_request`…), `requeued`, `dead_lettered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error(code) => code.as_str(),
            Outcome::Requeued => "requeued",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    /// Position in [`Outcome::ALL`]; indexes the pre-resolved counters.
    pub(crate) fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Error(ErrorCode::InvalidRequest) => 1,
            Outcome::Error(ErrorCode::UnknownModel) => 2,
            Outcome::Error(ErrorCode::UnknownVersion) => 3,
            Outcome::Error(ErrorCode::DeadlineExceeded) => 4,
            Outcome::Error(ErrorCode::TooLarge) => 5,
            Outcome::Error(ErrorCode::Internal) => 6,
            Outcome::Requeued => 7,
            Outcome::DeadLettered => 8,
        }
    }
}

impl From<ErrorCode> for Outcome {
    fn from(code: ErrorCode) -> Self {
        Outcome::Error(code)
    }
}
