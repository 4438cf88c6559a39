//! Model versions: which are served, how each is loaded, checked, admitted and warmed, and the
//! registry that jobs resolve their model version in.
//!
//! [`ModelSync`] scans the repository ([`crate::repository`]) and loads new versions (all their
//! instances) before unloading the versions they replace, so serving never pauses; a version is
//! checked once per load ([`crate::repository::external::check_version`]), admitted against the
//! worker's memory ([`admission`], before its sessions are made and again with its batch size
//! known) and warmed ([`warmup`]) before [`ModelRegistry`] serves it. A version that fails any of
//! these is refused with its reason (log, metric, `/v2/models`, `/readyz`) while older ones keep
//! serving. [`served_inputs`] reads what a version takes in (its padding, its text input);
//! [`stamp`] tells when a refused version's files changed; [`DeviceMemoryCollector`] reports
//! what each version's sessions hold on their devices.
//!
//! Sits between `jobs` (which resolve versions here) and `batching` / `execution` (which run
//! them); `runtime` makes and measures the sessions.

pub mod admission;
pub mod decoder;
mod device_memory;
mod prepare;
mod registry;
mod served_inputs;
mod stamp;
mod sync;
pub mod warmup;

pub use device_memory::DeviceMemoryCollector;
pub use registry::{ConsumingGuard, ModelRegistry, ResolveError, ServedVersion};
pub use served_inputs::{version_inputs, VersionInputs};
pub use sync::{BackendLoader, ModelSync, OrtLoader};
