//! RabbitMQ through lapin: the contract's topology, consuming, and publishing with confirms.
//!
//! Second stage of the flow: `protocol` → `broker` → `batching` → `runtime`.

pub mod acks;
pub mod addresses;
pub mod authz;
pub mod confirm;
pub mod connection;
pub mod envelope;
pub mod headers;
pub mod publisher;
pub mod tls;
pub mod topology;

pub use addresses::BrokerAddresses;
pub use confirm::PublishOutcome;
pub use publisher::{Command, Disposition, OutgoingMessage, Settlement};
pub use topology::Topology;
