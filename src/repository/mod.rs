//! The model repository: models and versions on disk ([`store`]) and how each is served
//! ([`config`], its `config.toml`, with its inputs' pad values and text input in [`inputs`]),
//! kept in step with the disk and with `model_version_ready` events; a version's external data
//! files, checked to stay inside it ([`external`]).

pub mod config;
pub mod describe;
pub(crate) mod external;
pub mod inputs;
mod store;
pub mod warmup;

pub use config::{ModelConfig, ModelConfigError, VersionPolicy};
pub use store::{ModelEntry, ModelStore, RepositoryError};
