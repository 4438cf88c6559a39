//! Table tests: every error path of decoding and validation, with the message it gives.

use super::*;

fn one_input(datatype: &str, shape: &str, data: &str) -> String {
    format!(
        r#"{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}"#
    )
}

fn decode_err(body: &[u8], header_len: Option<usize>) -> ProtocolError {
    match decode_request(body, header_len) {
        Ok(r) => panic!(
            "expected an error for {:?}, got {r:?}",
            String::from_utf8_lossy(body)
        ),
        Err(e) => e,
    }
}

#[test]
fn json_decode_errors() {
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "malformed_json", "invalid JSON"),
        (one_input("FP32", "[1]", "[NaN]"), "malformed_json", "invalid JSON"),
        (r#"{"outputs":[]}"#.into(), "malformed_json", "missing field `inputs`"),
        (one_input("FP8", "[1]", "[1]"), "datatype", r#"inputs[0].datatype: expected one of BOOL"#),
        (one_input("FP32", "[-1, 4]", "[1]"), "shape", "inputs[0].shape: expected non-negative dimensions with a representable element count, got [-1, 4]"),
        (
            one_input("FP32", "[4294967296, 4294967296, 4294967296]", "[1]"),
            "shape",
            "inputs[0].shape: expected non-negative dimensions",
        ),
        (one_input("FP32", "[2, 4]", "[1,2,3,4,5,6,7]"), "shape", "inputs[0].shape: expected 8 elements for shape [2, 4], got 7"),
        (one_input("INT32", "[2]", "[1, 1.5]"), "data", "inputs[0].data[1]: expected an INT32 integer, got 1.5"),
        (one_input("INT64", "[1]", "[1.0]"), "data", "inputs[0].data[0]: expected an INT64 integer, got 1.0"),
        (one_input("UINT8", "[1]", "[300]"), "data", "inputs[0].data[0]: 300 is out of range for UINT8"),
        (one_input("UINT16", "[2]", "[1, -1]"), "data", "inputs[0].data[1]: -1 is out of range for UINT16"),
        (one_input("INT8", "[1]", "[-129]"), "data", "inputs[0].data[0]: -129 is out of range for INT8"),
        (
            one_input("INT64", "[1]", "[9223372036854775808]"),
            "data",
            "inputs[0].data[0]: 9223372036854775808 is out of range for INT64",
        ),
        (one_input("UINT64", "[1]", "[18446744073709551616]"), "data", "expected a UINT64 integer, got 1.8446744073709552e19"),
        (one_input("FP32", "[1]", "[1e39]"), "data", "inputs[0].data[0]: 1e39 is out of range for FP32"),
        (one_input("FP16", "[1]", "[70000]"), "data", "inputs[0].data[0]: 70000 is out of range for FP16"),
        (one_input("BOOL", "[2]", "[true, 1]"), "data", "inputs[0].data[1]: expected a BOOL (true or false), got 1"),
        (one_input("FP32", "[1]", r#"["abc"]"#), "data", r#"inputs[0].data[0]: expected an FP32 number, got string "abc""#),
        (one_input("BYTES", "[1]", "[3]"), "data", "inputs[0].data[0]: expected a BYTES string, got 3"),
        (one_input("FP64", "[1]", "[null]"), "data", "inputs[0].data[0]: expected an FP64 number, got null"),
        (one_input("FP64", "[1]", r#"[{"a":1}]"#), "data", "got an object"),
        (one_input("FP32", "[3]", "[[1,2],[3]]"), "data", "inputs[0].data: ragged nesting: arrays at depth 1 have lengths 2 and 1"),
        (one_input("FP32", "[3]", "[[1,2],3]"), "data", "inputs[0].data: ragged nesting: element 2 is a value at depth 1"),
        (one_input("FP32", "[2]", "[1,[2]]"), "data", "inputs[0].data: ragged nesting: element 1 is an array at depth 1"),
        (one_input("FP32", "[1]", "3"), "data", "inputs[0].data: expected an array, got 3"),
        (
            r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#.into(),
            "data",
            "inputs[0]: expected data or parameters.binary_data_size, got neither",
        ),
        (
            r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],"parameters":{"binary_data_size":4}}]}"#.into(),
            "data",
            "inputs[0]: expected data or parameters.binary_data_size, got both",
        ),
        (
            r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}"#.into(),
            "binary",
            "inputs[0].parameters.binary_data_size: binary data needs the inference-header-content-length header",
        ),
        (
            r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#.into(),
            "unsupported_extension",
            "outputs[0].parameters.classification: the classification extension is not supported",
        ),
        (
            r#"{"inputs":[],"parameters":{"class_count":3}}"#.into(),
            "unsupported_extension",
            "parameters.class_count: the classification extension is not supported",
        ),
    ];
    for (body, label, expected) in cases {
        let err = decode_err(body.as_bytes(), None);
        let msg = err.to_string();
        assert!(
            msg.contains(expected),
            "body {body}\n  expected {expected:?}\n  got      {msg:?}"
        );
        assert_eq!(err.label(), label, "{msg}");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }
}

/// A binary body: JSON header + raw bytes; returns (body, header_len).
fn binary_body(header: &str, raw: &[u8]) -> (Vec<u8>, usize) {
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(raw);
    (body, header.len())
}

fn binary_input(datatype: &str, shape: &str, size: usize) -> String {
    format!(
        r#"{{"name":"x","datatype":"{datatype}","shape":{shape},"parameters":{{"binary_data_size":{size}}}}}"#
    )
}

#[test]
fn binary_decode_errors() {
    let one = |t: String| format!(r#"{{"inputs":[{t}]}}"#);
    let cases: Vec<(String, Vec<u8>, Option<usize>, &str)> = vec![
        (one(binary_input("FP32", "[2]", 7)), vec![0; 7], None, "inputs[0].parameters.binary_data_size: expected 8 bytes for FP32 shape [2], got 7"),
        (one(binary_input("FP32", "[2]", 16)), vec![0; 8], None, "inputs[0].parameters.binary_data_size: expected at most 8 bytes (what is left of the body), got 16"),
        (one(binary_input("FP32", "[2]", 8)), vec![0; 12], None, "binary data: expected 8 bytes after the JSON header (sum of binary_data_size), got 12"),
        (
            format!(r#"{{"inputs":[{},{}]}}"#, binary_input("INT8", "[2]", 2), binary_input("INT8", "[3]", 2)),
            vec![0; 4],
            None,
            "inputs[1].parameters.binary_data_size: expected 3 bytes for INT8 shape [3], got 2",
        ),
        (one(binary_input("BYTES", "[1]", 7)), vec![10, 0, 0, 0, b'a', b'b', b'c'], None, "inputs[0]: BYTES binary data: element 0: expected 10 bytes, got 3"),
        (one(binary_input("BYTES", "[1]", 2)), vec![1, 0], None, "inputs[0]: BYTES binary data: element 0: expected a 4-byte length, got 2 bytes"),
        (one(binary_input("BYTES", "[2]", 5)), vec![1, 0, 0, 0, b'a'], None, "inputs[0]: BYTES binary data: expected 2 elements for its shape, got 1"),
        (one(binary_input("FP32", "[1]", 4)), vec![0; 4], Some(100_000), "inference-header-content-length: expected at most"),
    ];
    for (header, raw, len_override, expected) in cases {
        let (body, len) = binary_body(&header, &raw);
        let msg = decode_err(&body, Some(len_override.unwrap_or(len))).to_string();
        assert!(
            msg.contains(expected),
            "header {header}\n  expected {expected:?}\n  got      {msg:?}"
        );
    }
}

#[test]
fn decodes_nested_scalar_empty_and_binary() {
    let r = decode_request(
        one_input("INT32", "[2, 2]", "[[1, 2], [3, 4]]").as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(r.inputs[0].to_i64_vec(), Some(vec![1, 2, 3, 4]));
    let r = decode_request(
        one_input("FP32", "[1, 2, 1]", "[[[1], [2]]]").as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(r.inputs[0].to_f32_vec(), Some(vec![1.0, 2.0]));
    let nested = r#"[["a", "b\u00e9"], ["", "\"q\""]]"#;
    let r = decode_request(one_input("BYTES", "[2, 2]", nested).as_bytes(), None).unwrap();
    let expected: Vec<Vec<u8>> = vec!["a".into(), "bé".into(), "".into(), "\"q\"".into()];
    assert_eq!(r.inputs[0].data, TensorData::Bytes(expected));
    assert_eq!(r.inputs[0].row_shape(), &[2]);
    let r = decode_request(one_input("FP64", "[]", "[5]").as_bytes(), None).unwrap();
    assert_eq!(r.inputs[0].element_count(), 1);
    let r = decode_request(one_input("FP32", "[0, 3]", "[]").as_bytes(), None).unwrap();
    assert_eq!(r.inputs[0].to_f32_vec(), Some(vec![]));
    let r = decode_request(
        one_input("FP32", "[3]", r#"[1, "NaN", "-Infinity"]"#).as_bytes(),
        None,
    )
    .unwrap();
    let v = r.inputs[0].to_f32_vec().unwrap();
    assert!(v[0] == 1.0 && v[1].is_nan() && v[2] == f32::NEG_INFINITY);

    // Triton-style binary body: two binary inputs around a JSON one, in input order.
    let header = format!(
        r#"{{"id":"b","inputs":[{},{{"name":"m","datatype":"BOOL","shape":[2],"data":[true,false]}},{}],"outputs":[{{"name":"y","parameters":{{"binary_data":true}}}}]}}"#,
        binary_input("FP32", "[2]", 8),
        binary_input("BYTES", "[1]", 6).replace("\"x\"", "\"s\""),
    );
    let mut raw = Vec::new();
    raw.extend(1.5f32.to_le_bytes());
    raw.extend((-2.0f32).to_le_bytes());
    raw.extend([2, 0, 0, 0, b'h', b'i']);
    let (body, len) = binary_body(&header, &raw);
    let r = decode_request(&body, Some(len)).unwrap();
    assert_eq!(r.inputs[0].to_f32_vec(), Some(vec![1.5, -2.0]));
    assert_eq!(r.inputs[1].to_i64_vec(), Some(vec![1, 0]));
    assert_eq!(r.inputs[2].data, TensorData::Bytes(vec![b"hi".to_vec()]));
    assert!(r.wants_binary("y"));
    assert!(!r.wants_binary("z"));
}

#[test]
fn wants_binary_follows_the_rule() {
    let body = r#"{"inputs":[],"outputs":[{"name":"a","parameters":{"binary_data":false}},{"name":"b","parameters":{"binary_data":true}},{"name":"c"}],"parameters":{"binary_data_output":true,"model_version":"3"}}"#;
    let r = decode_request(body.as_bytes(), None).unwrap();
    assert_eq!(r.model_version.as_deref(), Some("3"));
    assert!(!r.wants_binary("a"));
    assert!(r.wants_binary("b"));
    assert!(r.wants_binary("c"));
    assert!(r.wants_binary("not-listed"));
    let r = decode_request(br#"{"inputs":[],"parameters":{"model_version":4}}"#, None).unwrap();
    assert_eq!(r.model_version.as_deref(), Some("4"));
    let r = decode_request(br#"{"inputs":[],"parameters":{"model_version":1.5}}"#, None);
    assert!(r.is_err());
    let r = decode_request(
        br#"{"inputs":[],"outputs":[{"name":"b","parameters":{"binary_data":true}}]}"#,
        None,
    )
    .unwrap();
    assert!(r.wants_binary("b"));
    assert!(!r.wants_binary("c"));
}

fn signature() -> ModelSignature {
    let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
        name: name.into(),
        datatype,
        shape,
    };
    ModelSignature {
        inputs: vec![
            spec("input", DataType::F32, vec![-1, 4]),
            spec("mask", DataType::Bool, vec![-1]),
        ],
        outputs: vec![
            spec("probabilities", DataType::F32, vec![-1, 3]),
            spec("label", DataType::I64, vec![-1]),
        ],
    }
}

fn request(inputs: Vec<Tensor>, outputs: &[&str]) -> InferenceRequest {
    InferenceRequest {
        id: None,
        inputs,
        outputs: (!outputs.is_empty()).then(|| {
            outputs
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    binary_data: None,
                })
                .collect()
        }),
        model_version: None,
        binary_data_output: false,
    }
}

#[test]
fn validate_errors() {
    let input = |rows: usize| Tensor::from_f32("input", vec![rows, 4], &vec![0.0; rows * 4]);
    let mask = |rows: usize| Tensor::from_bool("mask", vec![rows], &vec![true; rows]);
    let sig = signature();
    validate_request(&request(vec![input(2), mask(2)], &["label"]), &sig).unwrap();
    validate_request(&request(vec![mask(1), input(1)], &[]), &sig).unwrap();

    let cases: Vec<(InferenceRequest, &str)> = vec![
        (
            request(
                vec![input(2), mask(2), Tensor::from_f32("foo", vec![1], &[0.0])],
                &[],
            ),
            r#"inputs[2].name: model has no input "foo"; expected inputs: input (FP32 [-1, 4]), mask (BOOL [-1])"#,
        ),
        (
            request(vec![input(2), input(2)], &[]),
            r#"inputs[1].name: expected each input once, got "input" again (first at inputs[0])"#,
        ),
        (
            request(vec![input(2)], &[]),
            r#"inputs: expected model input "mask" (BOOL [-1]), got no such input"#,
        ),
        (
            request(
                vec![input(2), Tensor::from_f32("mask", vec![2], &[0.0, 1.0])],
                &[],
            ),
            r#"inputs[1] ("mask").datatype: model expects BOOL, got FP32"#,
        ),
        (
            request(
                vec![Tensor::from_f32("input", vec![8], &[0.0; 8]), mask(2)],
                &[],
            ),
            r#"inputs[0] ("input").shape: model expects rank 2 ([-1, 4]), got rank 1 ([8])"#,
        ),
        (
            request(
                vec![Tensor::from_f32("input", vec![2, 3], &[0.0; 6]), mask(2)],
                &[],
            ),
            r#"inputs[0] ("input").shape[1]: model expects 4, got 3"#,
        ),
        (
            request(vec![input(2), mask(3)], &[]),
            r#"inputs[1] ("mask").shape[0]: expected 2 rows like inputs[0] ("input"), got 3"#,
        ),
        (
            request(vec![input(0), mask(0)], &[]),
            r#"inputs[0] ("input").shape[0]: expected at least 1 row, got 0"#,
        ),
        (
            request(vec![input(1), mask(1)], &["label", "logits"]),
            r#"outputs[1].name: model has no output "logits"; valid outputs: probabilities, label"#,
        ),
    ];
    for (req, expected) in cases {
        let err = validate_request(&req, &sig).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }
}

#[test]
fn error_body_names_code_and_reason() {
    let body = encode_error(
        Some("req-42"),
        "iris",
        ErrorCode::UnknownVersion,
        "no version \"9\"",
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], "iris");
    assert_eq!(v["code"], "unknown_version");
    assert_eq!(v["error"], "no version \"9\"");
    let d = decode_response(&body, None).unwrap();
    assert_eq!(
        d.error,
        Some(("unknown_version".into(), "no version \"9\"".into()))
    );
    let body = encode_error(None, "iris", ErrorCode::Internal, "x");
    assert_eq!(decode_response(&body, None).unwrap().id, None);
}

/// BYTES elements sent binary may be any bytes: the codec keeps them as they are, and
/// validation refuses an element that is not UTF-8 (ONNX Runtime strings are UTF-8), naming
/// the input and the element's flat index.
#[test]
fn validate_refuses_bytes_that_are_not_utf8() {
    let sig = ModelSignature {
        inputs: vec![TensorSpec {
            name: "text".into(),
            datatype: DataType::Bytes,
            shape: vec![-1, 2],
        }],
        outputs: vec![],
    };
    let body = |elements: &[&[u8]]| {
        let mut raw = Vec::new();
        for e in elements {
            raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
            raw.extend_from_slice(e);
        }
        let header = format!(
            r#"{{"inputs":[{{"name":"text","datatype":"BYTES","shape":[2,2],"parameters":{{"binary_data_size":{}}}}}]}}"#,
            raw.len()
        );
        binary_body(&header, &raw)
    };

    let good: [&[u8]; 4] = [b"ab", "h\u{e9}llo".as_bytes(), b"", b"ok"];
    let (raw, header_len) = body(&good);
    let req = decode_request(&raw, Some(header_len)).unwrap();
    validate_request(&req, &sig).unwrap();

    // 0xff never occurs in UTF-8; "\xc3" alone is a truncated two-byte sequence.
    let bad: [&[u8]; 4] = [b"ab", b"ok", b"", b"a\xffb"];
    let (raw, header_len) = body(&bad);
    let req = decode_request(&raw, Some(header_len)).unwrap();
    let TensorData::Bytes(elements) = &req.inputs[0].data else {
        panic!("BYTES data expected");
    };
    assert_eq!(elements[3], b"a\xffb", "the codec keeps the bytes as sent");
    let err = validate_request(&req, &sig).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"inputs[0] ("text"): element 3 is not valid UTF-8 (invalid byte at offset 1); BYTES inputs must be UTF-8 text"#
    );
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(err.label(), "data");

    let truncated: [&[u8]; 4] = [b"\xc3", b"ok", b"", b""];
    let (raw, header_len) = body(&truncated);
    let req = decode_request(&raw, Some(header_len)).unwrap();
    let err = validate_request(&req, &sig).unwrap_err().to_string();
    assert!(
        err.starts_with(r#"inputs[0] ("text"): element 0 is not valid UTF-8"#),
        "{err}"
    );
}
