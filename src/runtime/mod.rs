//! ONNX Runtime: the environment, execution providers and sessions.
//!
//! Inference runs on dedicated threads behind the synchronous [`Backend`] trait, so the worker can
//! be driven by the real ONNX Runtime or by a fake in tests.

pub mod env;
