//! The job lifecycle, in one place: from a delivery to its settlement.
//!
//! Every delivery, prediction or training, goes the same way:
//! 1. [`crate::broker::envelope::Envelope::read`] reads its properties and headers once: where
//!    answers go (a `reply_to` naming the fleet's own queues is refused), its names, which
//!    delivery it is, and the contract's headers (or the error naming the bad one).
//! 2. [`inflight::InFlight`] takes the delivery over: it is settled exactly once — answered then
//!    acked, requeued, or dead-lettered — and counted once when the broker has done so; dropped
//!    unsettled, it requeues its job.
//! 3. [`predict`] or [`train`] checks and runs the job; every failure is an
//!    [`error::JobError`] that carries its [`error::Fate`].
//!
//! Each kind of job is one module implementing [`kind::JobKind`]: which consumers it wants,
//! which queue each reads and how, and what becomes of a delivery. The consumer loop around it
//! is the same for every kind (`worker::consumer`).
//!
//! Prediction jobs go through the [`registry`] (served versions and their batchers, kept in
//! step with the repository by [`registry::ModelSync`]) and [`batch`] (running a batch on an
//! instance thread); [`assembly`] puts a split job's outputs back together, and [`padding`]
//! pads a batch of jobs of different lengths and cuts each job's outputs back; [`text`] turns a
//! text model's strings into its token inputs.

pub mod answerer;
pub mod assembly;
pub mod batch;
pub mod early;
pub mod error;
pub mod inflight;
pub mod kind;
pub mod metadata;
pub mod padding;
pub mod predict;
pub mod registry;
pub mod text;
pub mod train;
