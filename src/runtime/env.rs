//! The process-wide ONNX Runtime environment.
//!
//! ONNX Runtime is loaded at run time from `libonnxruntime.so` (the `load-dynamic` feature), so one
//! binary serves CPU and GPU builds of the library. The library is looked up, in order, at
//! `ORT_DYLIB_PATH`, at the configured `runtime.library`, and at the path the project's setup step
//! installs it to (`.ort/onnxruntime/capi/libonnxruntime.so.1.31.1`, relative to the working
//! directory, then to the source tree). A missing or broken library is an error, never a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// Where `scripts/setup-ort.sh` installs the library, relative to the project root.
pub const DEFAULT_LIBRARY: &str = ".ort/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// Why ONNX Runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    #[error("ONNX Runtime library not found at {path} (set runtime.library or ORT_DYLIB_PATH; `make setup` installs it to {DEFAULT_LIBRARY})")]
    LibraryMissing { path: PathBuf },
    #[error("failed to load ONNX Runtime from {path}: {reason}")]
    LibraryInvalid { path: PathBuf, reason: String },
    #[error("failed to create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("ONNX Runtime was already loaded from {loaded}, not {requested}")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

struct Loaded {
    path: PathBuf,
    /// What the library itself reports (`OrtGetApiBase()->GetVersionString()`), e.g. "1.31.1".
    version: String,
    environment: Environment,
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// Resolves the library path: `ORT_DYLIB_PATH`, then `configured`, then the setup step's location.
pub fn resolve_library(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    let local = PathBuf::from(DEFAULT_LIBRARY);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_LIBRARY)
}

/// Loads ONNX Runtime once per process and returns its environment.
///
/// Later calls return the same environment; asking for a different library afterwards is an
/// error, since one process can hold only one ONNX Runtime.
pub fn init(configured: Option<&Path>) -> Result<&'static Environment, EnvironmentError> {
    let path = resolve_library(configured);
    let loaded = LOADED.get_or_init(|| load(&path));
    match loaded {
        Ok(loaded) if same_file(&loaded.path, &path) => Ok(&loaded.environment),
        Ok(loaded) => Err(EnvironmentError::AlreadyLoaded {
            loaded: loaded.path.clone(),
            requested: path,
        }),
        Err(reason) => Err(EnvironmentError::Environment(reason.clone())),
    }
}

/// The version string of the ONNX Runtime library [`init`] loaded, as the library reports it
/// (`GetVersionString`), or `None` before a successful [`init`].
pub fn loaded_version() -> Option<&'static str> {
    LOADED
        .get()
        .and_then(|l| l.as_ref().ok())
        .map(|l| l.version.as_str())
}

/// The environment if [`init`] already succeeded.
pub fn environment() -> Option<&'static Environment> {
    LOADED
        .get()
        .and_then(|l| l.as_ref().ok())
        .map(|l| &l.environment)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn load(path: &Path) -> Result<Loaded, String> {
    if !path.is_file() {
        return Err(EnvironmentError::LibraryMissing {
            path: path.to_path_buf(),
        }
        .to_string());
    }
    let builder = ort::init_from(path).map_err(|e| {
        EnvironmentError::LibraryInvalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
        .to_string()
    })?;
    let environment = builder
        .with_name("infermq")
        .with_telemetry(false)
        .build()
        .map_err(|e| EnvironmentError::Environment(e.to_string()).to_string())?;
    let version = library_version(path).map_err(|reason| {
        EnvironmentError::LibraryInvalid {
            path: path.to_path_buf(),
            reason,
        }
        .to_string()
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        version,
        environment,
    })
}

/// Asks the library at `path`, already loaded by `ort`, for its version string. `ort` keeps its
/// handle private, so this opens the same library again with `RTLD_NOLOAD`: that returns the
/// loaded copy (never a second one) and fails if it is not loaded.
fn library_version(path: &Path) -> Result<String, String> {
    use libloading::os::unix::{Library, RTLD_NOW};
    use ort::sys::OrtApiBase;
    // SAFETY: RTLD_NOLOAD runs no initialisers (the library is loaded already), and
    // `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | libc::RTLD_NOLOAD) }
        .map_err(|e| format!("library is not loaded: {e}"))?;
    let get_base =
        unsafe { library.get::<unsafe extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0") }
            .map_err(|e| format!("no OrtGetApiBase: {e}"))?;
    // SAFETY: the API base is a static table inside the library, valid while it is loaded;
    // GetVersionString returns a static NUL-terminated string.
    let version = unsafe {
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let text = ((*base).GetVersionString)();
        if text.is_null() {
            return Err("GetVersionString returned null".into());
        }
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    };
    // The version becomes a metric label: keep it short.
    Ok(version.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_version_is_what_the_library_reports() {
        init(None).expect("ONNX Runtime loads (make setup installs it)");
        let version = loaded_version().expect("a version once loaded");
        // The setup step installs libonnxruntime.so.X.Y.Z: the file name carries the release.
        let path = resolve_library(None);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            name.ends_with(&format!(".so.{version}")),
            "library {name} reports version {version}"
        );
        assert!(version.starts_with("1."), "{version}");
    }
}
