//! The inference signature of an ONNX model read from its protobuf alone (no ONNX Runtime
//! session): each graph input that is not an initializer and each graph output, with its KServe
//! datatype name and its dimensions (`-1` where the dimension is symbolic or left out).

use super::proto::{tensor_shape_proto::dimension::Value as Dim, type_proto, ModelProto};
use super::OnnxError;

/// One input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSignature {
    pub name: String,
    /// KServe datatype name (`FP32`, `INT64`, ...), or `ONNX type N` for others.
    pub datatype: String,
    /// `-1` for a dynamic dimension; empty for a scalar or an unknown shape.
    pub dims: Vec<i64>,
}

/// A model's inputs and outputs, in graph order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    pub inputs: Vec<TensorSignature>,
    pub outputs: Vec<TensorSignature>,
}

/// The KServe name of an ONNX `TensorProto.DataType`.
pub fn datatype_name(elem_type: i32) -> String {
    let name = match elem_type {
        1 => "FP32",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "BYTES",
        9 => "BOOL",
        10 => "FP16",
        11 => "FP64",
        12 => "UINT32",
        13 => "UINT64",
        other => return format!("ONNX type {other}"),
    };
    name.to_string()
}

fn tensor(value: &super::proto::ValueInfoProto) -> TensorSignature {
    let (elem_type, dims) = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Dim::DimValue(v)) if v >= 0 => v,
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (t.elem_type, dims)
        }
        None => (0, Vec::new()),
    };
    TensorSignature {
        name: value.name.clone(),
        datatype: datatype_name(elem_type),
        dims,
    }
}

/// Reads the signature of a decoded model.
pub fn signature(model: &ModelProto) -> Result<Signature, OnnxError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::MissingGraph)?;
    let is_initializer = |name: &str| graph.initializer.iter().any(|t| t.name == name);
    Ok(Signature {
        inputs: graph
            .input
            .iter()
            .filter(|v| !is_initializer(&v.name))
            .map(tensor)
            .collect(),
        outputs: graph.output.iter().map(tensor).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode_model, proto::elem, Dim as D, GraphBuilder};
    use super::*;

    #[test]
    fn inputs_outputs_datatypes_and_dims_are_read() {
        let mut g = GraphBuilder::new("t");
        g.init_f32("w", &[2, 3], &[0.0; 6]);
        let x = g.input("x", elem::FLOAT, &[D::batch(), D::Fixed(2)]);
        let ids = g.input("ids", elem::INT64, &[D::Fixed(4)]);
        let y = g.node("MatMul", &[&x, "w"], vec![]);
        g.output(&y, elem::FLOAT, &[D::batch(), D::Fixed(3)]);
        g.output(&ids, elem::INT64, &[D::Fixed(4)]);
        let model = decode_model(&g.to_bytes()).expect("decodes");
        let sig = signature(&model).expect("has a graph");
        let described: Vec<_> = sig
            .inputs
            .iter()
            .chain(&sig.outputs)
            .map(|t| (t.datatype.as_str(), t.dims.clone()))
            .collect();
        assert_eq!(sig.inputs[0].name, "x");
        assert_eq!(
            described,
            vec![
                ("FP32", vec![-1, 2]),
                ("INT64", vec![4]),
                ("FP32", vec![-1, 3]),
                ("INT64", vec![4])
            ]
        );
        assert_eq!(datatype_name(99), "ONNX type 99");
        assert!(signature(&ModelProto::default()).is_err());
    }
}
