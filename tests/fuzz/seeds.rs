//! Valid inputs the mutator starts from: requests for every bundled model (JSON and binary),
//! the bundled models' signatures written out by hand (as `GET /v2/models` reports them), and
//! training jobs of each data form.

use infermq::protocol::{
    encode_request, DataType, InferenceRequest, ModelSignature, RequestedOutput, Tensor, TensorSpec,
};

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// The signatures of `models/{iris,mlp,mixed,scaler,fixed}` version 1.
pub fn signatures() -> Vec<ModelSignature> {
    use DataType::*;
    vec![
        ModelSignature {
            inputs: vec![spec("input", F32, &[-1, 4])],
            outputs: vec![spec("probabilities", F32, &[-1, 3])],
        },
        ModelSignature {
            inputs: vec![spec("input", F32, &[-1, 256])],
            outputs: vec![spec("logits", F32, &[-1, 10])],
        },
        ModelSignature {
            inputs: vec![spec("ids", I64, &[-1, 4]), spec("mask", Bool, &[-1, 4])],
            outputs: vec![
                spec("masked_sum", I64, &[-1, 1]),
                spec("inverted", Bool, &[-1, 4]),
            ],
        },
        ModelSignature {
            inputs: vec![spec("x", F32, &[-1, 8]), spec("sr", F32, &[])],
            outputs: vec![spec("y", F32, &[-1, 8])],
        },
        ModelSignature {
            inputs: vec![spec("x", F32, &[3, 4])],
            outputs: vec![spec("y", F32, &[4, 3])],
        },
    ]
}

fn request(inputs: Vec<Tensor>, outputs: &[(&str, Option<bool>)]) -> InferenceRequest {
    InferenceRequest {
        id: Some("fuzz-1".into()),
        inputs,
        outputs: (!outputs.is_empty()).then(|| {
            outputs
                .iter()
                .map(|(name, binary_data)| RequestedOutput {
                    name: name.to_string(),
                    binary_data: *binary_data,
                })
                .collect()
        }),
        model_version: Some("1".into()),
        binary_data_output: false,
    }
}

/// One valid request per signature of [`signatures`] (same order), plus a few datatypes no
/// bundled model takes (FP16, BYTES, UINT8) for the decoder.
pub fn requests() -> Vec<InferenceRequest> {
    let f = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<f32>>();
    vec![
        request(
            vec![Tensor::from_f32("input", vec![2, 4], &f(8))],
            &[("probabilities", None)],
        ),
        request(vec![Tensor::from_f32("input", vec![1, 256], &f(256))], &[]),
        request(
            vec![
                Tensor::from_i64("ids", vec![2, 4], &[1, -2, 3, i64::MAX, 0, 5, 6, 7]),
                Tensor::from_bool(
                    "mask",
                    vec![2, 4],
                    &[true, false, true, true, false, false, true, false],
                ),
            ],
            &[("masked_sum", Some(true)), ("inverted", Some(false))],
        ),
        request(
            vec![
                Tensor::from_f32("x", vec![1, 8], &f(8)),
                Tensor::from_f32("sr", vec![], &[2.0]),
            ],
            &[],
        ),
        request(
            vec![Tensor::from_f32("x", vec![3, 4], &f(12))],
            &[("y", None)],
        ),
        request(
            vec![
                Tensor::from_raw(
                    "h",
                    infermq::protocol::DataType::F16,
                    vec![1, 2],
                    vec![0x00, 0x3c, 0x00, 0x7c],
                ),
                Tensor::from_bytes("b", vec![1, 2], vec![b"h\xc3\xa9llo".to_vec(), Vec::new()]),
                Tensor::from_raw(
                    "u",
                    infermq::protocol::DataType::U8,
                    vec![3],
                    vec![0, 128, 255],
                ),
            ],
            &[],
        ),
    ]
}

/// JSON bodies of [`requests`].
pub fn json_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = requests()
        .iter()
        .map(|r| encode_request(r, false).body)
        .collect();
    bodies.push(
        br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]],"parameters":{"binary_data_size":null}}],"parameters":{"binary_data_output":true,"model_version":3}}"#
            .to_vec(),
    );
    bodies.push(
        br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP64","data":["NaN","Infinity","-Infinity",1e-300]}]}"#
            .to_vec(),
    );
    bodies
}

/// Binary bodies of [`requests`], each prefixed by its header length (8 bytes, little endian).
pub fn binary_bodies() -> Vec<Vec<u8>> {
    requests()
        .iter()
        .map(|r| {
            let encoded = encode_request(r, true);
            let len = encoded.header_len.unwrap_or(encoded.body.len()) as u64;
            let mut input = len.to_le_bytes().to_vec();
            input.extend_from_slice(&encoded.body);
            input
        })
        .collect()
}

/// Training jobs: inline, CSV and npy data, each optimizer and schedule.
pub fn training_jobs() -> Vec<Vec<u8>> {
    [
        r#"{"id":"t1","model_name":"iris-fuzz","layers":[{"units":16,"activation":"relu"},{"units":3,"activation":"softmax"}],"loss":"sparse_categorical_crossentropy","optimizer":{"type":"adam","learning_rate":0.01,"schedule":{"type":"exponential_decay","decay_rate":0.9,"decay_steps":100}},"epochs":40,"batch_size":16,"validation_split":0.2,"seed":7,"early_stopping":{"patience":5},"data":{"uri":"file:///tmp/iris.csv","format":"csv","label_column":"species"}}"#,
        r#"{"id":"t2","model_name":"reg","layers":[{"units":1}],"loss":"mse","optimizer":{"type":"sgd","learning_rate":0.1,"momentum":0.9,"schedule":{"type":"step_decay","decay_rate":0.5,"decay_epochs":2}},"epochs":3,"data":{"x":[[1,2],[3,4],[5,6]],"y":[1.5,2.5,3.5]}}"#,
        r#"{"id":"t3","model_name":"bin","layers":[{"type":"dense","units":4,"activation":"tanh"},{"units":1,"activation":"sigmoid"}],"loss":"binary_crossentropy","shuffle":false,"data":{"uri":{"x":"file:///d/x.npy","y":"file:///d/y.npy"},"format":"npy"},"init_from":{"model_version":"2"}}"#,
        r#"{"id":"t4","model_name":"cat","layers":[{"units":3,"activation":"softmax"}],"loss":"categorical_crossentropy","epochs":1,"batch_size":1,"data":{"x":[1,2,3],"y":[[1,0,0],[0,1,0],[0,0,1]]},"early_stopping":{"patience":0,"min_delta":0.001},"init_from":{"model_version":3}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
