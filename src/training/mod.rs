//! Training: builds ONNX inference and training-step graphs and runs the training loop on ONNX
//! Runtime, producing a new model version.

pub mod rng;
