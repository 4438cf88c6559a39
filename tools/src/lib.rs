//! infermq-tools: what the repository measures infermq with, kept out of the worker.
//!
//! [`bench`] is the end-to-end load generator behind the `infermq-bench` binary
//! (`docs/LOADGEN.md`); it speaks only the wire contract, through the producer's side the
//! `infermq` library exposes (`infermq::client`, `infermq::broker`'s names and connection).
//! The other binaries (`src/bin/`) probe ONNX Runtime (`ort-throughput`, `ort-memory`,
//! `padded-throughput`) and generate large models to load (`make-large-model`).

pub mod bench;
