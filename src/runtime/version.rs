//! The instances of one model version, made from the version's model file with its weights
//! held once, however many instances there are.
//!
//! Sessions are created from the file's path, so ONNX Runtime reads the file itself (the worker
//! never holds the file's bytes beside the session's copy) and finds external data beside
//! `model.onnx`. A version gets one session per device its instances run on (one on the CPU;
//! one per distinct CUDA device in `runtime.cuda.device_ids` otherwise), and its instances
//! share that session, each running batches on it from its own thread ([`SharedSession`]).
//!
//! Why one shared session rather than one session per instance or shared initializers: measured
//! on a 384 MiB model with 4 instances (`scripts/bench-large.sh`), a session per instance holds
//! the weights once per instance, whether loaded from bytes, from the path, or with one
//! prepacked-weights container for all sessions (Pss 3.9× the weights in each case); sessions
//! with prepacking disabled share memory-mapped external data (Pss 1×) but halve throughput at
//! batch 32 and keep the file mapped, so a weights file truncated in place would crash the
//! worker. One session holds 1.07× the weights after load and at most 1.2× while loading, with
//! prepacked kernels and the same rows/s.

use std::path::Path;
use std::sync::Arc;

use super::cuda::CudaSettings;
use super::{ExecutionProvider, OrtBackend, RuntimeError, SessionOptions, SharedSession};

/// Loads `instances` backends for the model at `model` (its external data beside it).
pub fn load_version(
    model: &Path,
    options: &SessionOptions,
    cuda: &CudaSettings,
    instances: usize,
) -> Result<Vec<OrtBackend>, RuntimeError> {
    let devices = instance_devices(options, cuda, instances);
    let mut sessions: Vec<(Option<i32>, Arc<SharedSession>)> = Vec::new();
    let mut backends = Vec::with_capacity(instances);
    for (index, device) in devices.into_iter().enumerate() {
        let session = match sessions.iter().find(|(d, _)| *d == device) {
            Some((_, session)) => session.clone(),
            None => {
                let made = options.session_from_path(model, &cuda.instance(index))?;
                let session = Arc::new(SharedSession::new(made)?.on_device(device));
                sessions.push((device, session.clone()));
                session
            }
        };
        backends.push(OrtBackend::shared(session));
    }
    Ok(backends)
}

/// The CUDA device of each instance when CUDA is used (`None`: the CPU).
pub fn instance_devices(
    options: &SessionOptions,
    cuda: &CudaSettings,
    instances: usize,
) -> Vec<Option<i32>> {
    let on_gpu = options.execution_providers.first() == Some(&ExecutionProvider::Cuda)
        && options.effective().contains(&"cuda");
    (0..instances)
        .map(|i| on_gpu.then(|| cuda.instance(i).device_id))
        .collect()
}

#[cfg(test)]
#[path = "version_tests.rs"]
mod tests;
