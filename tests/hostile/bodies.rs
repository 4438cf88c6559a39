//! Hostile bodies, header tables and the extra models the cases need.

use infermq::onnx::proto::elem;
use infermq::onnx::{Dim, GraphBuilder};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{json, Value};

/// `len` bytes of text starting with `tag` (so an echo can be recognised).
pub fn long_text(tag: &str, len: usize) -> String {
    let mut text = String::with_capacity(len);
    text.push_str(tag);
    while text.len() < len {
        text.push('x');
    }
    text
}

/// An iris job (`input` FP32 [rows, 4]) as JSON, to be edited by a case.
pub fn iris_job(id: &str, rows: usize) -> Value {
    let data: Vec<f32> = (0..rows * 4).map(|i| 1.0 + (i % 7) as f32 * 0.5).collect();
    json!({"id": id, "inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
}

pub fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

/// `count` repeats of `{"name": output}` in `outputs`, written directly (not via a `Value`
/// tree of 400,000 objects).
pub fn iris_job_with_outputs(id: &str, rows: usize, output: &str, count: usize) -> Vec<u8> {
    let mut body = bytes(&iris_job(id, rows));
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"outputs\":[");
    let one = format!("{{\"name\":\"{output}\"}}");
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(one.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// A valid training job (inline iris-like data) with `layers` units, to be edited by a case.
pub fn train_job(id: &str, model_name: &str, units: &[u64]) -> Value {
    let last = units.len() - 1;
    let layers: Vec<Value> = units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let activation = if i == last { "softmax" } else { "relu" };
            json!({"units": u, "activation": activation})
        })
        .collect();
    json!({
        "id": id, "model_name": model_name, "layers": layers,
        "loss": "sparse_categorical_crossentropy", "epochs": 1, "batch_size": 2,
        "data": {"x": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]],
                 "y": [0, 1, 1]}
    })
}

/// `count` small integer headers `h00000`, `h00001`, ….
pub fn many_headers(count: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for i in 0..count {
        table.insert(
            ShortString::from(format!("h{i:05}")),
            AMQPValue::ShortShortUInt((i % 251) as u8),
        );
    }
    table
}

/// One header `name` with a long string value.
pub fn long_header(name: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
    table
}

/// `fails`: loads, then fails inside ONNX Runtime for one row (4 values cannot be reshaped to
/// rows of 3): an `internal` failure on every delivery.
pub fn failing_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("fails");
    let x = g.input("input", elem::FLOAT, &[Dim::batch(), Dim::Fixed(4)]);
    let shape = g.init_i64("shape", &[2], &[-1, 3]);
    g.node_to("Reshape", &[&x, &shape], &["output"], vec![]);
    g.output("output", elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
    g.to_bytes()
}

/// `anydim`: `x` FP32 [batch, n] → Identity → `y`, with both dimensions dynamic, so a
/// zero-size dimension is not refused by the signature.
pub fn any_dim_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("anydim");
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Dynamic("n".into())]);
    g.node_to("Identity", &[&x], &["y"], vec![]);
    g.output("y", elem::FLOAT, &[Dim::batch(), Dim::Dynamic("n".into())]);
    g.to_bytes()
}

/// Adds `name` version 1 (`model.onnx` = `bytes`) to a repository.
pub fn add_model(repo: &std::path::Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(repo.join(name).join("1")).expect("model dir");
    std::fs::write(repo.join(name).join("1/model.onnx"), bytes).expect("model file");
}
