use std::io::Cursor;

use prost::Message;

use super::*;
use crate::onnx::builder::tensor_raw;
use crate::onnx::external::{externalize, ExternalLayout};
use crate::onnx::proto::{elem, AttributeProto, GraphProto, NodeProto, TensorProto, EXTERNAL};
use crate::onnx::{Dim, GraphBuilder};

/// An attribute holding a tensor (a `Constant`'s `value`).
fn attr_tensor(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        t: Some(value),
        r#type: crate::onnx::proto::attr_type::TENSOR,
        ..Default::default()
    }
}

fn scan(bytes: &[u8]) -> Result<Vec<TensorEntry>, ScanError> {
    scan_tensors(Cursor::new(bytes))
}

/// A length-delimited protobuf field.
fn field(tag: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(
        tag as u32,
        prost::encoding::WireType::LengthDelimited,
        &mut out,
    );
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn model() -> GraphBuilder {
    let mut g = GraphBuilder::new("t");
    g.init_f32("w", &[2, 3], &[1.0; 6]);
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(2)]);
    let c = g.node(
        "Constant",
        &[],
        vec![attr_tensor(
            "value",
            tensor_raw("c", elem::INT64, &[1], vec![7; 8]),
        )],
    );
    let y = g.node("MatMul", &[&x, "w"], vec![]);
    g.output(&y, elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
    g.output(&c, elem::INT64, &[Dim::Fixed(1)]);
    g
}

#[test]
fn initializers_and_constants_are_found_with_their_sizes() {
    let tensors = scan(&model().to_bytes()).unwrap();
    let found: Vec<_> = tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.data_type,
                t.dims.clone(),
                t.embedded_bytes,
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("c", elem::INT64, vec![1], 8),
            ("w", elem::FLOAT, vec![2, 3], 24)
        ]
    );
}

#[test]
fn external_entries_are_read_and_weights_skipped() {
    let mut m = model().into_model();
    let weights = externalize(&mut m, "weights.bin", 16);
    assert_eq!(weights.len(), 24);
    let tensors = scan(&m.encode_to_vec()).unwrap();
    let w = tensors.iter().find(|t| t.name == "w").unwrap();
    assert_eq!(w.data_location, EXTERNAL);
    assert_eq!(w.embedded_bytes, 0);
    let keys: Vec<_> = w
        .external_data
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(keys, ["location=weights.bin", "offset=0", "length=24"]);
    // The constant (8 bytes) stayed inside.
    assert_eq!(
        tensors
            .iter()
            .find(|t| t.name == "c")
            .unwrap()
            .embedded_bytes,
        8
    );
}

/// A tensor hidden in a subgraph (`If` branch) or a sparse initializer is found too: ONNX
/// Runtime would read its external data just the same.
#[test]
fn nested_tensors_are_found() {
    let (hidden, _) = ExternalLayout::new("../x").tensor("hidden", elem::FLOAT, &[1], 4);
    let branch = GraphProto {
        initializer: vec![hidden],
        ..Default::default()
    };
    let attribute = [field(1, b"then_branch"), field(6, &branch.encode_to_vec())].concat();
    let node = [field(4, b"If"), field(5, &attribute)].concat();
    let sparse_values = tensor_raw("sparse", elem::FLOAT, &[1], vec![0; 4]).encode_to_vec();
    let graph = [field(1, &node), field(15, &field(1, &sparse_values))].concat();
    let tensors = scan(&field(7, &graph)).unwrap();
    let names: Vec<_> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["hidden", "sparse"]);
    assert_eq!(
        tensors[0].external_data[0],
        ("location".into(), "../x".into())
    );
    // The same attribute through prost's own types (no subgraph field there) still parses.
    let plain = NodeProto {
        attribute: vec![AttributeProto::default()],
        ..Default::default()
    };
    assert!(scan(&field(7, &field(1, &plain.encode_to_vec())))
        .unwrap()
        .is_empty());
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let bytes = model().to_bytes();
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        assert!(scan(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // A graph claiming more bytes than the file has.
    let mut lying = field(7, &[]);
    lying[1] = 100;
    assert!(matches!(scan(&lying), Err(ScanError::Malformed(..))));
    assert!(scan(&[0xff; 11]).is_err());
    assert!(scan(&[]).unwrap().is_empty());
}

#[test]
fn nesting_and_strings_are_bounded() {
    // Graph -> node -> attribute -> graph -> ... deeper than the limit.
    let mut inner = Vec::new();
    for _ in 0..MAX_DEPTH {
        inner = field(1, &field(5, &field(6, &inner)));
    }
    assert!(matches!(
        scan(&field(7, &inner)),
        Err(ScanError::TooLarge(_))
    ));
    let long = tensor_raw(
        &"n".repeat(MAX_STRING as usize + 1),
        elem::FLOAT,
        &[],
        vec![],
    );
    let graph = field(5, &long.encode_to_vec());
    assert!(matches!(
        scan(&field(7, &graph)),
        Err(ScanError::TooLarge(_))
    ));
}
