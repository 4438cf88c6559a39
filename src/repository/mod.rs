//! The model repository: models and versions on disk ([`store`]), and the set of versions the
//! worker serves, kept in step with the disk and with `model_version_ready` events.

pub mod describe;
mod store;

pub use store::{ModelEntry, ModelStore, RepositoryError};
