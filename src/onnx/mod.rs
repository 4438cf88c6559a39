//! ONNX models as data: hand-written protobuf messages ([`proto`]), a graph builder
//! ([`builder`]), reading initializers back from existing model bytes, external data
//! ([`external`]) and every tensor of a model file read without its weights ([`scan`]).
//!
//! Used by [`crate::training`] (inference and training-step graphs, and the bundled models of
//! `make-models`); it depends on nothing else in the crate and never touches ONNX Runtime.

pub mod builder;
pub mod external;
pub mod proto;
pub(crate) mod scan;
mod signature;

use prost::Message;

pub use builder::{Dim, GraphBuilder};
pub use proto::ModelProto;
pub use signature::{signature, Signature, TensorSignature};

/// Why ONNX bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    MissingGraph,
    #[error("initializer {0:?} not found")]
    MissingInitializer(String),
    #[error("initializer {name:?} has data type {data_type}, expected FLOAT")]
    NotFloat { name: String, data_type: i32 },
    #[error("initializer {name:?} holds {found} values, its shape {dims:?} needs {expected}")]
    BadLength {
        name: String,
        dims: Vec<i64>,
        expected: usize,
        found: usize,
    },
}

/// Parses model bytes.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    Ok(ModelProto::decode(bytes)?)
}

/// Reads an `f32` initializer (from `raw_data` or `float_data`): its dims and values.
pub fn initializer_f32(model: &ModelProto, name: &str) -> Result<(Vec<i64>, Vec<f32>), OnnxError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::MissingGraph)?;
    let tensor = graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| OnnxError::MissingInitializer(name.to_string()))?;
    if tensor.data_type != proto::elem::FLOAT {
        return Err(OnnxError::NotFloat {
            name: name.to_string(),
            data_type: tensor.data_type,
        });
    }
    let values: Vec<f32> = if tensor.raw_data.is_empty() {
        tensor.float_data.clone()
    } else {
        tensor
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let expected: usize = tensor.dims.iter().map(|&d| d.max(0) as usize).product();
    if values.len() != expected || tensor.raw_data.len() % 4 != 0 {
        return Err(OnnxError::BadLength {
            name: name.to_string(),
            dims: tensor.dims.clone(),
            expected,
            found: values.len(),
        });
    }
    Ok((tensor.dims.clone(), values))
}

/// The value of a `metadata_props` entry.
pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initializers_round_trip() {
        let mut g = GraphBuilder::new("t");
        g.init_f32("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let x = g.input("x", proto::elem::FLOAT, &[Dim::batch(), Dim::Fixed(2)]);
        let y = g.node("MatMul", &[&x, "w"], vec![]);
        g.output(&y, proto::elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
        g.metadata("k", "v");
        let model = decode_model(&g.to_bytes()).expect("decodes");
        let (dims, values) = initializer_f32(&model, "w").expect("present");
        assert_eq!(dims, vec![2, 3]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!(metadata(&model, "k"), Some("v"));
        assert!(matches!(
            initializer_f32(&model, "nope"),
            Err(OnnxError::MissingInitializer(_))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_model(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn zero_valued_attributes_are_written() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", proto::elem::FLOAT, &[Dim::Fixed(1)]);
        let y = g.node("Gemm", &[&x, &x], vec![builder::attr_int("transA", 0)]);
        g.output(&y, proto::elem::FLOAT, &[Dim::Fixed(1)]);
        let model = decode_model(&g.to_bytes()).expect("decodes");
        let node = &model.graph.expect("graph").node[0];
        assert_eq!(node.attribute[0].i, Some(0));
    }
}
