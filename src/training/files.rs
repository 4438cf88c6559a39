//! Training data files: `file://` URIs to paths, and reading a file within the worker's
//! [`DataLimits`] (`training.data_dir`, `training.max_data_bytes`).
//!
//! With a data directory, a path is resolved first (symlinks and `..` followed, as the kernel
//! would) and must land inside the directory, which is itself resolved once at start; only then
//! is anything opened, so a path outside (a FIFO, a device) is never touched. On Linux the opened
//! file's own path (`/proc/self/fd`) is checked again, so swapping a directory for a symlink
//! between the check and the open does not escape either. Sizes are checked from metadata
//! before reading, and the read itself stops at the limit should the file grow meanwhile.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::TrainingError;

/// Where training data files may come from, and how large each may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLimits {
    /// The resolved directory every file must lie in; `None`: see `anywhere`.
    pub dir: Option<PathBuf>,
    /// Without `dir`: true reads any file (tools and tests), false refuses every file (the
    /// worker when `training.data_dir` is not set).
    pub anywhere: bool,
    /// Largest file read, in bytes.
    pub max_bytes: u64,
}

impl DataLimits {
    /// No directory and no size limit (tools and tests that read their own files).
    pub fn unrestricted() -> DataLimits {
        DataLimits {
            dir: None,
            anywhere: true,
            max_bytes: u64::MAX,
        }
    }

    /// The worker's limits: `dir` is resolved now and must be a directory; without it, every
    /// file is refused.
    pub fn new(dir: Option<&Path>, max_bytes: u64) -> std::io::Result<DataLimits> {
        let dir = match dir {
            None => None,
            Some(d) => {
                let resolved = std::fs::canonicalize(d)?;
                if !resolved.is_dir() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", resolved.display()),
                    ));
                }
                Some(resolved)
            }
        };
        Ok(DataLimits {
            dir,
            anywhere: false,
            max_bytes,
        })
    }
}

pub(super) fn invalid(field: &str, message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidData {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The path of a `file://` URI (`file:///p` or `file://localhost/p`, percent-escapes decoded).
pub(super) fn file_path(field: &str, uri: &str) -> Result<PathBuf, TrainingError> {
    if let Some(rest) = uri.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(invalid(
                field,
                format_args!("{uri:?} is not an absolute file:// URI"),
            ));
        }
        return Ok(PathBuf::from(percent_decode(path)));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        if !scheme.is_empty() {
            return Err(invalid(
                field,
                format_args!(
                    "{scheme}:// URIs: object store URIs are not configured on this worker"
                ),
            ));
        }
    }
    Err(invalid(field, format_args!("{uri:?} is not a file:// URI")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the file at `path` (named by the job's `field`) within `limits`.
pub(super) fn read(
    path: &Path,
    field: &str,
    limits: &DataLimits,
) -> Result<Vec<u8>, TrainingError> {
    if limits.dir.is_none() && !limits.anywhere {
        // Refused before the path is looked at: the answer says nothing about the worker's disk.
        return Err(invalid(
            field,
            "file:// training data is refused: training.data_dir is not set on this worker",
        ));
    }
    let cannot =
        |e: std::io::Error| invalid(field, format_args!("cannot read {}: {e}", path.display()));
    let resolved = std::fs::canonicalize(path).map_err(cannot)?;
    check_inside(path, &resolved, field, limits)?;
    // `resolved` holds no symlinks, so this is the file itself.
    check_file(
        path,
        &std::fs::metadata(&resolved).map_err(cannot)?,
        field,
        limits,
    )?;
    let file = File::open(&resolved).map_err(cannot)?;
    if let Some(opened) = opened_path(&file) {
        check_inside(path, &opened, field, limits)?;
    }
    check_file(path, &file.metadata().map_err(cannot)?, field, limits)?;
    let mut bytes = Vec::new();
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large(path, field, limits));
    }
    Ok(bytes)
}

fn check_inside(
    path: &Path,
    resolved: &Path,
    field: &str,
    limits: &DataLimits,
) -> Result<(), TrainingError> {
    match &limits.dir {
        Some(dir) if !resolved.starts_with(dir) => Err(invalid(
            field,
            format_args!(
                "{} resolves to {}, outside training.data_dir ({})",
                path.display(),
                resolved.display(),
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

fn check_file(
    path: &Path,
    meta: &std::fs::Metadata,
    field: &str,
    limits: &DataLimits,
) -> Result<(), TrainingError> {
    if !meta.is_file() {
        return Err(invalid(
            field,
            format_args!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > limits.max_bytes {
        return Err(too_large(path, field, limits));
    }
    Ok(())
}

fn too_large(path: &Path, field: &str, limits: &DataLimits) -> TrainingError {
    invalid(
        field,
        format_args!(
            "{} is larger than training.max_data_bytes = {}",
            path.display(),
            limits.max_bytes
        ),
    )
}

/// The path the kernel opened `file` as, where the platform tells.
#[cfg(target_os = "linux")]
fn opened_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(not(target_os = "linux"))]
fn opened_path(_file: &File) -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dir: &Path, max_bytes: u64) -> DataLimits {
        DataLimits::new(Some(dir), max_bytes).unwrap()
    }

    fn message(e: TrainingError) -> String {
        assert_eq!(e.code(), crate::protocol::ErrorCode::InvalidRequest);
        e.to_string()
    }

    #[test]
    fn files_inside_the_data_dir_are_read() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/a.csv"), b"x,y\n1,2\n").unwrap();
        let limits = limits(&data, 1024);
        assert_eq!(
            read(&data.join("sub/a.csv"), "data.uri", &limits).unwrap(),
            b"x,y\n1,2\n"
        );
        // `..` that stays inside is fine.
        let path = data.join("sub/../sub/a.csv");
        assert!(read(&path, "data.uri", &limits).is_ok());
    }

    /// `<tmp>/data/` (empty) and `<tmp>/secret.csv` beside it.
    fn data_dir_beside_a_secret() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(root.path().join("secret.csv"), b"x,y\n").unwrap();
        (root, data)
    }

    #[test]
    fn paths_outside_the_data_dir_are_refused_naming_the_field() {
        let (root, data) = data_dir_beside_a_secret();
        // A sibling whose name starts like the directory's is outside too.
        std::fs::create_dir(root.path().join("data2")).unwrap();
        std::fs::write(root.path().join("data2/b.csv"), b"x,y\n").unwrap();
        let limits = limits(&data, 1024);
        for (path, field) in [
            (root.path().join("secret.csv"), "data.uri"),
            (data.join("../secret.csv"), "data.uri.x"),
            (root.path().join("data2/b.csv"), "data.uri.y"),
        ] {
            let err = message(read(&path, field, &limits).unwrap_err());
            assert!(
                err.starts_with(&format!("{field}: ")) && err.contains("outside training.data_dir"),
                "{}: {err}",
                path.display()
            );
        }
    }

    #[test]
    fn symlinks_cannot_escape_the_data_dir() {
        let (root, data) = data_dir_beside_a_secret();
        std::fs::write(data.join("inside.csv"), b"x,y\n").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.csv"), data.join("link.csv")).unwrap();
        std::os::unix::fs::symlink(root.path(), data.join("up")).unwrap();
        std::os::unix::fs::symlink(data.join("inside.csv"), data.join("ok.csv")).unwrap();
        let limits = limits(&data, 1024);
        for path in [data.join("link.csv"), data.join("up/secret.csv")] {
            let err = message(read(&path, "data.uri", &limits).unwrap_err());
            assert!(err.contains("outside training.data_dir"), "{err}");
        }
        // A symlink that stays inside is followed.
        assert!(read(&data.join("ok.csv"), "data.uri", &limits).is_ok());
    }

    #[test]
    fn files_over_the_size_limit_and_non_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.csv"), vec![b'1'; 101]).unwrap();
        std::fs::write(dir.path().join("fits.csv"), vec![b'1'; 100]).unwrap();
        let limits = limits(dir.path(), 100);
        let err = message(read(&dir.path().join("big.csv"), "data.uri", &limits).unwrap_err());
        assert!(
            err.starts_with("data.uri: ")
                && err.ends_with("is larger than training.max_data_bytes = 100"),
            "{err}"
        );
        assert_eq!(
            read(&dir.path().join("fits.csv"), "data.uri", &limits)
                .unwrap()
                .len(),
            100
        );
        let err = message(read(dir.path(), "data.uri", &limits).unwrap_err());
        assert!(err.contains("is not a regular file"), "{err}");
        // Without a data directory the worker reads no file at all; tools read any.
        let no_dir = DataLimits::new(None, 100).unwrap();
        let err = message(read(&dir.path().join("fits.csv"), "data.uri", &no_dir).unwrap_err());
        assert!(
            err.starts_with("data.uri: ") && err.contains("training.data_dir is not set"),
            "{err}"
        );
        assert!(read(
            &dir.path().join("big.csv"),
            "data.uri",
            &DataLimits::unrestricted()
        )
        .is_ok());
    }

    #[test]
    fn the_data_dir_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(DataLimits::new(Some(&dir.path().join("f")), 1).is_err());
        assert!(DataLimits::new(Some(&dir.path().join("missing")), 1).is_err());
    }
}
