//! How the gateway sees that a file it reads again without a restart changed: the API keys
//! ([`super::auth::KeyStore`]) and the TLS certificate and key ([`super::tls::TlsFiles`]),
//! checked every `gateway.reload_poll_ms` by the gateway's reload task (SIGHUP reads them again
//! at once, changed or not).
//!
//! A file's [`FileStamp`] is its modification time, size and inode: a rename over the file (an
//! editor's save, a Kubernetes Secret's symlink swap) changes its inode, so it is seen too.

use std::path::Path;
use std::time::SystemTime;

/// What tells a file's versions apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path` now (following links); `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        assert_eq!(FileStamp::of(&path), None);
        std::fs::write(&path, "a").unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path), Some(first));
        std::fs::write(&path, "ab").unwrap();
        assert_ne!(FileStamp::of(&path), Some(first));
        // Replaced by a rename, same size: another inode.
        let second = FileStamp::of(&path).unwrap();
        let other = dir.path().join("new.toml");
        std::fs::write(&other, "cd").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(FileStamp::of(&path), Some(second));
    }
}
