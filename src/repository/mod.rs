//! The model repository: models and versions on disk ([`store`]), and the set of versions the
//! worker serves, kept in step with the disk and with `model_version_ready` events; a version's
//! external data files, checked to stay inside it ([`external`]).

pub mod describe;
pub mod external;
pub mod store;

pub use store::{valid_model_name, ModelEntry, ModelStore, RepositoryError};
