//! Training: turns a job from `infermq.train` into a new model version.
//!
//! The flow: [`parse_job`] (JSON → [`TrainJob`]) → [`data`] (inline rows, CSV or `.npy` files)
//! → [`graph`] (ONNX graphs built here in Rust: inference, evaluation, and a training step whose
//! gradients come from [`autodiff`] and whose update comes from [`optimizer`]) → [`train`] (the
//! minibatch loop on ONNX Runtime, through a [`SessionFactory`] so the worker's execution
//! providers apply) → [`TrainOutcome::model`], a plain ONNX inference model.
//!
//! No other ML framework is involved and nothing runs Python.
//!
//! Before training, [`admit`] checks the model name (`training.allowed_models`) and reads the
//! served signature a new version must keep; [`train_within`] checks the [`Budget`] once the
//! data is read, and keeps to it while training.
//!
//! Modules depend one way, leaves first (`scripts/module-cycles.py src training onnx` checks):
//! `error`, `raw`, `rng`, `npy` → `spec`, `files` → `csv`, `inline` → `data` → `job` →
//! `autodiff` → `optimizer`, `metrics` → `graph` → `state` → `budget` → `admission` → `engine`;
//! `bundled` and `encoder` (the models of `make-models`) use `rng` and [`crate::onnx`], which
//! uses nothing of this crate.

mod admission;
pub mod autodiff;
mod budget;
pub mod bundled;
mod csv;
pub mod data;
pub mod encoder;
mod engine;
mod error;
mod files;
pub mod graph;
mod inline;
pub mod job;
mod metrics;
pub mod npy;
mod optimizer;
mod raw;
pub mod rng;
mod spec;
mod state;

#[cfg(test)]
mod job_tests;

pub use admission::{admit, check_allowed, served_signature};
pub use budget::{Budget, Rules};
pub use engine::{train, train_within, CpuSessions, EpochReport, SessionFactory, TrainOutcome};
pub use error::TrainingError;
pub use files::DataLimits;
pub use job::{metric_model_name, parse_job, TrainJob};
