//! The one-pass request decoder and the float scanner against serde_json: a body the one-pass
//! path takes decodes to exactly what the serde path gives, for bodies as encoders write them
//! and for randomly damaged ones; and the scanner takes only valid JSON.

use super::data::parse_with_serde;
use super::data_fast::parse_fixed;
use super::request::{decode_one_pass, decode_with_serde, encode_request, InferenceRequest};
use super::tensor::{Tensor, TensorData};
use super::types::DataType;
use proptest::prelude::*;

fn fixed_types() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL[..12].to_vec())
}

/// A request of `tensors` (datatype, shape, seed bytes), as the load generator writes them.
fn request(
    id: Option<String>,
    tensors: Vec<(DataType, Vec<usize>, Vec<u8>)>,
    binary_data_output: bool,
    model_version: Option<String>,
) -> InferenceRequest {
    let inputs = tensors
        .into_iter()
        .enumerate()
        .map(|(i, (datatype, shape, seed))| {
            let size = datatype.element_size().expect("fixed size");
            let n: usize = shape.iter().product::<usize>() * size;
            let mut bytes: Vec<u8> = seed.iter().cycle().take(n).copied().collect();
            bytes.resize(n, 0);
            if datatype == DataType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            Tensor {
                name: format!("input_{i}"),
                datatype,
                shape,
                data: TensorData::Fixed(bytes),
            }
        })
        .collect();
    InferenceRequest {
        id,
        inputs,
        outputs: None,
        model_version,
        binary_data_output,
    }
}

fn requests() -> impl Strategy<Value = InferenceRequest> {
    let tensor = (
        fixed_types(),
        prop::collection::vec(0usize..4, 0..3),
        prop::collection::vec(any::<u8>(), 1..64),
    );
    (
        prop::option::of("[a-z0-9 ._-]{0,12}|[é\"\\\\\u{1}]{1,3}"),
        prop::collection::vec(tensor, 1..3),
        any::<bool>(),
        prop::option::of("[0-9]{1,3}"),
    )
        .prop_map(|(id, tensors, binary, version)| request(id, tensors, binary, version))
}

/// Damages `body` at a few places with bytes that matter to JSON.
fn damaged(body: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    const BYTES: &[u8] = b" ,:[]{}\"\\0123456789.eE+-truefalsn\x01\xff";
    let mut out = body.to_vec();
    for &(at, kind, byte) in edits {
        if out.is_empty() {
            break;
        }
        let at = at % out.len();
        let byte = BYTES[byte as usize % BYTES.len()];
        match kind % 3 {
            0 => out[at] = byte,
            1 => out.insert(at, byte),
            _ => {
                out.remove(at);
            }
        }
    }
    out
}

#[test]
fn takes_what_the_load_generator_writes() {
    let req = request(
        Some("job-1".into()),
        vec![(DataType::F32, vec![2, 3], vec![1, 2, 3, 200])],
        false,
        None,
    );
    let body = encode_request(&req, false).body;
    assert_eq!(decode_one_pass(&body), Some(req));
}

#[test]
fn leaves_the_rest_to_serde() {
    let bodies = [
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"y"}]}"#,
        r#"{"inputs":[{"name":"x","data":[1],"datatype":"FP32","shape":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["a"]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[-1],"data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1,]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[01]}]}"#,
        r#"{"inputs":[{"name":"\u0078","datatype":"FP32","shape":[1],"data":[1]}]}"#,
        r#"{"id":"a","id":"b","inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]} x"#,
        r#"{"inputs":[]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[01],"data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1.0],"data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1.]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1e]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[+1]}]}"#,
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"parameters":{"binary_data_output":1}}"#,
        "{\"inputs\":[{\"name\":\"\u{e9}\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}",
    ];
    for body in bodies {
        assert_eq!(decode_one_pass(body.as_bytes()), None, "{body}");
    }
    // Nesting serde_json refuses (its recursion limit) is not taken either.
    let deep = format!(
        r#"{{"inputs":[{{"name":"x","datatype":"FP32","shape":[1],"data":{}1{}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(decode_with_serde(deep.as_bytes(), None).is_err());
    assert_eq!(decode_one_pass(deep.as_bytes()), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Bodies as written: the one-pass path gives the serde path's request, and takes every
    /// one whose id needs no escapes.
    #[test]
    fn one_pass_equals_serde_on_written_bodies(req in requests()) {
        let body = encode_request(&req, false).body;
        // (Compared with each other, not with `req`: a NaN is written as "NaN" and reads back
        // as the canonical NaN, whatever its payload was.)
        let serde = decode_with_serde(&body, None);
        prop_assert!(serde.is_ok(), "{:?}", serde);
        let fast = decode_one_pass(&body);
        let plain = req.id.as_deref().is_none_or(|id| id.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\'));
        prop_assert_eq!(fast.is_some(), plain);
        if let Some(fast) = fast {
            prop_assert_eq!(Some(fast), serde.ok());
        }
    }

    /// Damaged bodies: whatever the one-pass path takes, the serde path decodes the same.
    #[test]
    fn one_pass_takes_only_what_serde_decodes_the_same(
        req in requests(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let body = damaged(&encode_request(&req, false).body, &edits);
        if let Some(fast) = decode_one_pass(&body) {
            let serde = decode_with_serde(&body, None);
            prop_assert!(serde.is_ok(), "one pass took a body serde refuses: {:?}", String::from_utf8_lossy(&body));
            prop_assert_eq!(serde.ok(), Some(fast));
        }
    }

    /// The float scanner alone, on text made of JSON's pieces: what it takes is valid JSON and
    /// reads as the serde visitor reads it.
    #[test]
    fn scanner_takes_only_valid_json(
        datatype in fixed_types(),
        text in "[\\[\\], 0-9.eE+-]{1,16}|\\[[0-9 ,.eE+-]{0,12}\\]|\\[\\[[0-9 ,]{0,8}\\],? ?\\[[0-9 ,]{0,8}\\]\\]",
    ) {
        if let Some(fast) = parse_fixed(&text, datatype, 0) {
            prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
            let slow = parse_with_serde(&text, "x", datatype, 0).ok();
            let slow = slow.and_then(|(data, n)| match data {
                TensorData::Fixed(b) => Some((b, n)),
                TensorData::Bytes(_) => None,
            });
            prop_assert_eq!(Some(fast), slow, "{}", text);
        }
    }
}
