//! KServe v2 inference results: encoding what the worker publishes (results and error
//! results), and decoding them for clients and tests.
//!
//! JSON is written straight into a pre-sized buffer. An output marked binary carries
//! `parameters.binary_data_size` and its bytes follow the JSON header in output order; the
//! header length then goes in the AMQP header `inference-header-content-length`.
//! Non-finite `queue_ms`/`compute_ms` are written as 0 (they are measurements, never NaN
//! in practice); non-finite tensor elements follow `data.rs`.

use super::data_write::write_str;
use super::error::{malformed, ProtocolError};
use super::tensor::Tensor;
use super::types::ErrorCode;
use super::wire::{
    append_binary, content_type, decode_tensors, header_size_hint, split_body, write_tensor,
    write_usize, RawTensor,
};
use serde::Deserialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// One output of a result, and whether it goes back binary.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub tensor: Tensor,
    pub binary: bool,
}

/// The result's `parameters`: how the job was served.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct ResultParameters {
    /// Rows in the batch the job ran in.
    pub batch_size: usize,
    /// Milliseconds from arrival to the start of the batch.
    pub queue_ms: f64,
    /// Milliseconds the batch took on the runtime.
    pub compute_ms: f64,
}

/// A result to encode; borrows the names from the worker's state.
#[derive(Debug, Clone)]
pub struct InferenceResponse<'a> {
    pub id: Option<&'a str>,
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub outputs: Vec<OutputTensor>,
    pub parameters: ResultParameters,
}

/// An encoded body, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBody {
    pub body: Vec<u8>,
    /// `Some(n)`: binary framing; send AMQP header `inference-header-content-length: n`.
    pub header_len: Option<usize>,
    pub content_type: &'static str,
}

/// Encodes a result.
pub fn encode_response(resp: &InferenceResponse) -> EncodedBody {
    let tensors = || resp.outputs.iter().map(|o| (&o.tensor, o.binary));
    let mut buf = Vec::with_capacity(header_size_hint(tensors()));
    buf.push(b'{');
    write_id(&mut buf, resp.id);
    buf.extend_from_slice(b"\"model_name\":");
    write_str(&mut buf, resp.model_name);
    buf.extend_from_slice(b",\"model_version\":");
    write_str(&mut buf, resp.model_version);
    buf.extend_from_slice(b",\"outputs\":[");
    for (i, o) in resp.outputs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_tensor(&mut buf, &o.tensor, o.binary);
    }
    let p = &resp.parameters;
    buf.extend_from_slice(b"],\"parameters\":{\"batch_size\":");
    write_usize(&mut buf, p.batch_size);
    buf.extend_from_slice(b",\"queue_ms\":");
    write_ms(&mut buf, p.queue_ms);
    buf.extend_from_slice(b",\"compute_ms\":");
    write_ms(&mut buf, p.compute_ms);
    buf.extend_from_slice(b"}}");
    let header_len = buf.len();
    let binary = resp.outputs.iter().any(|o| o.binary);
    append_binary(&mut buf, tensors());
    EncodedBody {
        body: buf,
        header_len: binary.then_some(header_len),
        content_type: content_type(binary),
    }
}

/// Encodes an error result: `{"id", "model_name", "error", "code"}` (`id` omitted when the
/// job had none). The caller also sets the AMQP header `x-error-code`.
pub fn encode_error(id: Option<&str>, model_name: &str, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + model_name.len() + message.len());
    buf.push(b'{');
    write_id(&mut buf, id);
    buf.extend_from_slice(b"\"model_name\":");
    write_str(&mut buf, model_name);
    buf.extend_from_slice(b",\"error\":");
    write_str(&mut buf, message);
    buf.extend_from_slice(b",\"code\":\"");
    buf.extend_from_slice(code.as_str().as_bytes());
    buf.extend_from_slice(b"\"}");
    buf
}

fn write_id(buf: &mut Vec<u8>, id: Option<&str>) {
    if let Some(id) = id {
        buf.extend_from_slice(b"\"id\":");
        write_str(buf, id);
        buf.push(b',');
    }
}

fn write_ms(buf: &mut Vec<u8>, v: f64) {
    let v = if v.is_finite() { v } else { 0.0 };
    // Writing into a Vec<u8> cannot fail.
    let _ = CompactFormatter.write_f64(buf, v);
}

/// A decoded result or error result.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedResponse {
    pub id: Option<String>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub outputs: Vec<Tensor>,
    pub parameters: Option<ResultParameters>,
    /// `(code, message)` of an error result.
    pub error: Option<(String, String)>,
}

impl DecodedResponse {
    /// The result as a JSON body (every output as JSON data), for people and tools that read a
    /// binary result; `model` names it when the result did not.
    pub fn to_json(self, model: &str) -> Vec<u8> {
        if let Some((code, message)) = &self.error {
            let code = ErrorCode::parse(code).unwrap_or(ErrorCode::Internal);
            let name = self.model_name.as_deref().unwrap_or(model);
            return encode_error(self.id.as_deref(), name, code, message);
        }
        encode_response(&InferenceResponse {
            id: self.id.as_deref(),
            model_name: self.model_name.as_deref().unwrap_or(model),
            model_version: self.model_version.as_deref().unwrap_or(""),
            outputs: self
                .outputs
                .into_iter()
                .map(|tensor| OutputTensor {
                    tensor,
                    binary: false,
                })
                .collect(),
            parameters: self.parameters.unwrap_or(ResultParameters {
                batch_size: 0,
                queue_ms: 0.0,
                compute_ms: 0.0,
            }),
        })
        .body
    }
}

#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(borrow, default)]
    outputs: Vec<RawTensor<'a>>,
    #[serde(default)]
    parameters: Option<ResultParameters>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// Decodes a result body (for clients and tests); `binary_header_len` as in
/// [`super::decode_request`]. An error result's `code` is empty when the body lacks it.
pub fn decode_response(
    body: &[u8],
    binary_header_len: Option<usize>,
) -> Result<DecodedResponse, ProtocolError> {
    let (header, binary) = split_body(body, binary_header_len)?;
    let raw: RawResponse<'_> = serde_json::from_slice(header).map_err(malformed)?;
    let outputs = decode_tensors(raw.outputs, "outputs", binary)?;
    Ok(DecodedResponse {
        id: raw.id,
        model_name: raw.model_name,
        model_version: raw.model_version,
        outputs,
        parameters: raw.parameters,
        error: raw.error.map(|m| (raw.code.unwrap_or_default(), m)),
    })
}
