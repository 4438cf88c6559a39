//! ONNX Runtime: the environment, execution providers and sessions.
//!
//! Inference runs on dedicated threads ([`instances`]) behind the synchronous [`Backend`] trait,
//! so the worker can be driven by the real ONNX Runtime ([`OrtBackend`]) or by a fake in tests.
//! Sits after `batching` in the flow; fed models by `repository`.

pub mod affinity;
pub mod cuda;
pub mod env;
pub mod instances;
pub mod session;

use crate::protocol::ErrorCode;
use crate::protocol::{ModelSignature, Tensor};

pub use instances::InstancePool;
pub use session::{run_session, signature_of, SessionOptions};

/// An execution provider name as configured (`runtime.execution_providers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

/// Why a model could not be loaded or run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime is not initialised")]
    NotInitialised,
    #[error("GPU required: {0}")]
    GpuUnavailable(String),
    #[error("failed to load model: {0}")]
    Load(String),
    #[error("model {name} has a type infermq does not serve: {ty}")]
    UnsupportedType { name: String, ty: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("inference instance stopped")]
    InstanceGone,
}

impl RuntimeError {
    /// Every runtime failure is the worker's fault, not the job's: `internal` (requeued).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }

    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::NotInitialised => "not_initialised",
            RuntimeError::GpuUnavailable(_) => "gpu_unavailable",
            RuntimeError::Load(_) => "load",
            RuntimeError::UnsupportedType { .. } => "unsupported_type",
            RuntimeError::Run(_) => "run",
            RuntimeError::InstanceGone => "instance_gone",
        }
    }
}

/// Something that runs batches of one model version. Implementations own their session, so
/// each instance thread holds one and calls it without locks.
pub trait Backend: Send + 'static {
    /// The model's inputs and outputs.
    fn signature(&self) -> &ModelSignature;
    /// Runs one batch: one tensor per model input (any order). Returns every model output in
    /// signature order.
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;
}

/// A [`Backend`] on an ONNX Runtime session.
pub struct OrtBackend {
    session: ort::session::Session,
    signature: ModelSignature,
}

impl OrtBackend {
    /// Loads ONNX bytes into a session with the given options.
    pub fn load(model: &[u8], options: &SessionOptions) -> Result<OrtBackend, RuntimeError> {
        let session = options.session(model)?;
        let signature = signature_of(&session)?;
        Ok(OrtBackend { session, signature })
    }
}

impl Backend for OrtBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        run_session(&mut self.session, inputs)
    }
}
