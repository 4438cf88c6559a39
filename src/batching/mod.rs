//! Dynamic batching: the pure policy ([`policy`]) and the task that drives it per model version.

pub mod policy;

pub use policy::{split_rows, BatchLimits, Batcher, Decision, Item};
