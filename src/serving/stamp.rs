//! A version's stamp: the size and modification time of every file in its directory, so a
//! version refused while its files were still being written (a `model.onnx` whose weights file
//! is short or missing) is tried again once any of them changes, external data included.
//!
//! The walk is bounded ([`MAX_FILES`], [`MAX_DEPTH`]) and does not descend through symlinked
//! directories; a symlinked file is stamped by what it points to (the external data check
//! refuses one that leads outside the version directory).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files stamped at most; a directory holding more is stamped by its first ones (sorted).
pub const MAX_FILES: usize = 4096;
/// Directory levels below the version directory walked at most.
pub const MAX_DEPTH: usize = 8;

/// Each file of a version directory (relative path, size, modification time), sorted.
pub type FileStamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The stamp of the version whose model file is `model`; `None` when `model` is missing.
pub fn version_stamp(model: &Path) -> Option<FileStamp> {
    std::fs::metadata(model).ok()?;
    let dir = model.parent()?;
    let mut files = Vec::new();
    walk(dir, dir, 0, &mut files);
    files.sort();
    files.truncate(MAX_FILES);
    Some(files)
}

fn walk(root: &Path, dir: &Path, depth: usize, files: &mut FileStamp) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if files.len() >= MAX_FILES {
            return;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                walk(root, &path, depth + 1, files);
            }
            continue;
        }
        // Follows a symlink to a file; a broken one is stamped as absent (size 0, no time).
        let metadata = std::fs::metadata(&path).ok().filter(|m| m.is_file());
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let (len, modified) = metadata.map_or((0, None), |m| (m.len(), m.modified().ok()));
        files.push((relative, len, modified));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_with_any_file_of_the_version() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model.onnx");
        assert_eq!(version_stamp(&model), None);
        std::fs::write(&model, b"graph").unwrap();
        let alone = version_stamp(&model).unwrap();
        assert_eq!(alone.len(), 1);
        std::fs::write(tmp.path().join("weights.bin"), b"half").unwrap();
        let half = version_stamp(&model).unwrap();
        assert_ne!(half, alone);
        std::fs::write(tmp.path().join("weights.bin"), b"half and the rest").unwrap();
        let whole = version_stamp(&model).unwrap();
        assert_ne!(whole, half);
        assert_eq!(version_stamp(&model).unwrap(), whole);
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        std::fs::write(tmp.path().join("data/more.bin"), b"x").unwrap();
        let nested = version_stamp(&model).unwrap();
        assert!(nested
            .iter()
            .any(|(p, len, _)| *p == Path::new("data/more.bin") && *len == 1));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_directories_are_not_followed_and_files_are() {
        let tmp = tempfile::tempdir().unwrap();
        let version = tmp.path().join("1");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("model.onnx"), b"graph").unwrap();
        std::fs::write(tmp.path().join("outside.bin"), b"1234").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside.bin"), version.join("w.bin")).unwrap();
        // A loop: the version directory inside itself.
        std::os::unix::fs::symlink(&version, version.join("loop")).unwrap();
        let stamp = version_stamp(&version.join("model.onnx")).unwrap();
        let names: Vec<_> = stamp.iter().map(|(p, len, _)| (p.clone(), *len)).collect();
        assert_eq!(
            names,
            [
                (PathBuf::from("loop"), 0),
                (PathBuf::from("model.onnx"), 5),
                (PathBuf::from("w.bin"), 4)
            ]
        );
    }
}
