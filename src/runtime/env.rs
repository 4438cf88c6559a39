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
    Ok(Loaded {
        path: path.to_path_buf(),
        environment,
    })
}
