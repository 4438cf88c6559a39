//! The models bundled in `models/`, generated deterministically by `make-models`.
//!
//! Every model here is fixed by a seed, so regenerating gives identical bytes (checked by
//! `tests/models_reproducible.rs`). `iris` is not here: `make-models` trains it with
//! [`crate::training`] on `models/iris/iris.csv` (see [`IRIS_JOB`]).

use super::rng::SeededRng;
use crate::onnx::builder::{Dim, GraphBuilder};
use crate::onnx::proto::elem;

/// Seed of the `mlp` weights.
pub const MLP_SEED: u64 = 256;
/// The training job that makes `iris` version 1 (its data is replaced by `models/iris/iris.csv`).
pub const IRIS_JOB: &str = r#"{"id": "iris-v1", "model_name": "iris",
 "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
 "loss": "sparse_categorical_crossentropy",
 "optimizer": {"type": "adam", "learning_rate": 0.01},
 "epochs": 150, "batch_size": 16, "seed": 7,
 "data": {"x": [[0, 0, 0, 0]], "y": [0]}}"#;

/// A dense layer's parameters, row-major `[inputs, units]` weight and `[units]` bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub units: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// ONNX activation op (`Relu`, `Sigmoid`, `Tanh`, `Softmax`), or `None` for linear.
    pub activation: Option<&'static str>,
}

/// Appends `MatMul → Add → activation` for each layer, naming the parameters `layer{i}.weight`
/// and `layer{i}.bias`; the last layer's output is named `output`.
pub fn dense_stack(g: &mut GraphBuilder, input: &str, layers: &[Dense], output: &str) {
    let mut x = input.to_string();
    for (i, layer) in layers.iter().enumerate() {
        let w = g.init_f32(
            &format!("layer{i}.weight"),
            &[layer.inputs as i64, layer.units as i64],
            &layer.weight,
        );
        let b = g.init_f32(
            &format!("layer{i}.bias"),
            &[layer.units as i64],
            &layer.bias,
        );
        let last = i + 1 == layers.len();
        let h = g.node("MatMul", &[&x, &w], vec![]);
        x = match layer.activation {
            None if last => {
                g.node_to("Add", &[&h, &b], &[output], vec![]);
                output.to_string()
            }
            None => g.node("Add", &[&h, &b], vec![]),
            Some(act) => {
                let z = g.node("Add", &[&h, &b], vec![]);
                let attrs = if act == "Softmax" {
                    vec![crate::onnx::builder::attr_int("axis", -1)]
                } else {
                    vec![]
                };
                if last {
                    g.node_to(act, &[&z], &[output], attrs);
                    output.to_string()
                } else {
                    g.node(act, &[&z], attrs)
                }
            }
        };
    }
}

/// Seeded dense layers: He-uniform weights, zero biases.
pub fn seeded_layers(seed: u64, sizes: &[(usize, usize, Option<&'static str>)]) -> Vec<Dense> {
    let mut rng = SeededRng::new(seed);
    sizes
        .iter()
        .map(|&(inputs, units, activation)| Dense {
            inputs,
            units,
            weight: rng.he_uniform(inputs, units),
            bias: vec![0.0; units],
            activation,
        })
        .collect()
}

fn batched(n: i64) -> Vec<Dim> {
    vec![Dim::batch(), Dim::Fixed(n)]
}

/// `mlp`: `input` FP32 [-1,256] → 1024 relu → 1024 relu → 10 → `logits` FP32 [-1,10].
pub fn mlp_layers() -> Vec<Dense> {
    seeded_layers(
        MLP_SEED,
        &[
            (256, 1024, Some("Relu")),
            (1024, 1024, Some("Relu")),
            (1024, 10, None),
        ],
    )
}

/// The `mlp` model.
pub fn mlp() -> Vec<u8> {
    let mut g = GraphBuilder::new("mlp");
    g.doc("Seeded 256-1024-1024-10 ReLU MLP (He-uniform weights) for load and batching tests");
    let x = g.input("input", elem::FLOAT, &batched(256));
    dense_stack(&mut g, &x, &mlp_layers(), "logits");
    g.output("logits", elem::FLOAT, &batched(10));
    g.to_bytes()
}

/// `mixed`: `ids` INT64 [-1,4], `mask` BOOL [-1,4] → `masked_sum` INT64 [-1,1] (sum of ids
/// where mask) and `inverted` BOOL [-1,4] (not mask).
pub fn mixed() -> Vec<u8> {
    let mut g = GraphBuilder::new("mixed");
    g.doc("Integer and boolean tensors: masked row sums and the inverted mask");
    let ids = g.input("ids", elem::INT64, &batched(4));
    let mask = g.input("mask", elem::BOOL, &batched(4));
    let axes = g.init_i64("axes", &[1], &[1]);
    let m = g.node(
        "Cast",
        &[&mask],
        vec![crate::onnx::builder::attr_int("to", elem::INT64 as i64)],
    );
    let prod = g.node("Mul", &[&ids, &m], vec![]);
    g.node_to(
        "ReduceSum",
        &[&prod, &axes],
        &["masked_sum"],
        vec![crate::onnx::builder::attr_int("keepdims", 1)],
    );
    g.node_to("Not", &[&mask], &["inverted"], vec![]);
    g.output("masked_sum", elem::INT64, &batched(1));
    g.output("inverted", elem::BOOL, &batched(4));
    g.to_bytes()
}

/// `scaler`: `x` FP32 [-1,8] and `sr` FP32 scalar (shape [], not batched) → `y` = x * sr.
pub fn scaler() -> Vec<u8> {
    let mut g = GraphBuilder::new("scaler");
    g.doc("Multiplies each row by a scalar input that has no batch dimension");
    let x = g.input("x", elem::FLOAT, &batched(8));
    let sr = g.input("sr", elem::FLOAT, &[]);
    g.node_to("Mul", &[&x, &sr], &["y"], vec![]);
    g.output("y", elem::FLOAT, &batched(8));
    g.to_bytes()
}

/// `fixed`: `x` FP32 `[3, 4]` (no batch dimension) → `y` FP32 `[4, 3]` = `2 * x^T`.
pub fn fixed() -> Vec<u8> {
    let mut g = GraphBuilder::new("fixed");
    g.doc("Fixed shapes, no batch dimension: y = 2 * transpose(x)");
    let x = g.input("x", elem::FLOAT, &[Dim::Fixed(3), Dim::Fixed(4)]);
    let two = g.init_f32("two", &[], &[2.0]);
    let t = g.node(
        "Transpose",
        &[&x],
        vec![crate::onnx::builder::attr_ints("perm", &[1, 0])],
    );
    g.node_to("Mul", &[&t, &two], &["y"], vec![]);
    g.output("y", elem::FLOAT, &[Dim::Fixed(4), Dim::Fixed(3)]);
    g.to_bytes()
}
