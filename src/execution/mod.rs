//! Batch execution: what happens to a batch the batcher formed, on an instance thread. Jobs of
//! different lengths are padded to the batch's longest ([`padding`]), the batch runs on its
//! backend, and each job gets its rows back, cut to its own lengths ([`batch`]). A text model's
//! strings become its token inputs before batching ([`text`]).
//!
//! Sits after `batching` and before `runtime` in the flow. It names no job type: a batch hands
//! each job its outputs through [`batch::BatchJob`], which `jobs` implements.

pub mod batch;
pub mod generate;
pub mod padding;
pub mod text;
