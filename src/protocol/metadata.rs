//! Model metadata requests (pure): the fleet's answer to "what does this model take and give",
//! in the KServe v2 model-metadata form. A producer (the HTTP gateway) publishes a message with
//! header [`REQUEST_HEADER`] = [`METADATA_REQUEST`] to the model's queue; any worker serving the
//! model answers with [`model_metadata`] — no job runs, nothing is batched.

use serde::Serialize;

use super::types::{ModelSignature, TensorSpec};

/// The AMQP header that marks a message on a model's queue as a request other than a job.
pub const REQUEST_HEADER: &str = "x-infermq-request";
/// [`REQUEST_HEADER`]'s value for a metadata request.
pub const METADATA_REQUEST: &str = "metadata";
/// The platform named in metadata: every served model runs on ONNX Runtime.
pub const PLATFORM: &str = "onnxruntime_onnx";

#[derive(Serialize)]
struct ModelMetadata<'a> {
    name: &'a str,
    versions: &'a [String],
    platform: &'static str,
    inputs: &'a [TensorSpec],
    outputs: &'a [TensorSpec],
    max_batch_size: usize,
    /// A decoder's generation: its context length, budgets and defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    generate: Option<&'a serde_json::Value>,
}

/// The KServe v2 model-metadata body: `name`, the served `versions` (ascending), `platform`,
/// and the `inputs` and `outputs` (name, datatype, shape with `-1` for dynamic dimensions) of
/// the version the request named (or the newest), and its `max_batch_size` (rows a worker runs
/// in one batch; 0: one job at a time), which the gateway's gathering reads. A decoder's adds
/// `generate` (docs/PROTOCOL.md "Generation").
pub fn model_metadata(
    name: &str,
    versions: &[String],
    signature: &ModelSignature,
    max_batch_size: usize,
    generate: Option<&serde_json::Value>,
) -> Vec<u8> {
    let metadata = ModelMetadata {
        name,
        versions,
        platform: PLATFORM,
        inputs: &signature.inputs,
        outputs: &signature.outputs,
        max_batch_size,
        generate,
    };
    // Serializing strings, integers and enums into a Vec cannot fail.
    serde_json::to_vec(&metadata).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DataType;

    #[test]
    fn metadata_has_the_kserve_fields() {
        let signature = ModelSignature {
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::F32,
                shape: vec![-1, 4],
            }],
            outputs: vec![TensorSpec {
                name: "probabilities".into(),
                datatype: DataType::F32,
                shape: vec![-1, 3],
            }],
        };
        let body = model_metadata("iris", &["1".into(), "2".into()], &signature, 32, None);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "name": "iris", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
                "max_batch_size": 32,
            })
        );
    }
}
