//! infermq: ONNX models as a service over RabbitMQ.
//!
//! The flow of a prediction job, in one direction: [`broker`] (consume) → [`jobs`] (each job's
//! lifecycle from delivery to settlement; [`protocol`] decodes it) → [`serving`] (the model
//! version that runs it) → [`batching`] (dynamic batches per version) → [`execution`] (padding,
//! tokenization, the batch run, each job's rows back) → [`runtime`] (ONNX Runtime sessions); the
//! answer goes back out through [`broker`] (publish with confirms, then ack). Models are found
//! by [`repository`], new versions made by [`training`]; [`tokenizer`] turns the text of jobs
//! for text models into token ids; [`telemetry`] exposes Prometheus metrics and health;
//! [`worker`] wires it all together. Beside the flow:
//! [`gateway`] (KServe v2 over HTTP onto the queues), [`client`] (a producer of the contract),
//! [`onnx`] (ONNX models as data), [`config`].
//!
//! What it exposes, and why: the library exists so that the worker's binary (`src/main.rs`),
//! the integration tests (`tests/`), the benchmarks (`benches/`) and the tools of the `tools/`
//! workspace member (the load generator, the measuring probes, `make-models`) build against one
//! copy of the code. Each module below is public because one of them uses it, and inside each only what
//! they name is public: entry points (`worker::run`, `gateway::run`), the contract's types and
//! names (`protocol`, `broker::headers`, `broker::Topology`, `client`), and the pieces the
//! tests and benchmarks drive on their own (the batching policy, runtime backends, training's
//! parts). Everything else is `pub(crate)` or private. The stable interface for other programs
//! is the wire contract, `docs/PROTOCOL.md`, not this crate's API.
//!
//! What the tools (`tools/`) use, and nothing more is made public for them:
//! - the load generator (`infermq-bench`), a producer: [`client`] (the connection to a list of
//!   broker URLs, a model's queue name, a job's properties), [`broker::headers`] (the
//!   contract's header names and readers), [`broker::Topology`] (queue arguments and names),
//!   [`broker::PublishOutcome`], [`protocol`]'s `ModelName` and `DataType`, and
//!   [`config::Settings`] for `broker.tls` and `log`;
//! - the ONNX Runtime probes (`ort-throughput`, `ort-memory`, `padded-throughput`): the
//!   [`runtime`] backend (`env`, `OrtBackend`, `SessionOptions`, `load_version`, `cuda`), the
//!   batching policy and padding plan they measure, and [`protocol::Tensor`];
//! - `make-large-model`: [`onnx`]'s graph builder and external-data layout, and training's
//!   seeded generator; `make-models` (the bundled models): [`training`]'s bundled networks,
//!   encoder and training loop, and [`tokenizer`]'s WordPiece trainer.

pub mod batchfile;
pub mod batching;
pub mod broker;
pub mod client;
pub mod config;
pub mod execution;
pub mod gateway;
pub(crate) mod jobs;
pub mod onnx;
pub mod protocol;
pub mod repository;
pub mod runtime;
pub mod serving;
pub mod telemetry;
pub mod tokenizer;
pub mod training;
pub mod worker;
