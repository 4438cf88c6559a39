//! CPU affinity (Linux): which cores the worker's threads may run on.
//!
//! `runtime.io_cpus` pins the process's threads (tokio, the broker connection, HTTP) before
//! they start; `runtime.instance_cpus` pins each instance thread, which with
//! `intra_threads = 1` is the thread that runs ONNX Runtime, to one core of its own, round
//! robin. Sessions are created on a thread pinned to the whole `instance_cpus` set, so ONNX
//! Runtime's own intra-op threads (created with the session) inherit that set too.
//! On a host shared with the broker this keeps compute off the cores that move messages.

use std::io;

/// Restricts the calling thread to `cpus` (numbered as the OS numbers them).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    imp::set(cpus)
}

/// The CPUs the calling thread may run on.
pub fn current_thread_cpus() -> io::Result<Vec<usize>> {
    imp::get()
}

/// Checks that every CPU in `cpus` is one this process may use; the error names the first
/// that is not (or says why affinity cannot be set here).
pub fn check_usable(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed = current_thread_cpus().map_err(|e| format!("cannot read CPU affinity: {e}"))?;
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(c) => Err(format!(
            "CPU {c} is not available to this process (available: {allowed:?})"
        )),
        None => Ok(()),
    }
}

/// Runs `f` with the calling thread pinned to `cpus` (if any), then restores its affinity.
pub fn with_pinned<T>(cpus: &[usize], f: impl FnOnce() -> T) -> T {
    if cpus.is_empty() {
        return f();
    }
    let before = current_thread_cpus().ok();
    if let Err(e) = pin_current_thread(cpus) {
        tracing::warn!(?cpus, error = %e, "Could not pin the loading thread");
    }
    let out = f();
    if let Some(before) = before {
        let _ = pin_current_thread(&before);
    }
    out
}

/// A list of numbers (CPUs, GPUs), or a single one, as configuration gives it: from the
/// environment, `INFERMQ__RUNTIME__IO_CPUS=0` arrives as one number and `=0,1` as a list of
/// strings.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Number(usize),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Number),
        Many(Vec<Number>),
    }
    let numbers = match OneOrMany::deserialize(d)? {
        OneOrMany::One(n) => vec![n],
        OneOrMany::Many(ns) => ns,
    };
    numbers
        .into_iter()
        .map(|n| match n {
            Number::Number(n) => Ok(n),
            Number::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number"))),
        })
        .collect()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::mem::{size_of, zeroed};

    pub fn set(cpus: &[usize]) -> io::Result<()> {
        if cpus.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no CPUs given"));
        }
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {cpu} is out of range"),
                ));
            }
            // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn get() -> io::Result<Vec<usize>> {
        // SAFETY: as above; the kernel fills `set`.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every index is below CPU_SETSIZE.
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub fn set(_: &[usize]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU affinity is only supported on Linux",
        ))
    }

    pub fn get() -> io::Result<Vec<usize>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU affinity is only supported on Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pins_to_one_cpu_and_back() {
        std::thread::spawn(|| {
            let all = current_thread_cpus().unwrap();
            assert!(!all.is_empty());
            let last = *all.last().unwrap();
            pin_current_thread(&[last]).unwrap();
            assert_eq!(current_thread_cpus().unwrap(), vec![last]);
            // A thread started now inherits the mask.
            let child = std::thread::spawn(|| current_thread_cpus().unwrap());
            assert_eq!(child.join().unwrap(), vec![last]);
            pin_current_thread(&all).unwrap();
            assert_eq!(current_thread_cpus().unwrap(), all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn with_pinned_restores_the_mask() {
        std::thread::spawn(|| {
            let all = current_thread_cpus().unwrap();
            let inside = with_pinned(&all[..1], || current_thread_cpus().unwrap());
            assert_eq!(inside, all[..1].to_vec());
            assert_eq!(current_thread_cpus().unwrap(), all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn unusable_cpus_are_named() {
        assert_eq!(check_usable(&[]), Ok(()));
        let all = current_thread_cpus().unwrap();
        assert_eq!(check_usable(&all), Ok(()));
        let err = check_usable(&[100_000]).unwrap_err();
        assert!(err.contains("CPU 100000 is not available"), "{err}");
        assert!(pin_current_thread(&[]).is_err());
    }
}
