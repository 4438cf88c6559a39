//! Memory admission: how much memory the worker may use for model versions, what a version
//! needs, and whether it fits beside the versions already loaded.
//!
//! The limit is `runtime.memory_limit` when set, else the smallest memory limit of this
//! process's cgroup and its ancestors (v2 `memory.max`; v1 `memory.limit_in_bytes`), else the
//! machine's `MemTotal`: what the kernel (or a kubelet) enforces by killing the process. Reading
//! those files is [`memory_limit`]; deciding from their text is pure and table-tested.
//!
//! A version's need is its weights plus a per-instance estimate ([`VersionNeed::estimate`],
//! whose constants were measured; see its documentation). A version that does not fit is
//! refused with [`NotEnoughMemory`], naming the model, the need and the limit.

use std::path::{Path, PathBuf};

/// Where the limit came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// `runtime.memory_limit`.
    Configured,
    /// A cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1): that file.
    Cgroup(PathBuf),
    /// `MemTotal` in `/proc/meminfo`.
    Machine,
}

/// What the worker may use, in bytes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            LimitSource::Configured => write!(f, "{} bytes (runtime.memory_limit)", self.bytes),
            LimitSource::Cgroup(file) => write!(f, "{} bytes ({})", self.bytes, file.display()),
            LimitSource::Machine => write!(f, "{} bytes (the machine's memory)", self.bytes),
        }
    }
}

/// cgroup v1 reports "no limit" as a number near 2^63; anything from 2^62 up means none.
const V1_UNLIMITED: u64 = 1 << 62;

/// A cgroup memory limit file's value: `None` for `max` or v1's "unlimited".
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(bytes) if bytes < V1_UNLIMITED => Some(bytes),
        _ => None,
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The files whose limits apply to a process, from its `/proc/self/cgroup`: for v2 (`0::PATH`)
/// `memory.max` of the cgroup and each ancestor; for v1 (`N:...memory...:PATH`)
/// `memory.limit_in_bytes` of the cgroup and of the hierarchy's root (what a container whose
/// cgroup namespace hides the path sees).
pub fn limit_files(cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = Path::new(path.trim_start_matches('/'));
        if id == "0" && controllers.is_empty() {
            let root = Path::new("/sys/fs/cgroup");
            files.extend(path.ancestors().map(|p| root.join(p).join("memory.max")));
        } else if controllers.split(',').any(|c| c == "memory") {
            let root = Path::new("/sys/fs/cgroup/memory");
            files.push(root.join(path).join("memory.limit_in_bytes"));
            files.push(root.join("memory.limit_in_bytes"));
        }
    }
    files.dedup();
    files
}

/// Decides the limit from `configured` and the files `read` returns (`None`: absent).
pub fn memory_limit_from(
    configured: u64,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<MemoryLimit> {
    if configured > 0 {
        return Some(MemoryLimit {
            bytes: configured,
            source: LimitSource::Configured,
        });
    }
    let cgroup = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    let machine = read(Path::new("/proc/meminfo"))
        .and_then(|m| parse_mem_total(&m))
        .map(|bytes| MemoryLimit {
            bytes,
            source: LimitSource::Machine,
        });
    limit_files(&cgroup)
        .into_iter()
        .filter_map(|file| {
            let bytes = parse_limit(&read(&file)?)?;
            Some(MemoryLimit {
                bytes,
                source: LimitSource::Cgroup(file),
            })
        })
        .chain(machine)
        .min_by_key(|l| l.bytes)
}

/// [`memory_limit_from`] on this process's files; `None` when even `/proc/meminfo` is unreadable.
pub fn memory_limit(configured: u64) -> Option<MemoryLimit> {
    memory_limit_from(configured, &|path| std::fs::read_to_string(path).ok())
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
