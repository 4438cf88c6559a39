//! The ONNX graphs of a dense network: inference, evaluation (loss), gradients, and the
//! training step (forward, loss, reverse-mode gradients, optimizer update).
//!
//! Parameters are named `layer{i}.weight` (`[inputs, units]`) and `layer{i}.bias` (`[units]`).
//! In the evaluation, gradient and step graphs they are inputs, as are `x` [-1, features] and `y`
//! [-1, units]. The step graph also takes the optimizer state (`{param}.velocity` for sgd,
//! `{param}.m` and `{param}.v` for adam), the learning rate `lr` and the 1-based step number
//! `step` (scalars, so schedules need no new graph), and returns `loss`, `prediction` and every
//! parameter and state under its name with `.next` appended.

use crate::onnx::builder::Dim;
use crate::onnx::proto::elem;

use super::autodiff::Tape;
use super::job::{Activation, Layer, Loss, Optimizer};

/// Probabilities are clipped to `[EPSILON, 1 - EPSILON]` before the logarithm of a
/// cross-entropy, as Keras does.
pub const EPSILON: f64 = 1e-7;

/// A stack of dense layers and the loss it is trained with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub inputs: usize,
    pub layers: Vec<Layer>,
    pub loss: Loss,
}

impl Network {
    /// Number of outputs.
    pub fn units(&self) -> usize {
        self.layers.last().map_or(0, |l| l.units)
    }

    /// Names and shapes of the parameters, in graph order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut fan_in = self.inputs;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("layer{i}.weight"), vec![fan_in, l.units]));
            out.push((format!("layer{i}.bias"), vec![l.units]));
            fan_in = l.units;
        }
        out
    }

    /// Names of the optimizer state tensors of one parameter.
    pub fn state_names(optimizer: &Optimizer, param: &str) -> Vec<String> {
        match optimizer {
            Optimizer::Sgd { .. } => vec![format!("{param}.velocity")],
            Optimizer::Adam { .. } => vec![format!("{param}.m"), format!("{param}.v")],
        }
    }

    fn forward(&self, tape: &mut Tape, x: &str, params: &[String]) -> String {
        let mut h = x.to_string();
        for (i, layer) in self.layers.iter().enumerate() {
            let z = tape.matmul(&h, &params[2 * i]);
            let z = tape.add_bias(&z, &params[2 * i + 1]);
            h = match layer.activation {
                Activation::Relu => tape.relu(&z),
                Activation::Sigmoid => tape.sigmoid(&z),
                Activation::Tanh => tape.tanh(&z),
                Activation::Softmax => tape.softmax(&z),
                Activation::Linear => z,
            };
        }
        h
    }

    fn loss_value(&self, tape: &mut Tape, pred: &str, y: &str) -> String {
        match self.loss {
            Loss::Mse => {
                let d = tape.sub(pred, y);
                let sq = tape.mul(&d, &d);
                tape.mean_all(&sq)
            }
            Loss::BinaryCrossentropy => {
                let p = tape.clip(pred, EPSILON, 1.0 - EPSILON);
                let log_p = tape.log(&p);
                let pos = tape.mul(y, &log_p);
                let q = tape.const_sub(1.0, &p);
                let log_q = tape.log(&q);
                let not_y = tape.const_sub(1.0, y);
                let neg = tape.mul(&not_y, &log_q);
                let s = tape.add(&pos, &neg);
                let m = tape.mean_all(&s);
                tape.scale(&m, -1.0)
            }
            Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy => {
                let p = tape.clip(pred, EPSILON, 1.0 - EPSILON);
                let log_p = tape.log(&p);
                let terms = tape.mul(y, &log_p);
                let per_row = tape.sum_last(&terms);
                let m = tape.mean_all(&per_row);
                tape.scale(&m, -1.0)
            }
        }
    }

    /// Declares `x`, `y` and the parameters as inputs; returns (prediction, loss, params).
    fn loss_tape(&self, tape: &mut Tape) -> (String, String, Vec<String>) {
        let x = tape.input("x", &[Dim::batch(), Dim::Fixed(self.inputs as i64)], false);
        let y = tape.input("y", &[Dim::batch(), Dim::Fixed(self.units() as i64)], false);
        let params: Vec<String> = self
            .parameters()
            .iter()
            .map(|(name, shape)| {
                let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
                tape.input(name, &dims, true)
            })
            .collect();
        let pred = self.forward(tape, &x, &params);
        let loss = self.loss_value(tape, &pred, &y);
        (pred, loss, params)
    }

    fn batch_out(&self) -> Vec<Dim> {
        vec![Dim::batch(), Dim::Fixed(self.units() as i64)]
    }

    /// Inference model with the parameters as initializers: `input` FP32 [-1, inputs] → `output`
    /// FP32 [-1, units], plus `metadata_props`.
    pub fn inference_model(
        &self,
        params: &[Vec<f32>],
        input: &str,
        output: &str,
        metadata: &[(String, String)],
        doc: &str,
    ) -> Vec<u8> {
        let mut tape = Tape::new("infermq_dense", elem::FLOAT);
        let x = tape.input(
            input,
            &[Dim::batch(), Dim::Fixed(self.inputs as i64)],
            false,
        );
        let names: Vec<String> = self
            .parameters()
            .iter()
            .zip(params)
            .map(|((name, shape), values)| {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                tape.graph().init_f32(name, &dims, values)
            })
            .collect();
        let pred = self.forward(&mut tape, &x, &names);
        let out_dims = self.batch_out();
        tape.output(&pred, output, &out_dims);
        let mut graph = tape.into_graph();
        graph.doc(doc);
        for (k, v) in metadata {
            graph.metadata(k, v);
        }
        graph.to_bytes()
    }

    /// Evaluation graph: inputs `x`, `y`, parameters; outputs `loss` (scalar) and `prediction`.
    pub fn eval_model(&self, elem_type: i32) -> Vec<u8> {
        let mut tape = Tape::new("infermq_eval", elem_type);
        let (pred, loss, _) = self.loss_tape(&mut tape);
        tape.output(&loss, "loss", &[]);
        let out = self.batch_out();
        tape.output(&pred, "prediction", &out);
        tape.into_graph().to_bytes()
    }

    /// Gradient graph: like [`Network::eval_model`], plus `grad.{param}` for every parameter.
    pub fn gradient_model(&self, elem_type: i32) -> Vec<u8> {
        let mut tape = Tape::new("infermq_gradients", elem_type);
        let (_, loss, params) = self.loss_tape(&mut tape);
        let refs: Vec<&str> = params.iter().map(String::as_str).collect();
        let grads = tape.gradients(&loss, &refs);
        tape.output(&loss, "loss", &[]);
        for ((name, shape), g) in self.parameters().iter().zip(&grads) {
            let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
            tape.output(g, &format!("grad.{name}"), &dims);
        }
        tape.into_graph().to_bytes()
    }

    /// Training-step graph (see the module documentation for its inputs and outputs).
    pub fn train_step_model(&self, optimizer: &Optimizer, elem_type: i32) -> Vec<u8> {
        let mut tape = Tape::new("infermq_train_step", elem_type);
        let (pred, loss, params) = self.loss_tape(&mut tape);
        let refs: Vec<&str> = params.iter().map(String::as_str).collect();
        let grads = tape.gradients(&loss, &refs);
        let lr = tape.input("lr", &[], false);
        let step = tape.input("step", &[], false);
        let shapes = self.parameters();
        let mut states = Vec::new();
        for (name, shape) in &shapes {
            let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
            let names = Network::state_names(optimizer, name);
            let inputs: Vec<String> = names.iter().map(|n| tape.input(n, &dims, false)).collect();
            states.push((dims, inputs));
        }
        let updates =
            super::optimizer::emit(&mut tape, optimizer, &lr, &step, &params, &grads, &states);
        tape.output(&loss, "loss", &[]);
        let out = self.batch_out();
        tape.output(&pred, "prediction", &out);
        for (value, name, dims) in updates {
            tape.output(&value, &format!("{name}.next"), &dims);
        }
        tape.into_graph().to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::decode_model;

    fn names(values: &[crate::onnx::proto::ValueInfoProto]) -> Vec<String> {
        values.iter().map(|v| v.name.clone()).collect()
    }

    #[test]
    fn step_graph_feeds_parameters_and_state_through() {
        let net = Network {
            inputs: 4,
            layers: vec![Layer {
                units: 3,
                activation: Activation::Softmax,
            }],
            loss: Loss::SparseCategoricalCrossentropy,
        };
        let adam = Optimizer::Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        };
        let model = decode_model(&net.train_step_model(&adam, elem::FLOAT)).expect("decodes");
        let graph = model.graph.expect("graph");
        let inputs = names(&graph.input);
        let outputs = names(&graph.output);
        let expect_in = [
            "x",
            "y",
            "layer0.weight",
            "layer0.bias",
            "lr",
            "step",
            "layer0.weight.m",
            "layer0.weight.v",
            "layer0.bias.m",
            "layer0.bias.v",
        ];
        assert_eq!(inputs, expect_in);
        for name in &expect_in[2..] {
            if *name != "lr" && *name != "step" {
                assert!(outputs.contains(&format!("{name}.next")), "{name}.next");
            }
        }
        assert_eq!(&outputs[..2], ["loss", "prediction"]);
    }

    #[test]
    fn parameters_follow_the_layers() {
        let net = Network {
            inputs: 5,
            layers: vec![
                Layer {
                    units: 7,
                    activation: Activation::Tanh,
                },
                Layer {
                    units: 2,
                    activation: Activation::Linear,
                },
            ],
            loss: Loss::Mse,
        };
        let p = net.parameters();
        assert_eq!(p[0], ("layer0.weight".to_string(), vec![5, 7]));
        assert_eq!(p[3], ("layer1.bias".to_string(), vec![2]));
        assert_eq!(net.units(), 2);
    }
}
