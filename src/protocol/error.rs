//! Errors of the protocol layer: everything decoding, validation and tensor reshaping can
//! report about a job body.
//!
//! Every message names the field path (`inputs[0].shape`), what was expected and what was
//! received, because the text goes back verbatim to the producer in the error result.
//! All of them are the producer's fault, so all map to `invalid_request` and the job is
//! answered, never retried.

use super::text::{clipped, quoted};
use super::types::{DataType, ErrorCode};

/// A job body the codec cannot accept, or tensors that cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The body (or its JSON header) is not valid JSON or not the expected schema.
    #[error("invalid JSON: {}", clipped(.message))]
    MalformedJson { message: String },

    /// `datatype` is not one of the contract's names.
    #[error("{path}.datatype: expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES, got {}", quoted(.got))]
    UnknownDatatype { path: String, got: String },

    /// A dimension of `shape` is negative or too large.
    #[error("{path}.shape: expected non-negative dimensions with a representable element count, got {got:?}")]
    InvalidShape { path: String, got: Vec<i64> },

    /// The number of elements does not match the shape.
    #[error("{path}.shape: expected {expected} elements for shape {shape:?}, got {got}")]
    ElementCountMismatch {
        path: String,
        expected: usize,
        shape: Vec<usize>,
        got: usize,
    },

    /// One element of `data` has the wrong JSON type for the datatype.
    #[error("{path}.data[{index}]: expected {expected}, got {}", clipped(.got))]
    InvalidElement {
        path: String,
        index: usize,
        expected: String,
        got: String,
    },

    /// An integer (or float) element does not fit the datatype.
    #[error("{path}.data[{index}]: {} is out of range for {datatype}", clipped(.got))]
    ElementOutOfRange {
        path: String,
        index: usize,
        datatype: DataType,
        got: String,
    },

    /// `data` is not a JSON array.
    #[error("{path}.data: expected an array, got {}", clipped(.got))]
    DataNotArray { path: String, got: String },

    /// Nested `data` arrays of unequal lengths or depths.
    #[error("{path}.data: ragged nesting: {}", clipped(.detail))]
    RaggedData { path: String, detail: String },

    /// Neither `data` nor `parameters.binary_data_size`.
    #[error("{path}: expected data or parameters.binary_data_size, got neither")]
    MissingData { path: String },

    /// Both `data` and `parameters.binary_data_size`.
    #[error("{path}: expected data or parameters.binary_data_size, got both")]
    ConflictingData { path: String },

    /// `binary_data_size` used on a body sent without the binary header length.
    #[error("{path}.parameters.binary_data_size: binary data needs the inference-header-content-length header, got none")]
    BinaryWithoutHeader { path: String },

    /// The header length points past the end of the body.
    #[error("inference-header-content-length: expected at most {body_len} (the body length), got {header_len}")]
    HeaderLengthOutOfBounds { header_len: usize, body_len: usize },

    /// A binary tensor's byte count does not match its datatype and shape.
    #[error("{path}.parameters.binary_data_size: expected {expected} bytes for {datatype} shape {shape:?}, got {got}")]
    BinarySizeMismatch {
        path: String,
        datatype: DataType,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },

    /// A binary tensor asks for more bytes than the body still holds.
    #[error("{path}.parameters.binary_data_size: expected at most {remaining} bytes (what is left of the body), got {got}")]
    BinaryDataTruncated {
        path: String,
        remaining: usize,
        got: usize,
    },

    /// Bytes left over after the last binary tensor.
    #[error("binary data: expected {expected} bytes after the JSON header (sum of binary_data_size), got {got}")]
    TrailingBinaryData { expected: usize, got: usize },

    /// A BYTES tensor's binary framing (4-byte length + bytes) is broken.
    #[error("{path}: BYTES binary data: {detail}")]
    InvalidBytesFraming { path: String, detail: String },

    /// A BYTES element (sent through the binary extension) that is not UTF-8: ONNX Runtime
    /// string tensors cannot hold it.
    #[error("{path}: element {index} is not valid UTF-8 (invalid byte at offset {offset}); BYTES inputs must be UTF-8 text")]
    InvalidUtf8 {
        path: String,
        index: usize,
        offset: usize,
    },

    /// The classification extension, not part of v1.
    #[error("{path}: the classification extension is not supported in v1, got {parameter:?}")]
    UnsupportedExtension { path: String, parameter: String },

    /// A request input the model does not have.
    #[error("{path}.name: model has no input {}; expected inputs: {expected}", quoted(.name))]
    UnknownInput {
        path: String,
        name: String,
        expected: String,
    },

    /// The same input twice.
    #[error(
        "{path}.name: expected each input once, got {} again (first at inputs[{first}])", quoted(.name)
    )]
    DuplicateInput {
        path: String,
        name: String,
        first: usize,
    },

    /// A model input the request lacks.
    #[error("inputs: expected model input {name:?} ({spec}), got no such input")]
    MissingInput { name: String, spec: String },

    /// The input's datatype differs from the model's.
    #[error("{path}.datatype: model expects {expected}, got {got}")]
    DatatypeMismatch {
        path: String,
        expected: DataType,
        got: DataType,
    },

    /// The input's rank differs from the model's.
    #[error(
        "{path}.shape: model expects rank {expected} ({model_shape:?}), got rank {got} ({shape:?})"
    )]
    RankMismatch {
        path: String,
        expected: usize,
        model_shape: Vec<i64>,
        got: usize,
        shape: Vec<usize>,
    },

    /// A fixed dimension differs from the model's.
    #[error("{path}.shape[{dim}]: model expects {expected}, got {got}")]
    DimensionMismatch {
        path: String,
        dim: usize,
        expected: i64,
        got: usize,
    },

    /// Batched inputs of one request disagree on their number of rows.
    #[error("{path}.shape[0]: expected {expected} rows like {first}, got {got}")]
    BatchMismatch {
        path: String,
        first: String,
        expected: usize,
        got: usize,
    },

    /// A batched input with zero rows.
    #[error("{path}.shape[0]: expected at least 1 row, got 0")]
    EmptyBatch { path: String },

    /// A requested output the model does not have.
    #[error("{path}.name: model has no output {}; valid outputs: {valid}", quoted(.name))]
    UnknownOutput {
        path: String,
        name: String,
        valid: String,
    },

    /// The same output requested twice.
    #[error("{path}.name: expected each output once, got {} again (first at outputs[{first}])", quoted(.name))]
    DuplicateOutput {
        path: String,
        name: String,
        first: usize,
    },

    /// A tensor without elements (a dimension is 0): it would batch as any number of rows.
    #[error("{path}.shape: expected every dimension to be at least 1, got {shape:?} (zero-element tensors are refused)")]
    EmptyTensor { path: String, shape: Vec<usize> },

    /// Tensors that cannot be concatenated along dimension 0.
    #[error("concat_rows: parts[{index}]: expected {expected}, got {got}")]
    ConcatMismatch {
        index: usize,
        expected: String,
        got: String,
    },

    /// `concat_rows` of nothing.
    #[error("concat_rows: expected at least one part, got none")]
    EmptyConcat,
}

impl ProtocolError {
    /// The contract's error code: everything this layer reports is the producer's fault.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }

    /// A bounded label for metrics (never contains request data).
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::MalformedJson { .. } => "malformed_json",
            ProtocolError::UnknownDatatype { .. } | ProtocolError::DatatypeMismatch { .. } => {
                "datatype"
            }
            ProtocolError::InvalidShape { .. }
            | ProtocolError::ElementCountMismatch { .. }
            | ProtocolError::RankMismatch { .. }
            | ProtocolError::DimensionMismatch { .. }
            | ProtocolError::BatchMismatch { .. }
            | ProtocolError::EmptyBatch { .. }
            | ProtocolError::EmptyTensor { .. } => "shape",
            ProtocolError::InvalidElement { .. }
            | ProtocolError::ElementOutOfRange { .. }
            | ProtocolError::RaggedData { .. }
            | ProtocolError::DataNotArray { .. }
            | ProtocolError::InvalidUtf8 { .. }
            | ProtocolError::MissingData { .. }
            | ProtocolError::ConflictingData { .. } => "data",
            ProtocolError::BinaryWithoutHeader { .. }
            | ProtocolError::HeaderLengthOutOfBounds { .. }
            | ProtocolError::BinarySizeMismatch { .. }
            | ProtocolError::BinaryDataTruncated { .. }
            | ProtocolError::TrailingBinaryData { .. }
            | ProtocolError::InvalidBytesFraming { .. } => "binary",
            ProtocolError::UnsupportedExtension { .. } => "unsupported_extension",
            ProtocolError::UnknownInput { .. }
            | ProtocolError::DuplicateInput { .. }
            | ProtocolError::MissingInput { .. } => "inputs",
            ProtocolError::UnknownOutput { .. } | ProtocolError::DuplicateOutput { .. } => {
                "outputs"
            }
            ProtocolError::ConcatMismatch { .. } | ProtocolError::EmptyConcat => "concat",
        }
    }
}

/// Converts a serde_json error on the body or header into [`ProtocolError::MalformedJson`].
pub(crate) fn malformed(e: serde_json::Error) -> ProtocolError {
    ProtocolError::MalformedJson {
        message: e.to_string(),
    }
}
