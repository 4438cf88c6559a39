//! Reverse-mode differentiation over the ONNX ops the training graphs use.
//!
//! A [`Tape`] emits forward nodes into a [`GraphBuilder`] and records each op; [`Tape::gradients`]
//! then walks the record backwards and emits, as more ONNX nodes, the gradient of a scalar with
//! respect to chosen values. Binary ops take operands of the same shape (no broadcasting between
//! differentiable values); scalar constants enter through [`Tape::scale`], [`Tape::const_sub`]
//! and [`Tape::clip`]. The element type is FLOAT for training and DOUBLE for gradient checks.

use std::collections::{HashMap, HashSet};

use crate::onnx::builder::{attr_int, f32_bytes, f64_bytes, tensor_raw, Dim, GraphBuilder};
use crate::onnx::proto::elem;

#[derive(Debug, Clone)]
enum Op {
    MatMul { a: String, w: String },
    AddBias { h: String, b: String },
    Relu { x: String },
    Sigmoid,
    Tanh,
    Softmax,
    Clip { x: String, lo: String, hi: String },
    Log { x: String },
    Add { a: String, b: String },
    Sub { a: String, b: String },
    Mul { a: String, b: String },
    ConstSub { x: String },
    Scale { x: String, c: String },
    MeanAll { x: String },
    SumLast { x: String },
}

#[derive(Debug, Clone)]
struct Entry {
    op: Op,
    /// The first input, for unary ops whose gradient needs only the output.
    input: String,
    output: String,
}

/// A graph under construction that remembers how to differentiate it.
#[derive(Debug, Clone)]
pub struct Tape {
    graph: GraphBuilder,
    elem: i32,
    entries: Vec<Entry>,
    /// Values that depend on a differentiable input.
    live: HashSet<String>,
    constants: HashMap<u64, String>,
    axes_last: Option<String>,
    axes_first: Option<String>,
}

impl Tape {
    /// A new tape over `FLOAT` (`elem::FLOAT`) or `DOUBLE` (`elem::DOUBLE`) values.
    pub fn new(name: &str, elem_type: i32) -> Self {
        Tape {
            graph: GraphBuilder::new(name),
            elem: elem_type,
            entries: Vec::new(),
            live: HashSet::new(),
            constants: HashMap::new(),
            axes_last: None,
            axes_first: None,
        }
    }

    /// The element type of every floating-point value on this tape.
    pub fn elem(&self) -> i32 {
        self.elem
    }

    /// The graph, for nodes that need no gradient (optimizer updates, outputs).
    pub fn graph(&mut self) -> &mut GraphBuilder {
        &mut self.graph
    }

    /// The finished graph.
    pub fn into_graph(self) -> GraphBuilder {
        self.graph
    }

    /// Declares a graph input; gradients flow to it when `differentiable`.
    pub fn input(&mut self, name: &str, dims: &[Dim], differentiable: bool) -> String {
        let n = self.graph.input(name, self.elem, dims);
        if differentiable {
            self.live.insert(n.clone());
        }
        n
    }

    /// Declares a graph output of this tape's element type.
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        self.graph.node_to("Identity", &[value], &[name], vec![]);
        self.graph.output(name, self.elem, dims);
    }

    /// Adds a tensor of this tape's element type as an initializer.
    pub fn constant(&mut self, name: &str, dims: &[i64], values: &[f64]) -> String {
        let raw = if self.elem == elem::DOUBLE {
            f64_bytes(values)
        } else {
            f32_bytes(&values.iter().map(|&v| v as f32).collect::<Vec<_>>())
        };
        self.graph
            .initializer(tensor_raw(name, self.elem, dims, raw))
    }

    /// A scalar constant (shared between uses).
    pub fn scalar(&mut self, value: f64) -> String {
        if let Some(name) = self.constants.get(&value.to_bits()) {
            return name.clone();
        }
        let name = format!("const_{}", self.constants.len());
        self.constant(&name, &[], &[value]);
        self.constants.insert(value.to_bits(), name.clone());
        name
    }

    fn axes(&mut self, last: bool) -> String {
        let slot = if last {
            &self.axes_last
        } else {
            &self.axes_first
        };
        if let Some(a) = slot {
            return a.clone();
        }
        let name = if last { "axes_last" } else { "axes_first" };
        let a = self
            .graph
            .init_i64(name, &[1], &[if last { -1 } else { 0 }]);
        if last {
            self.axes_last = Some(a.clone());
        } else {
            self.axes_first = Some(a.clone());
        }
        a
    }

    fn record(&mut self, op: Op, input: &str, output: String, inputs: &[&str]) -> String {
        if inputs.iter().any(|i| self.live.contains(*i)) {
            self.live.insert(output.clone());
            self.entries.push(Entry {
                op,
                input: input.to_string(),
                output: output.clone(),
            });
        }
        output
    }

    /// `a @ w` for `a` `[B, n]` and `w` `[n, m]`.
    pub fn matmul(&mut self, a: &str, w: &str) -> String {
        let y = self.graph.node("MatMul", &[a, w], vec![]);
        let op = Op::MatMul {
            a: a.into(),
            w: w.into(),
        };
        self.record(op, a, y, &[a, w])
    }

    /// `h + b` for `h` `[B, m]` and a bias `b` `[m]`.
    pub fn add_bias(&mut self, h: &str, b: &str) -> String {
        let y = self.graph.node("Add", &[h, b], vec![]);
        let op = Op::AddBias {
            h: h.into(),
            b: b.into(),
        };
        self.record(op, h, y, &[h, b])
    }

    pub fn relu(&mut self, x: &str) -> String {
        let y = self.graph.node("Relu", &[x], vec![]);
        self.record(Op::Relu { x: x.into() }, x, y, &[x])
    }

    pub fn sigmoid(&mut self, x: &str) -> String {
        let y = self.graph.node("Sigmoid", &[x], vec![]);
        self.record(Op::Sigmoid, x, y, &[x])
    }

    pub fn tanh(&mut self, x: &str) -> String {
        let y = self.graph.node("Tanh", &[x], vec![]);
        self.record(Op::Tanh, x, y, &[x])
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: &str) -> String {
        let y = self.graph.node("Softmax", &[x], vec![attr_int("axis", -1)]);
        self.record(Op::Softmax, x, y, &[x])
    }

    /// `min(max(x, lo), hi)`; the gradient passes where `lo < x < hi`.
    pub fn clip(&mut self, x: &str, lo: f64, hi: f64) -> String {
        let l = self.scalar(lo);
        let h = self.scalar(hi);
        let y = self.graph.node("Clip", &[x, &l, &h], vec![]);
        let op = Op::Clip {
            x: x.into(),
            lo: l,
            hi: h,
        };
        self.record(op, x, y, &[x])
    }

    pub fn log(&mut self, x: &str) -> String {
        let y = self.graph.node("Log", &[x], vec![]);
        self.record(Op::Log { x: x.into() }, x, y, &[x])
    }

    /// Elementwise `a + b` (same shapes).
    pub fn add(&mut self, a: &str, b: &str) -> String {
        let y = self.graph.node("Add", &[a, b], vec![]);
        let op = Op::Add {
            a: a.into(),
            b: b.into(),
        };
        self.record(op, a, y, &[a, b])
    }

    /// Elementwise `a - b` (same shapes).
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        let y = self.graph.node("Sub", &[a, b], vec![]);
        let op = Op::Sub {
            a: a.into(),
            b: b.into(),
        };
        self.record(op, a, y, &[a, b])
    }

    /// Elementwise `a * b` (same shapes).
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        let y = self.graph.node("Mul", &[a, b], vec![]);
        let op = Op::Mul {
            a: a.into(),
            b: b.into(),
        };
        self.record(op, a, y, &[a, b])
    }

    /// `c - x` for a scalar constant `c`.
    pub fn const_sub(&mut self, c: f64, x: &str) -> String {
        let c = self.scalar(c);
        let y = self.graph.node("Sub", &[&c, x], vec![]);
        self.record(Op::ConstSub { x: x.into() }, x, y, &[x])
    }

    /// `c * x` for a scalar constant `c`.
    pub fn scale(&mut self, x: &str, c: f64) -> String {
        let c = self.scalar(c);
        let y = self.graph.node("Mul", &[x, &c], vec![]);
        self.record(Op::Scale { x: x.into(), c }, x, y, &[x])
    }

    /// The mean of all elements, a scalar.
    pub fn mean_all(&mut self, x: &str) -> String {
        let y = self
            .graph
            .node("ReduceMean", &[x], vec![attr_int("keepdims", 0)]);
        self.record(Op::MeanAll { x: x.into() }, x, y, &[x])
    }

    /// The sum over the last axis: `[B, m]` → `[B]`.
    pub fn sum_last(&mut self, x: &str) -> String {
        let axes = self.axes(true);
        let y = self
            .graph
            .node("ReduceSum", &[x, &axes], vec![attr_int("keepdims", 0)]);
        self.record(Op::SumLast { x: x.into() }, x, y, &[x])
    }

    /// `v` cast to the tape's element type (a 0/1 mask from a condition, a count).
    fn mask(&mut self, v: &str) -> String {
        let to = attr_int("to", self.elem as i64);
        self.graph.node("Cast", &[v], vec![to])
    }

    /// `v` broadcast to the shape of `x` (the gradient of a reduction over `x`).
    fn expand_like(&mut self, v: &str, x: &str) -> String {
        let shape = self.graph.node("Shape", &[x], vec![]);
        self.graph.node("Expand", &[v, &shape], vec![])
    }

    /// Emits the gradient nodes of one entry: (input, gradient) pairs.
    fn backward(&mut self, e: &Entry, gy: &str) -> Vec<(String, String)> {
        let g = &mut self.graph;
        let y = e.output.as_str();
        match &e.op {
            Op::MatMul { a, w } => {
                let ga = g.node("Gemm", &[gy, w], vec![attr_int("transB", 1)]);
                let gw = g.node("Gemm", &[a, gy], vec![attr_int("transA", 1)]);
                vec![(a.clone(), ga), (w.clone(), gw)]
            }
            Op::AddBias { h, b } => {
                let axes = self.axes(false);
                let keep = attr_int("keepdims", 0);
                let gb = self.graph.node("ReduceSum", &[gy, &axes], vec![keep]);
                vec![(h.clone(), gy.to_string()), (b.clone(), gb)]
            }
            Op::Relu { x } => {
                let zero = self.scalar(0.0);
                let pos = self.graph.node("Greater", &[x, &zero], vec![]);
                let m = self.mask(&pos);
                vec![(x.clone(), self.graph.node("Mul", &[gy, &m], vec![]))]
            }
            Op::Sigmoid => {
                let one_minus = self.const_value_sub(1.0, y);
                let d = self.graph.node("Mul", &[y, &one_minus], vec![]);
                vec![(e.input.clone(), self.graph.node("Mul", &[gy, &d], vec![]))]
            }
            Op::Tanh => {
                let sq = self.graph.node("Mul", &[y, y], vec![]);
                let d = self.const_value_sub(1.0, &sq);
                vec![(e.input.clone(), self.graph.node("Mul", &[gy, &d], vec![]))]
            }
            Op::Softmax => {
                let gyy = self.graph.node("Mul", &[gy, y], vec![]);
                let axes = self.axes(true);
                let keep = attr_int("keepdims", 1);
                let s = self.graph.node("ReduceSum", &[&gyy, &axes], vec![keep]);
                let d = self.graph.node("Sub", &[gy, &s], vec![]);
                vec![(e.input.clone(), self.graph.node("Mul", &[y, &d], vec![]))]
            }
            Op::Clip { x, lo, hi } => {
                let above = self.graph.node("Greater", &[x, lo], vec![]);
                let below = self.graph.node("Less", &[x, hi], vec![]);
                let inside = self.graph.node("And", &[&above, &below], vec![]);
                let m = self.mask(&inside);
                vec![(x.clone(), self.graph.node("Mul", &[gy, &m], vec![]))]
            }
            Op::Log { x } => vec![(x.clone(), g.node("Div", &[gy, x], vec![]))],
            Op::Add { a, b } => vec![(a.clone(), gy.to_string()), (b.clone(), gy.to_string())],
            Op::Sub { a, b } => {
                let nb = g.node("Neg", &[gy], vec![]);
                vec![(a.clone(), gy.to_string()), (b.clone(), nb)]
            }
            Op::Mul { a, b } => {
                let ga = g.node("Mul", &[gy, b], vec![]);
                let gb = g.node("Mul", &[gy, a], vec![]);
                vec![(a.clone(), ga), (b.clone(), gb)]
            }
            Op::ConstSub { x } => vec![(x.clone(), g.node("Neg", &[gy], vec![]))],
            Op::Scale { x, c } => vec![(x.clone(), g.node("Mul", &[gy, c], vec![]))],
            Op::MeanAll { x } => {
                let size = g.node("Size", &[x], vec![]);
                let n = self.mask(&size);
                let per = self.graph.node("Div", &[gy, &n], vec![]);
                vec![(x.clone(), self.expand_like(&per, x))]
            }
            Op::SumLast { x } => {
                let axes = self.axes(true);
                let col = self.graph.node("Unsqueeze", &[gy, &axes], vec![]);
                vec![(x.clone(), self.expand_like(&col, x))]
            }
        }
    }

    /// `c - v` without recording (inside gradient computations).
    fn const_value_sub(&mut self, c: f64, v: &str) -> String {
        let c = self.scalar(c);
        self.graph.node("Sub", &[&c, v], vec![])
    }

    /// Emits the gradient of the scalar `of` with respect to each of `wrt`, in order. A value
    /// that `of` does not depend on gets a zero gradient of its own shape.
    pub fn gradients(&mut self, of: &str, wrt: &[&str]) -> Vec<String> {
        let mut grads: HashMap<String, String> = HashMap::new();
        grads.insert(of.to_string(), self.scalar(1.0));
        let entries = std::mem::take(&mut self.entries);
        for e in entries.iter().rev() {
            let Some(gy) = grads.get(&e.output).cloned() else {
                continue;
            };
            for (input, g) in self.backward(e, &gy) {
                if !self.live.contains(&input) {
                    continue;
                }
                let sum = match grads.remove(&input) {
                    Some(prev) => self.graph.node("Add", &[&prev, &g], vec![]),
                    None => g,
                };
                grads.insert(input, sum);
            }
        }
        self.entries = entries;
        wrt.iter()
            .map(|w| match grads.get(*w) {
                Some(g) => g.clone(),
                None => {
                    let zero = self.scalar(0.0);
                    self.graph.node("Mul", &[w, &zero], vec![])
                }
            })
            .collect()
    }
}
