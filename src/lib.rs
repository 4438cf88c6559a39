//! infermq: ONNX models as a service over RabbitMQ.
//!
//! The flow of a prediction job: [`protocol`] (decode) → [`broker`] (consume, publish with
//! confirms) → [`batching`] (dynamic batches per model version) → [`runtime`] (ONNX Runtime
//! sessions), with models found by [`repository`] and new versions made by [`training`];
//! [`tokenizer`] turns the text of jobs for text models into token ids.
//! [`jobs`] owns each job's lifecycle from delivery to settlement; [`telemetry`] exposes
//! Prometheus metrics and health; [`worker`] wires it all together.

pub mod batching;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod gateway;
pub mod jobs;
pub mod onnx;
pub mod protocol;
pub mod repository;
pub mod runtime;
pub mod telemetry;
pub mod tokenizer;
pub mod training;
pub mod worker;
