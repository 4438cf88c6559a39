//! Memory admission: what a model version needs, and whether it fits beside the versions
//! already loaded under the worker's limit ([`crate::runtime::memory`]). Pure.
//!
//! A version needs its weights, once (its instances share a session per device:
//! [`crate::runtime::version`]); while loading, one more copy of its largest tensor (ONNX Runtime
//! prepacks weights one tensor at a time); a fixed cost per session; and per instance, a fixed
//! cost plus activations at its largest batch.
//!
//! The constants were measured with `ort-memory` (`scripts/bench-large.sh`), one session shared
//! by 1 and 4 instances, `Pss` before loading, after loading, and after batches at
//! `max_batch_size` (MiB):
//!
//! | model (weights) | session beyond weights | loading peak above loaded | per instance after runs |
//! |---|---|---|---|
//! | iris (0.001) | 4.6 | 0 | 0.1 |
//! | mlp (5.0), batch 64 | 9.9 | 0 | 3.5 |
//! | 6×4096² MatMuls (384), batch 32 | 4.6 | 64 (its largest tensor) | 1.8–7 |
//!
//! So: 16 MiB per session, 8 MiB per instance plus [`ACTIVATION_FACTOR`] times the bytes of a
//! largest batch's inputs and outputs (1 MiB for the MatMul chain at 32 rows). That bounds
//! every measurement above with room to spare; models whose intermediate activations dwarf
//! their inputs (convolutions at large batches) can need more than the estimate.

use crate::protocol::ModelSignature;
use crate::runtime::memory::MemoryLimit;

/// Fixed cost of one session beyond its weights.
pub const SESSION_BYTES: u64 = 16 << 20;
/// Fixed cost of one instance (its run's share of the arena, MLAS's per-thread buffers).
pub const INSTANCE_BYTES: u64 = 8 << 20;
/// Activations per instance, as a multiple of a largest batch's input and output bytes.
pub const ACTIVATION_FACTOR: u64 = 8;
/// Bytes assumed per BYTES element when sizing a batch.
pub const BYTES_ELEMENT: u64 = 64;

/// What one version needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionNeed {
    pub weights: u64,
    /// Held only while loading (one more copy of the largest tensor).
    pub loading: u64,
    pub sessions: u64,
    pub instances: u64,
    pub per_instance: u64,
    /// A decoder's key/value caches: every row it may run at full context.
    pub kv_cache: u64,
}

impl VersionNeed {
    /// The estimate for `instances` instances over `sessions` sessions, from the weights and
    /// largest tensor of the model file and the bytes of one largest batch's inputs and outputs
    /// ([`batch_io_bytes`]).
    pub fn estimate(
        weights: u64,
        largest_tensor: u64,
        sessions: usize,
        instances: usize,
        batch_io_bytes: u64,
    ) -> VersionNeed {
        VersionNeed {
            weights,
            loading: largest_tensor,
            sessions: sessions as u64,
            instances: instances as u64,
            per_instance: INSTANCE_BYTES
                .saturating_add(batch_io_bytes.saturating_mul(ACTIVATION_FACTOR)),
            kv_cache: 0,
        }
    }

    /// With a decoder's key/value caches of `bytes` (`kv_cache`).
    pub fn with_kv_cache(self, bytes: u64) -> VersionNeed {
        VersionNeed {
            kv_cache: bytes,
            ..self
        }
    }

    /// Everything: the most the version holds, while loading.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.loading)
            .saturating_add(self.sessions.saturating_mul(SESSION_BYTES))
            .saturating_add(self.instances.saturating_mul(self.per_instance))
            .saturating_add(self.kv_cache)
    }

    /// What the version keeps once loaded (without the loading copy).
    pub fn resident(&self) -> u64 {
        self.total().saturating_sub(self.loading)
    }
}

impl std::fmt::Display for VersionNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes (weights {}, {} more while loading, {} session(s) × {}, {} instance(s) × {}",
            self.total(),
            self.weights,
            self.loading,
            self.sessions,
            SESSION_BYTES,
            self.instances,
            self.per_instance
        )?;
        if self.kv_cache > 0 {
            write!(f, ", KV cache {}", self.kv_cache)?;
        }
        write!(f, ")")
    }
}

/// Bytes of the inputs and outputs of one batch of `rows` rows: dynamic dimensions other than
/// the batch count as 1, BYTES elements as [`BYTES_ELEMENT`].
pub fn batch_io_bytes(signature: &ModelSignature, rows: usize) -> u64 {
    signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .map(|spec| {
            let width = spec
                .datatype
                .element_size()
                .map_or(BYTES_ELEMENT, |w| w as u64);
            spec.shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    -1 if i == 0 => rows.max(1) as u64,
                    d if d >= 0 => d as u64,
                    _ => 1,
                })
                .fold(width, u64::saturating_mul)
        })
        .fold(0, u64::saturating_add)
}

/// A version refused for memory: the message names the model, its need and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {model} needs {need}, but the worker may use {limit} and loaded versions hold {in_use} bytes, leaving {free}")]
pub struct NotEnoughMemory {
    pub model: String,
    pub need: VersionNeed,
    pub limit: MemoryLimit,
    pub in_use: u64,
    pub free: u64,
}

/// Whether a version of `model` needing `need` fits under `limit` while loaded versions hold
/// `in_use` bytes.
pub fn admit(
    model: &str,
    need: &VersionNeed,
    limit: &MemoryLimit,
    in_use: u64,
) -> Result<(), NotEnoughMemory> {
    let free = limit.bytes.saturating_sub(in_use);
    if need.total() <= free {
        return Ok(());
    }
    Err(NotEnoughMemory {
        model: model.to_string(),
        need: *need,
        limit: limit.clone(),
        in_use,
        free,
    })
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
