//! A small ONNX graph builder: initializers, nodes, typed inputs and outputs with dynamic
//! dimensions, opset import and `metadata_props`, serialised with `to_bytes()`.
//!
//! Serialisation is deterministic: the same calls in the same order give the same bytes, which is
//! what lets `make-models` and the training engine produce reproducible files.

use prost::Message;

use super::proto::{
    attr_type, tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// IR version written into every model (ONNX 1.13+, read by every ONNX Runtime since 1.14).
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written into every model.
pub const OPSET: i64 = 17;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic size, named (`"batch"`); ONNX Runtime reports it as -1.
    Dynamic(String),
}

impl Dim {
    /// The dynamic batch dimension.
    pub fn batch() -> Dim {
        Dim::Dynamic("batch".to_string())
    }
}

/// An attribute with an integer value.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        i: Some(value),
        r#type: attr_type::INT,
        ..Default::default()
    }
}

/// An attribute with a list of integers.
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        ints: values.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

/// A tensor with little-endian `raw_data`.
pub fn tensor_raw(name: &str, data_type: i32, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        data_type,
        dims: dims.to_vec(),
        raw_data: raw,
        ..Default::default()
    }
}

/// Little-endian bytes of `f32` values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes of `f64` values.
pub fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes of `i64` values.
pub fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Dynamic(p) => dimension::Value::DimParam(p.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Builds one graph and the model around it.
#[derive(Debug, Default, Clone)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
    metadata: Vec<(String, String)>,
    doc: String,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A fresh value name: `<prefix>_<n>`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Declares a graph output; `name` must be produced by a node (or be an input/initializer).
    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.graph.initializer.push(tensor);
        name
    }

    /// Adds an `f32` initializer.
    pub fn init_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        self.initializer(tensor_raw(
            name,
            super::proto::elem::FLOAT,
            dims,
            f32_bytes(values),
        ))
    }

    /// Adds an `i64` initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.initializer(tensor_raw(
            name,
            super::proto::elem::INT64,
            dims,
            i64_bytes(values),
        ))
    }

    /// Adds a node with explicit output names.
    pub fn node_to(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) {
        self.counter += 1;
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op_type}_{}", self.counter),
            op_type: op_type.to_string(),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// Adds a single-output node and returns the name of its (fresh) output.
    pub fn node(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&op_type.to_ascii_lowercase());
        self.node_to(op_type, inputs, &[&out], attributes);
        out
    }

    /// Adds a `metadata_props` entry to the model.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// Sets the model's `doc_string`.
    pub fn doc(&mut self, doc: &str) {
        self.doc = doc.to_string();
    }

    /// The finished model.
    pub fn into_model(self) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "infermq".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: self.doc,
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }

    /// The finished model, serialised.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.clone().into_model().encode_to_vec()
    }
}
