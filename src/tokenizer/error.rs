//! Errors of tokenizing: a `tokenizer.json` that cannot be used (the model version's fault,
//! found when it loads) and a job's text that cannot be tokenized (the producer's fault).

use crate::protocol::{DataType, ErrorCode};

/// The token a tokenizer without padding settings pads with.
pub(super) const PAD_TOKEN: &str = "[PAD]";

/// A `tokenizer.json` that cannot serve a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("tokenizer.json: {0}")]
    Parse(String),
    #[error("tokenizer.json: no padding settings and no [PAD] token: the pad id is unknown")]
    NoPadToken,
    #[error("the model's maximum sequence length must be at least 1")]
    MaxLength,
}

/// A job's text that cannot be tokenized. Every message names the element
/// (`inputs[0].data[3]`), what was expected and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(
        "{path}: expected a BYTES tensor of shape [n] (one string a row), got {datatype} {shape:?}"
    )]
    NotText {
        path: String,
        datatype: DataType,
        shape: Vec<usize>,
    },
    #[error("{path}.shape[0]: expected at most {max} strings a job, got {got}")]
    TooManyTexts {
        path: String,
        max: usize,
        got: usize,
    },
    #[error("{path}.data[{index}]: expected at most {max} bytes of text, got {got}")]
    TextTooLong {
        path: String,
        index: usize,
        max: usize,
        got: usize,
    },
    #[error("{path}.data: expected at most {max} bytes of text a job, got {got}")]
    JobTooLong {
        path: String,
        max: usize,
        got: usize,
    },
    #[error("{path}.data[{index}]: expected UTF-8 text, got an invalid byte at offset {offset}")]
    InvalidUtf8 {
        path: String,
        index: usize,
        offset: usize,
    },
    #[error("{path}.data[{index}]: the tokenizer refused the text: {message}")]
    Tokenize {
        path: String,
        index: usize,
        message: String,
    },
    /// Validation lets no job through without each input of the signature; kept as an answer
    /// rather than a panic all the same.
    #[error("inputs: no input {name:?}")]
    MissingInput { name: String },
}

impl TextError {
    /// `too_large` for text over the limits, `invalid_request` for the rest: every one is the
    /// producer's to fix, answered and never retried.
    pub fn code(&self) -> ErrorCode {
        match self {
            TextError::TooManyTexts { .. }
            | TextError::TextTooLong { .. }
            | TextError::JobTooLong { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TextError::NotText { .. } => "text_shape",
            TextError::TooManyTexts { .. }
            | TextError::TextTooLong { .. }
            | TextError::JobTooLong { .. } => "text_too_large",
            TextError::InvalidUtf8 { .. } => "text_utf8",
            TextError::Tokenize { .. } => "text_tokenize",
            TextError::MissingInput { .. } => "text_missing_input",
        }
    }
}
