//! Telemetry: Prometheus metrics, the HTTP health and model endpoints, and logging setup.
//!
//! Beside the flow rather than in it: every stage (`broker`, `batching`, `runtime`,
//! `repository`, `training`) records into one shared [`Metrics`]; [`http::serve`] exposes
//! it with `/healthz`, `/readyz` and `/v2/models`; [`logging::init`] installs `tracing`
//! output once at start; [`trace`] continues producers' W3C trace context in each job's spans.
//! `docs/METRICS.md` documents every series and endpoint.

pub(crate) mod broker_node;
pub mod generation;
pub(crate) mod http;
pub(crate) mod load;
pub mod logging;
pub(crate) mod metrics;
mod outcome;
pub(crate) mod supervision;
pub mod tenants;
pub mod trace;

pub(crate) use http::{serve, HttpState, StatusSource};
pub use logging::LogFormat;
pub use metrics::{Metrics, ModelMetrics, Outcome};
