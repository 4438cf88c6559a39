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
//! Each kind of job is one module here saying which consumers it wants, which queue each reads
//! and how ([`kind::Consume`]), and what becomes of a delivery; `worker::kinds::JobKind`, one
//! enum, matches on the kinds, and the consumer loop around them is the same for every kind
//! (`worker::consumer`).
//!
//! A prediction job finds its model version in `serving` (the served versions and their
//! batchers), goes through `batching` and runs in a batch of `execution`; [`assembly`] puts a
//! split job's outputs back together and answers it. The path goes one way: nothing below
//! `jobs` names a job's types (a batch hands outputs back through `execution::BatchJob`).

pub mod answerer;
pub mod assembly;
pub mod cancel;
pub mod early;
pub mod error;
pub mod generate;
pub mod inflight;
pub mod kind;
pub mod metadata;
pub mod pacing;
pub mod predict;
pub mod train;
