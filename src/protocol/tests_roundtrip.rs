//! Property tests: what the encoders write, the decoders read back, for every datatype,
//! in JSON and in the binary extension.

use super::*;
use half::f16;
use proptest::prelude::*;

/// NaN payloads do not survive JSON (`"NaN"`), so NaNs are compared as one value.
fn canonical(t: &Tensor) -> Tensor {
    let mut t = t.clone();
    if let TensorData::Fixed(b) = &mut t.data {
        match t.datatype {
            DataType::F16 => b.chunks_exact_mut(2).for_each(|c| {
                if f16::from_le_bytes([c[0], c[1]]).is_nan() {
                    c.copy_from_slice(&f16::NAN.to_le_bytes());
                }
            }),
            DataType::F32 => b.chunks_exact_mut(4).for_each(|c| {
                if f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_nan() {
                    c.copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }),
            DataType::F64 => b.chunks_exact_mut(8).for_each(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                if f64::from_le_bytes(a).is_nan() {
                    c.copy_from_slice(&f64::NAN.to_le_bytes());
                }
            }),
            _ => {}
        }
    }
    t
}

fn canonical_all(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(canonical).collect()
}

/// Any tensor of `datatype`; BYTES elements are UTF-8 unless `raw_bytes`.
fn tensor_of(datatype: DataType, raw_bytes: bool) -> impl Strategy<Value = Tensor> {
    let name = "[a-z_]{1,8}|[\\PC]{0,6}";
    (name, prop::collection::vec(0usize..4, 0..4)).prop_flat_map(move |(name, shape)| {
        let n: usize = shape.iter().product();
        let data = match datatype.element_size() {
            Some(_) if datatype == DataType::Bool => prop::collection::vec(any::<bool>(), n)
                .prop_map(|v| TensorData::Fixed(v.into_iter().map(u8::from).collect()))
                .boxed(),
            // Any bit pattern is a valid element, NaNs and subnormals included.
            Some(size) => prop::collection::vec(any::<u8>(), n * size)
                .prop_map(TensorData::Fixed)
                .boxed(),
            None if raw_bytes => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), n)
                .prop_map(TensorData::Bytes)
                .boxed(),
            None => prop::collection::vec(".{0,6}", n)
                .prop_map(|v| TensorData::Bytes(v.into_iter().map(String::into_bytes).collect()))
                .boxed(),
        };
        (Just(name), Just(shape), data).prop_map(move |(name, shape, data)| Tensor {
            name,
            datatype,
            shape,
            data,
        })
    })
}

fn any_tensor(raw_bytes: bool) -> impl Strategy<Value = Tensor> {
    prop::sample::select(DataType::ALL.to_vec()).prop_flat_map(move |d| tensor_of(d, raw_bytes))
}

fn any_request(binary: bool) -> impl Strategy<Value = InferenceRequest> {
    let output = ("[a-z]{1,5}", prop::option::of(any::<bool>()))
        .prop_map(|(name, binary_data)| RequestedOutput { name, binary_data });
    (
        prop::option::of("\\PC{0,8}"),
        prop::collection::vec(any_tensor(binary), 0..4),
        prop::option::of(prop::collection::vec(output, 0..3)),
        prop::option::of("[0-9]{1,3}"),
        any::<bool>(),
    )
        .prop_map(|(id, inputs, outputs, model_version, binary_data_output)| {
            InferenceRequest {
                id,
                inputs,
                outputs,
                model_version,
                binary_data_output,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_round_trips(binary in any::<bool>(), req in any_request(false), raw in any_request(true)) {
        // JSON bodies carry UTF-8 BYTES only; binary bodies carry any bytes.
        let req = if binary { raw } else { req };
        let enc = encode_request(&req, binary);
        prop_assert_eq!(enc.header_len.is_some(), binary && !req.inputs.is_empty());
        let header = &enc.body[..enc.header_len.unwrap_or(enc.body.len())];
        prop_assert!(serde_json::from_slice::<serde_json::Value>(header).is_ok());
        let back = decode_request(&enc.body, enc.header_len).unwrap();
        prop_assert_eq!(canonical_all(&back.inputs), canonical_all(&req.inputs));
        prop_assert_eq!(back.id, req.id);
        prop_assert_eq!(back.outputs, req.outputs);
        prop_assert_eq!(back.model_version, req.model_version);
        prop_assert_eq!(back.binary_data_output, req.binary_data_output);
    }

    #[test]
    fn response_round_trips(
        outs in prop::collection::vec((any_tensor(false), any_tensor(true), any::<bool>()), 0..4),
        id in prop::option::of("\\PC{0,8}"),
        name in "\\PC{1,8}",
        version in "[0-9]{1,3}",
        batch_size in any::<usize>(),
        queue_ms in 0.0f64..1e6,
        compute_ms in 0.0f64..1e6,
    ) {
        let outputs: Vec<OutputTensor> = outs
            .into_iter()
            .map(|(json, raw, binary)| OutputTensor { tensor: if binary { raw } else { json }, binary })
            .collect();
        let parameters = ResultParameters { batch_size, queue_ms, compute_ms };
        let resp = InferenceResponse { id: id.as_deref(), model_name: &name, model_version: &version, outputs: outputs.clone(), parameters };
        let enc = encode_response(&resp);
        let binary = outputs.iter().any(|o| o.binary);
        prop_assert_eq!(enc.header_len.is_some(), binary);
        prop_assert_eq!(enc.content_type, if binary { "application/octet-stream" } else { "application/json" });
        let back = decode_response(&enc.body, enc.header_len).unwrap();
        let sent: Vec<Tensor> = outputs.iter().map(|o| o.tensor.clone()).collect();
        prop_assert_eq!(canonical_all(&back.outputs), canonical_all(&sent));
        prop_assert_eq!(back.id, id);
        prop_assert_eq!(back.model_name, Some(name));
        prop_assert_eq!(back.model_version, Some(version));
        prop_assert_eq!(back.parameters, Some(parameters));
        prop_assert_eq!(back.error, None);
    }
}

#[test]
fn non_finite_outputs_are_strings() {
    let t = Tensor::from_f32(
        "y",
        vec![4],
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0],
    );
    let resp = InferenceResponse {
        id: Some("a"),
        model_name: "m",
        model_version: "1",
        outputs: vec![OutputTensor {
            tensor: t,
            binary: false,
        }],
        parameters: ResultParameters::default(),
    };
    let enc = encode_response(&resp);
    let text = String::from_utf8(enc.body).unwrap();
    assert!(
        text.contains(r#""data":["NaN","Infinity","-Infinity",-0.0]"#),
        "{text}"
    );
    let back = decode_response(text.as_bytes(), None).unwrap();
    let v = back.outputs[0].to_f32_vec().unwrap();
    assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY);
    assert!(v[3] == 0.0 && v[3].is_sign_negative());
}

#[test]
fn result_matches_the_contract_example() {
    let t = Tensor::from_f32(
        "probabilities",
        vec![2, 3],
        &[0.9, 0.05, 0.05, 0.1, 0.8, 0.1],
    );
    let resp = InferenceResponse {
        id: Some("req-42"),
        model_name: "iris",
        model_version: "3",
        outputs: vec![OutputTensor {
            tensor: t,
            binary: false,
        }],
        parameters: ResultParameters {
            batch_size: 17,
            queue_ms: 1.9,
            compute_ms: 0.4,
        },
    };
    let enc = encode_response(&resp);
    let expected = r#"{"id":"req-42","model_name":"iris","model_version":"3","outputs":[{"name":"probabilities","datatype":"FP32","shape":[2,3],"data":[0.9,0.05,0.05,0.1,0.8,0.1]}],"parameters":{"batch_size":17,"queue_ms":1.9,"compute_ms":0.4}}"#;
    assert_eq!(std::str::from_utf8(&enc.body).unwrap(), expected);
    assert_eq!(
        (enc.header_len, enc.content_type),
        (None, "application/json")
    );
}
