//! Wire types and codecs (pure): KServe v2 JSON and binary bodies in, typed values out.
//!
//! First stage of the flow: `protocol` → `broker` → `batching` → `runtime`. Nothing here
//! sees a channel or a session; it takes bytes and returns typed values.
//!
//! - [`decode_request`] / [`encode_request`]: prediction jobs, JSON or binary extension.
//! - [`validate_request`]: a decoded job against the model's [`ModelSignature`].
//! - [`encode_response`] / [`encode_error`] / [`decode_response`]: results.
//! - [`ModelName`]: the one rule for a model's name; [`TenantName`] for a tenant's.
//! - [`Tensor::concat_rows`] / [`Tensor::slice_rows`]: batching along dimension 0.
//!
//! JSON conventions (non-finite floats as `"NaN"`/`"Infinity"`/`"-Infinity"`, integers
//! strictly as JSON integers, BYTES as UTF-8 strings) are documented in `data.rs`.

mod binary;
mod data;
mod data_fast;
mod data_write;
pub(crate) mod error;
pub(crate) mod metadata;
pub(crate) mod model_name;
pub(crate) mod request;
mod request_fast;
pub(crate) mod response;
pub(crate) mod tenant;
pub(crate) mod tensor;
pub(crate) mod text;
pub(crate) mod types;
mod validate;
mod wire;

#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_fast_paths;
#[cfg(test)]
mod tests_roundtrip;

pub use error::ProtocolError;
pub use model_name::{ModelName, ModelNameError};
pub use request::{decode_request, encode_request, InferenceRequest, RequestedOutput};
pub use response::{
    decode_response, encode_error, encode_response, DecodedResponse, EncodedBody,
    InferenceResponse, OutputTensor, ResultParameters,
};
pub use tenant::{TenantName, TenantTag};
pub use tensor::{Tensor, TensorData};
pub use types::{DataType, ErrorCode, ModelSignature, TensorSpec};
pub use validate::validate_request;
pub(crate) use wire::content_type;
