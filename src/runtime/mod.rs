//! ONNX Runtime: the environment, execution providers and sessions.
//!
//! Inference runs on dedicated threads ([`instances`]) behind the synchronous [`Backend`] trait,
//! so the worker can be driven by the real ONNX Runtime ([`OrtBackend`]) or by a fake in tests.
//! A version's instances share one session per device ([`version`], [`shared`]); CUDA devices
//! and arena options are [`cuda`]'s; the memory a worker may use is measured by [`memory`].
//! What to load, whether it fits and how it is warmed is decided by `serving`; this module
//! measures and runs sessions. Sits after `execution` in the flow.

pub mod affinity;
pub mod arena;
pub mod cuda;
pub mod env;
pub(crate) mod instances;
pub(crate) mod memory;
mod session;
pub(crate) mod shared;
pub(crate) mod version;

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::protocol::{ModelSignature, Tensor};

pub(crate) use instances::InstancePool;
pub use session::{to_ort, value_view, DimNames, SessionOptions};

pub use shared::{SharedSession, TensorView};
pub use version::load_version;

/// An execution provider name as configured (`runtime.execution_providers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

/// Why a model could not be loaded or run. Every runtime failure is the worker's fault, not the
/// job's: a job that meets one is requeued (`internal`; see `jobs::error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime is not initialised")]
    NotInitialised,
    #[error("GPU required: {0}")]
    GpuUnavailable(String),
    #[error("failed to load model: {0}")]
    Load(String),
    /// An input or output that is not a tensor infermq can carry (a sequence, a map, an
    /// optional, or an element type outside the contract).
    #[error("{role} {name} is {ty}: infermq serves models whose inputs and outputs are tensors of the KServe datatypes (converters usually have an option for tensors, e.g. skl2onnx's zipmap=False)")]
    UnsupportedType {
        role: &'static str,
        name: String,
        ty: String,
    },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("inference instance stopped")]
    InstanceGone,
}

/// Something that runs batches of one model version. Each instance thread holds one and calls
/// it without locks; [`OrtBackend`]s of one version share a session, which ONNX Runtime runs
/// from several threads at once.
pub trait Backend: Send + 'static {
    /// The model's inputs and outputs.
    fn signature(&self) -> &ModelSignature;
    /// Runs one batch: one tensor per model input (any order). Returns every model output in
    /// signature order.
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;
    /// The same value for backends that share one session (warming one warms them all);
    /// `None`: a backend of its own.
    fn shared_id(&self) -> Option<usize> {
        None
    }
    /// The symbolic dimension names of the inputs and outputs (what padding pairs up);
    /// `None`: the backend does not know them.
    fn dim_names(&self) -> Option<&DimNames> {
        None
    }
    /// Reads the memory arena of the backend's session (`None`: not an ONNX Runtime session).
    fn arena(&self) -> Option<arena::ArenaProbe> {
        None
    }
    /// The ONNX Runtime session underneath, for runs on values kept between runs
    /// ([`SharedSession::run_values`]); `None`: not an ONNX Runtime session (or one that must
    /// be run through [`Backend::infer`]).
    fn shared_session(&self) -> Option<Arc<SharedSession>> {
        None
    }
}

/// True for the first backend of each session among those `seen` so far (a backend of its own
/// is always first): what is done once per session, not per instance (warm-up, arena figures).
pub fn first_of_its_session(backend: &dyn Backend, seen: &mut BTreeSet<usize>) -> bool {
    backend.shared_id().is_none_or(|id| seen.insert(id))
}

/// A [`Backend`] on an ONNX Runtime session, its own or shared with the other instances of its
/// version ([`version`]).
#[derive(Debug)]
pub struct OrtBackend {
    session: Arc<SharedSession>,
}

impl OrtBackend {
    /// Loads ONNX bytes into a session of its own with the given options.
    pub fn load(model: &[u8], options: &SessionOptions) -> Result<OrtBackend, RuntimeError> {
        let session = SharedSession::new(options.session(model)?)?;
        Ok(OrtBackend::shared(Arc::new(session)))
    }

    /// A backend running batches on `session`, which other backends may share.
    pub fn shared(session: Arc<SharedSession>) -> OrtBackend {
        OrtBackend { session }
    }
}

impl Backend for OrtBackend {
    fn signature(&self) -> &ModelSignature {
        self.session.signature()
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.session.run(inputs)
    }

    fn shared_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.session) as usize)
    }

    fn dim_names(&self) -> Option<&DimNames> {
        Some(self.session.dim_names())
    }

    fn arena(&self) -> Option<arena::ArenaProbe> {
        Some(arena::ArenaProbe::new(&self.session))
    }

    fn shared_session(&self) -> Option<Arc<SharedSession>> {
        Some(self.session.clone())
    }
}
