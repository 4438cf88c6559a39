//! Dynamic batching: the pure policy ([`policy`]) and the task that drives it per model
//! version ([`task`]). Third stage of the flow: `broker` → `batching` → `runtime`.

pub(crate) mod policy;
pub(crate) mod task;

pub use policy::{
    split_rows, BatchKey, BatchLimits, Batcher, Decision, Item, LengthsKey, PadLimits,
};
pub(crate) use task::{batch_task, FailBatch, MakeTask};
