//! Merging gathered requests into one job body and splitting its result back (pure).
//!
//! The job concatenates every input along dimension 0, in the order the requests were
//! gathered, and asks for every output binary (no float is written and read back as text on
//! the way); each request's answer is then written the way the worker would have written it
//! alone: its rows of each output, its own `id`, its own output order and binary choices, and
//! the job's `model_name`, `model_version` and `parameters`.

use std::ops::Range;

use crate::protocol::{
    decode_response, encode_request, encode_response, EncodedBody, InferenceRequest,
    InferenceResponse, ModelSignature, OutputTensor, ProtocolError, RequestedOutput,
    ResultParameters, Tensor,
};

use super::gather::GatherKey;

/// Why a merged job's answer cannot be split: the requests are sent again one by one.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("the answer does not decode: {0}")]
    Decode(ProtocolError),
    #[error("the answer is an error result ({0})")]
    Failed(String),
    #[error("output {name:?} has {got} rows, the job had {expected}")]
    Rows {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("output {0:?} is missing from the answer")]
    Missing(String),
}

/// The body of one job carrying `requests` (all with `key`, checked against `signature`).
pub fn merge(
    key: &GatherKey,
    signature: &ModelSignature,
    requests: &[&InferenceRequest],
) -> Result<EncodedBody, ProtocolError> {
    let mut inputs = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let parts: Vec<&Tensor> = requests
            .iter()
            .filter_map(|r| r.inputs.iter().find(|t| t.name == spec.name))
            .collect();
        inputs.push(Tensor::concat_rows(&parts)?);
    }
    let names: Vec<String> = match &key.outputs {
        Some(names) => names.clone(),
        None => signature.outputs.iter().map(|o| o.name.clone()).collect(),
    };
    let merged = InferenceRequest {
        id: None,
        inputs,
        outputs: Some(
            names
                .into_iter()
                .map(|name| RequestedOutput {
                    name,
                    binary_data: Some(true),
                })
                .collect(),
        ),
        model_version: key.version.clone(),
        binary_data_output: true,
    };
    Ok(encode_request(&merged, true))
}

/// Row ranges of each request in the merged job, in order.
pub fn row_ranges(rows: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut start = 0;
    rows.into_iter()
        .map(|n| {
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

/// Splits the merged job's answer (`body`, framed by `header_len`) into one answer per request,
/// each for the rows `ranges[i]` of `requests[i]`.
pub fn split(
    body: &[u8],
    header_len: Option<usize>,
    requests: &[&InferenceRequest],
    ranges: &[Range<usize>],
) -> Result<Vec<EncodedBody>, SplitError> {
    let answer = decode_response(body, header_len).map_err(SplitError::Decode)?;
    if let Some((code, _)) = answer.error {
        return Err(SplitError::Failed(code));
    }
    let total = ranges.last().map_or(0, |r| r.end);
    for output in &answer.outputs {
        if output.rows() != total || output.shape.is_empty() {
            return Err(SplitError::Rows {
                name: output.name.clone(),
                expected: total,
                got: output.rows(),
            });
        }
    }
    let model_name = answer.model_name.as_deref().unwrap_or("");
    let model_version = answer.model_version.as_deref().unwrap_or("");
    let parameters = answer.parameters.unwrap_or(ResultParameters::default());
    let mut bodies = Vec::with_capacity(requests.len());
    for (request, range) in requests.iter().zip(ranges) {
        let wanted: Vec<&str> = match &request.outputs {
            Some(outputs) => outputs.iter().map(|o| o.name.as_str()).collect(),
            None => answer.outputs.iter().map(|o| o.name.as_str()).collect(),
        };
        let mut outputs = Vec::with_capacity(wanted.len());
        for name in wanted {
            let tensor = answer
                .outputs
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| SplitError::Missing(name.to_string()))?;
            outputs.push(OutputTensor {
                tensor: tensor.slice_rows(range.start, range.end),
                binary: request.wants_binary(name),
            });
        }
        bodies.push(encode_response(&InferenceResponse {
            id: request.id.as_deref(),
            model_name,
            model_version,
            outputs,
            parameters,
        }));
    }
    Ok(bodies)
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
