//! KServe v2 inference requests: decoding a job body (JSON or binary extension) into an
//! [`InferenceRequest`], and encoding one for clients (`infermq predict`, tests).
//!
//! Checks against the model's signature live in `validate.rs`; decoding only checks
//! what the body says about itself (datatypes, shapes against element counts, binary sizes).

use super::data_write::write_str;
use super::error::{malformed, ProtocolError};
use super::response::EncodedBody;
use super::tensor::Tensor;
use super::wire::{
    append_binary, content_type, decode_tensors, header_size_hint, split_body, write_tensor,
    RawTensor,
};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// One entry of the request's `outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`, when the request says.
    pub binary_data: Option<bool>,
}

/// A decoded prediction job.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// `None`: every model output.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.model_version` (the `x-model-version` header takes precedence; the
    /// broker layer decides).
    pub model_version: Option<String>,
    /// `parameters.binary_data_output`.
    pub binary_data_output: bool,
}

impl InferenceRequest {
    /// Whether `output` goes back binary: the requested output's `binary_data` where it
    /// says, else the request's `binary_data_output`.
    pub fn wants_binary(&self, output: &str) -> bool {
        self.outputs
            .iter()
            .flatten()
            .find(|o| o.name == output)
            .and_then(|o| o.binary_data)
            .unwrap_or(self.binary_data_output)
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<RawTensor<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawRequestedOutput>>,
    #[serde(default)]
    parameters: Option<RequestParams>,
}

#[derive(Deserialize)]
struct RawRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParams>,
}

#[derive(Deserialize)]
struct OutputParams {
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    classification: Option<IgnoredAny>,
    #[serde(default)]
    class_count: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RequestParams {
    #[serde(default, deserialize_with = "string_or_integer")]
    model_version: Option<String>,
    #[serde(default)]
    binary_data_output: Option<bool>,
    #[serde(default)]
    classification: Option<IgnoredAny>,
    #[serde(default)]
    class_count: Option<IgnoredAny>,
}

/// KServe parameters may be strings or integers; a version is read as either (`"3"` or `3`).
fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Version>::deserialize(d)?.map(|v| match v {
        Version::Text(s) => s,
        Version::Number(n) => n.to_string(),
    }))
}

fn unsupported(path: String, parameter: &str) -> ProtocolError {
    ProtocolError::UnsupportedExtension {
        path,
        parameter: parameter.to_string(),
    }
}

/// Decodes a job body. `binary_header_len` is the AMQP header
/// `inference-header-content-length`: when present, the first that many bytes are the JSON
/// header and the rest is binary tensor data.
pub fn decode_request(
    body: &[u8],
    binary_header_len: Option<usize>,
) -> Result<InferenceRequest, ProtocolError> {
    let (header, binary) = split_body(body, binary_header_len)?;
    // The common shape in one pass; everything else (and every error) through serde.
    if binary.is_none() {
        if let Some(request) = decode_one_pass(header) {
            return Ok(request);
        }
    }
    decode_with_serde(header, binary)
}

/// A body of the common shape decoded in one pass (`request_fast.rs`); `None` for any other.
pub(crate) fn decode_one_pass(header: &[u8]) -> Option<InferenceRequest> {
    let d = super::request_fast::decode(header)?;
    Some(InferenceRequest {
        id: d.id,
        inputs: d.inputs,
        outputs: None,
        model_version: d.model_version,
        binary_data_output: d.binary_data_output,
    })
}

/// The whole decode through serde_json: every body the one-pass path does not take.
pub(crate) fn decode_with_serde(
    header: &[u8],
    binary: Option<&[u8]>,
) -> Result<InferenceRequest, ProtocolError> {
    let raw: RawRequest<'_> = serde_json::from_slice(header).map_err(malformed)?;
    let params = raw.parameters;
    if let Some(p) = &params {
        if p.classification.is_some() {
            return Err(unsupported(
                "parameters.classification".into(),
                "classification",
            ));
        }
        if p.class_count.is_some() {
            return Err(unsupported("parameters.class_count".into(), "class_count"));
        }
    }
    let outputs = raw
        .outputs
        .map(|outs| {
            outs.into_iter()
                .enumerate()
                .map(|(i, o)| requested_output(i, o))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let inputs = decode_tensors(raw.inputs, "inputs", binary)?;
    let (model_version, binary_data_output) = match params {
        Some(p) => (p.model_version, p.binary_data_output.unwrap_or(false)),
        None => (None, false),
    };
    Ok(InferenceRequest {
        id: raw.id,
        inputs,
        outputs,
        model_version,
        binary_data_output,
    })
}

fn requested_output(i: usize, o: RawRequestedOutput) -> Result<RequestedOutput, ProtocolError> {
    let mut binary_data = None;
    if let Some(p) = o.parameters {
        if p.classification.is_some() {
            return Err(unsupported(
                format!("outputs[{i}].parameters.classification"),
                "classification",
            ));
        }
        if p.class_count.is_some() {
            return Err(unsupported(
                format!("outputs[{i}].parameters.class_count"),
                "class_count",
            ));
        }
        binary_data = p.binary_data;
    }
    Ok(RequestedOutput {
        name: o.name,
        binary_data,
    })
}

/// Encodes a request; with `binary_inputs`, every input's data goes in the binary
/// extension after the JSON header (`header_len` is then `Some`).
pub fn encode_request(req: &InferenceRequest, binary_inputs: bool) -> EncodedBody {
    let tensors = || req.inputs.iter().map(|t| (t, binary_inputs));
    let mut buf = Vec::with_capacity(header_size_hint(tensors()));
    buf.push(b'{');
    if let Some(id) = &req.id {
        buf.extend_from_slice(b"\"id\":");
        write_str(&mut buf, id);
        buf.push(b',');
    }
    buf.extend_from_slice(b"\"inputs\":[");
    for (i, t) in req.inputs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_tensor(&mut buf, t, binary_inputs);
    }
    buf.push(b']');
    if let Some(outputs) = &req.outputs {
        buf.extend_from_slice(b",\"outputs\":[");
        for (i, o) in outputs.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(b"{\"name\":");
            write_str(&mut buf, &o.name);
            if let Some(b) = o.binary_data {
                buf.extend_from_slice(b",\"parameters\":{\"binary_data\":");
                buf.extend_from_slice(if b { b"true}" } else { b"false}" });
            }
            buf.push(b'}');
        }
        buf.push(b']');
    }
    buf.extend_from_slice(b",\"parameters\":{\"binary_data_output\":");
    buf.extend_from_slice(if req.binary_data_output {
        b"true"
    } else {
        b"false"
    });
    if let Some(v) = &req.model_version {
        buf.extend_from_slice(b",\"model_version\":");
        write_str(&mut buf, v);
    }
    buf.extend_from_slice(b"}}");
    let header_len = buf.len();
    let binary = binary_inputs && !req.inputs.is_empty();
    append_binary(&mut buf, tensors());
    EncodedBody {
        body: buf,
        header_len: binary.then_some(header_len),
        content_type: content_type(binary),
    }
}
