//! What a session's memory arena holds on its device (the CUDA device the session runs on, or
//! the CPU), read from ONNX Runtime's allocator statistics (`AllocatorGetStats`): the memory a
//! loaded version holds there, for `/v2/models` and the metrics. On a GPU this is the version's
//! GPU memory (weights and activations in ONNX Runtime's CUDA arena, within `gpu_mem_limit`).
//! infermq's CPU sessions have no arena (their tensors come from the process's allocator), so
//! a version on the CPU reports none.

use std::ffi::CStr;
use std::ptr;
use std::sync::{Arc, Weak};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::AsPointer;

/// One arena's figures, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Reserved from the device by the arena (`TotalAllocated`): what the device has given up.
    pub reserved: u64,
    /// Handed out to tensors now (`InUse`).
    pub in_use: u64,
    /// The most ever handed out at once (`MaxInUse`).
    pub peak_in_use: u64,
}

impl ArenaStats {
    /// Reads the figures from ONNX Runtime's key-value statistics (unknown keys ignored).
    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> ArenaStats {
        let mut stats = ArenaStats::default();
        for (key, value) in pairs {
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            match key {
                "TotalAllocated" => stats.reserved = value,
                "InUse" => stats.in_use = value,
                "MaxInUse" => stats.peak_in_use = value,
                _ => {}
            }
        }
        stats
    }
}

/// Reads the arena of one session of a loaded version, without keeping the session alive.
#[derive(Debug, Clone)]
pub struct ArenaProbe {
    session: Weak<super::SharedSession>,
    device: Option<i32>,
}

impl ArenaProbe {
    pub fn new(session: &Arc<super::SharedSession>) -> ArenaProbe {
        ArenaProbe {
            session: Arc::downgrade(session),
            device: session.device(),
        }
    }

    /// The device, as labels and `/v2/models` name it: `cpu` or `cuda:<id>`.
    pub fn device(&self) -> String {
        match self.device {
            Some(id) => format!("cuda:{id}"),
            None => "cpu".to_string(),
        }
    }

    /// The arena's figures now; `None` once the session is gone, or without an arena.
    pub fn read(&self) -> Option<ArenaStats> {
        let session = self.session.upgrade()?;
        arena_stats(session.session(), self.device)
    }
}

/// The statistics of `session`'s arena on CUDA device `device` (`None`: the CPU). `None` when
/// the session has no arena there: infermq's CPU sessions run without one (the `ort` crate's
/// CPU provider turns ONNX Runtime's CPU arena off), so only CUDA sessions report figures.
pub fn arena_stats(session: &Session, device: Option<i32>) -> Option<ArenaStats> {
    let (kind, id) = match device {
        Some(id) => (AllocationDevice::CUDA, id),
        None => (AllocationDevice::CPU, 0),
    };
    let info = MemoryInfo::new(kind, id, AllocatorType::Arena, MemoryType::Default).ok()?;
    let allocator = Allocator::new(session, info).ok()?;
    let mut pairs: *mut ort::sys::OrtKeyValuePairs = ptr::null_mut();
    // SAFETY: `allocator` is a valid allocator of a live session; ONNX Runtime writes a new
    // key-value set to `pairs` (owned by us) or returns an error status.
    let status = unsafe { (ort::api().AllocatorGetStats)(allocator.ptr(), &mut pairs) };
    // SAFETY: `status` was just returned by ONNX Runtime and is released here once.
    let result = unsafe { ort::Error::result_from_status(status) };
    if result.is_err() || pairs.is_null() {
        return None;
    }
    let mut keys = ptr::null();
    let mut values = ptr::null();
    let mut count = 0usize;
    // SAFETY: `pairs` is the valid set returned above; the arrays stay valid until it is
    // released below, and each holds `count` NUL-terminated strings.
    let stats = unsafe {
        (ort::api().GetKeyValuePairs)(pairs, &mut keys, &mut values, &mut count);
        let text = |p: *const std::ffi::c_char| CStr::from_ptr(p).to_str().unwrap_or("");
        // An allocator that is not an arena keeps no statistics: an empty set.
        let stats = if count == 0 || keys.is_null() || values.is_null() {
            None
        } else {
            Some(ArenaStats::from_pairs(
                (0..count).map(|i| (text(*keys.add(i)), text(*values.add(i)))),
            ))
        };
        (ort::api().ReleaseKeyValuePairs)(pairs);
        stats
    };
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_by_name() {
        let pairs = [
            ("Limit", "9"),
            ("InUse", "1024"),
            ("TotalAllocated", "4096"),
            ("MaxInUse", "2048"),
            ("NumAllocs", "x"),
            ("InUse", "not a number"),
        ];
        let one = ArenaStats::from_pairs(pairs.into_iter());
        assert_eq!(
            one,
            ArenaStats {
                reserved: 4096,
                in_use: 1024,
                peak_in_use: 2048
            }
        );
        assert_eq!(
            ArenaStats::from_pairs(std::iter::empty()),
            ArenaStats::default()
        );
    }
}
