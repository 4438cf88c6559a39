//! RabbitMQ through lapin: the contract's topology, consuming, and publishing with confirms.
//!
//! Second stage of the flow: `protocol` → `broker` → `batching` → `runtime`.

pub(crate) mod acks;
pub(crate) mod addresses;
pub(crate) mod authz;
pub(crate) mod confirm;
pub(crate) mod connection;
pub(crate) mod envelope;
pub mod headers;
pub(crate) mod publisher;
pub mod tls;
pub(crate) mod topology;

pub(crate) use addresses::BrokerAddresses;
pub use confirm::PublishOutcome;
pub(crate) use publisher::{Command, Disposition, OutgoingMessage, Settlement};
pub use topology::Topology;
