//! A version's external data, checked before ONNX Runtime reads it: every file the model's
//! tensors refer to must lie inside the version directory and hold the bytes they claim.
//!
//! A model file is producer-supplied input (a training job's output, a synced repository), so a
//! tensor's `location` is refused when it is absolute, climbs with `..`, or resolves through a
//! symlink to outside the version directory, and its extent when it runs past the file's end;
//! each error names the tensor and the path. The model is read without its weights
//! ([`crate::onnx::scan`]). What passes is the list of files a version's stamp must cover and
//! the bytes of its weights (embedded and external), which memory admission starts from.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use crate::onnx::external::{data_bytes, ExternalData, ExternalDataError};
use crate::onnx::scan::{scan_tensors, ScanError, TensorEntry};

/// What a version's model file refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFiles {
    /// Every external data file, resolved, inside the version directory; sorted, each once.
    pub external: Vec<PathBuf>,
    /// Bytes of tensor data inside `model.onnx`.
    pub embedded_bytes: u64,
    /// Bytes of tensor data read from external files.
    pub external_bytes: u64,
    /// The largest tensor's bytes: ONNX Runtime holds one extra copy of a tensor at a time
    /// while it prepacks weights, so loading peaks about this much above the weights.
    pub largest_bytes: u64,
}

impl VersionFiles {
    /// All weights: embedded and external.
    pub fn weight_bytes(&self) -> u64 {
        self.embedded_bytes.saturating_add(self.external_bytes)
    }
}

/// Why a version's external data was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExternalRefused {
    #[error("{path}: {source}")]
    Scan { path: PathBuf, source: ScanError },
    #[error(transparent)]
    Entries(#[from] ExternalDataError),
    #[error("tensor {tensor:?}: external data location {location:?} is absolute; it must be relative to the version directory")]
    Absolute { tensor: String, location: String },
    #[error("tensor {tensor:?}: external data location {location:?} leaves the version directory")]
    Escapes { tensor: String, location: String },
    #[error("tensor {tensor:?}: external data file {location:?}: {source}")]
    Unreadable {
        tensor: String,
        location: String,
        source: std::io::Error,
    },
    #[error("tensor {tensor:?}: external data {location:?} is not a regular file")]
    NotAFile { tensor: String, location: String },
    #[error("tensor {tensor:?}: external data {location:?} bytes {offset}..{end} run past the file's end ({file_len} bytes)")]
    PastEnd {
        tensor: String,
        location: String,
        offset: u64,
        end: u128,
        file_len: u64,
    },
    #[error("tensor {tensor:?}: external data {location:?} has length {length}, its type and shape need {needs} bytes")]
    WrongLength {
        tensor: String,
        location: String,
        length: u64,
        needs: u64,
    },
}

impl ExternalRefused {
    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ExternalRefused::Scan { .. } => "model_unreadable",
            ExternalRefused::Entries(_) => "external_data_entries",
            ExternalRefused::Absolute { .. } | ExternalRefused::Escapes { .. } => {
                "external_data_outside"
            }
            ExternalRefused::Unreadable { .. } | ExternalRefused::NotAFile { .. } => {
                "external_data_missing"
            }
            ExternalRefused::PastEnd { .. } | ExternalRefused::WrongLength { .. } => {
                "external_data_extent"
            }
        }
    }
}

/// Checks the external data of the model at `model` (its directory is the version directory)
/// and lists what it refers to.
pub fn check_version(model: &Path) -> Result<VersionFiles, ExternalRefused> {
    let scan_error = |source| ExternalRefused::Scan {
        path: model.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(model).map_err(|e| scan_error(e.into()))?;
    let tensors = scan_tensors(BufReader::new(file)).map_err(scan_error)?;
    let dir = model.parent().unwrap_or(Path::new("."));
    let root = dir
        .canonicalize()
        .map_err(|e| scan_error(ScanError::Io(e)))?;
    let mut files = Files {
        dir,
        root: &root,
        seen: BTreeMap::new(),
    };
    let mut out = VersionFiles::default();
    for tensor in &tensors {
        let bytes = match ExternalData::of(tensor)? {
            None => {
                let bytes = data_bytes(tensor.data_type, &tensor.dims);
                let bytes = bytes.filter(|_| tensor.embedded_bytes > 0);
                let bytes = bytes.unwrap_or(tensor.embedded_bytes);
                out.embedded_bytes += bytes;
                bytes
            }
            Some(external) => {
                let bytes = files.check(tensor, &external)?;
                out.external_bytes += bytes;
                bytes
            }
        };
        out.largest_bytes = out.largest_bytes.max(bytes);
    }
    out.external = files.seen.into_values().map(|(path, _)| path).collect();
    out.external.sort();
    out.external.dedup();
    Ok(out)
}

/// The external files met so far, by location as written: resolved path and length.
struct Files<'a> {
    dir: &'a Path,
    root: &'a Path,
    seen: BTreeMap<String, (PathBuf, u64)>,
}

impl Files<'_> {
    /// Checks one tensor's external data; returns the bytes it occupies.
    fn check(&mut self, tensor: &TensorEntry, data: &ExternalData) -> Result<u64, ExternalRefused> {
        let file_len = self.resolve(&tensor.name, &data.location)?;
        let needs = data_bytes(tensor.data_type, &tensor.dims);
        let length = data
            .length
            .or(needs)
            .unwrap_or(file_len.saturating_sub(data.offset));
        let end = u128::from(data.offset) + u128::from(length);
        if end > u128::from(file_len) {
            return Err(ExternalRefused::PastEnd {
                tensor: tensor.name.clone(),
                location: data.location.clone(),
                offset: data.offset,
                end,
                file_len,
            });
        }
        match needs {
            Some(needs) if needs != length => Err(ExternalRefused::WrongLength {
                tensor: tensor.name.clone(),
                location: data.location.clone(),
                length,
                needs,
            }),
            _ => Ok(length),
        }
    }

    /// The length of the file `location` names, once it is known to lie inside the directory.
    fn resolve(&mut self, tensor: &str, location: &str) -> Result<u64, ExternalRefused> {
        if let Some((_, len)) = self.seen.get(location) {
            return Ok(*len);
        }
        let refused = |absolute: bool| {
            let tensor = tensor.to_string();
            let location = location.to_string();
            match absolute {
                true => ExternalRefused::Absolute { tensor, location },
                false => ExternalRefused::Escapes { tensor, location },
            }
        };
        let relative = Path::new(location);
        if relative.is_absolute() || relative.has_root() {
            return Err(refused(true));
        }
        let plain = |c: Component| matches!(c, Component::Normal(_) | Component::CurDir);
        if location.contains('\0') || !relative.components().all(plain) {
            return Err(refused(false));
        }
        let unreadable = |source| ExternalRefused::Unreadable {
            tensor: tensor.to_string(),
            location: location.to_string(),
            source,
        };
        let resolved = self.dir.join(relative).canonicalize().map_err(unreadable)?;
        if !resolved.starts_with(self.root) {
            return Err(refused(false));
        }
        let metadata = std::fs::metadata(&resolved).map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(ExternalRefused::NotAFile {
                tensor: tensor.to_string(),
                location: location.to_string(),
            });
        }
        self.seen
            .insert(location.to_string(), (resolved, metadata.len()));
        Ok(metadata.len())
    }
}

#[cfg(test)]
#[path = "external_tests.rs"]
mod tests;
