//! Wire types and codecs (pure): KServe v2 JSON and binary bodies in, typed values out.
//!
//! First stage of the flow: `protocol` → `broker` → `batching` → `runtime`. Nothing here
//! sees a channel or a session; it takes bytes and returns typed values.

pub mod types;

pub use types::{DataType, ErrorCode, ModelSignature, TensorSpec};
