//! One ONNX Runtime session run from several threads at once.
//!
//! ONNX Runtime documents `OrtApi::Run` as safe to call concurrently on one session (each run
//! keeps its own execution frame; the session's allocators lock). The `ort` crate's
//! `Session::run` takes `&mut self` regardless, out of caution about some execution providers,
//! so a [`SharedSession`] calls `Run` itself through `ort::api()` with `&self`, converting
//! tensors exactly as [`super::session::run_session`] does.

use std::ffi::CString;
use std::ptr::{self, NonNull};

use ort::session::Session;
use ort::value::DynValue;
use ort::AsPointer;

use super::session::{dim_names_of, from_ort, signature_of, to_ort, DimNames};
use super::RuntimeError;
use crate::protocol::{ModelSignature, Tensor};

/// A session whose [`SharedSession::run`] takes `&self`.
pub struct SharedSession {
    session: Session,
    signature: ModelSignature,
    dim_names: DimNames,
    /// The CUDA device the session runs on; `None`: the CPU.
    device: Option<i32>,
    inputs: Vec<CString>,
    outputs: Vec<CString>,
}

impl std::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSession")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

fn c_names(names: impl Iterator<Item = String>) -> Result<Vec<CString>, RuntimeError> {
    names
        .map(|n| CString::new(n).map_err(|e| RuntimeError::Load(format!("tensor name: {e}"))))
        .collect()
}

impl SharedSession {
    pub fn new(session: Session) -> Result<SharedSession, RuntimeError> {
        let signature = signature_of(&session)?;
        let inputs = c_names(signature.inputs.iter().map(|s| s.name.clone()))?;
        let outputs = c_names(signature.outputs.iter().map(|s| s.name.clone()))?;
        Ok(SharedSession {
            dim_names: dim_names_of(&session),
            device: None,
            session,
            signature,
            inputs,
            outputs,
        })
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The session, noting that it runs on CUDA device `device`.
    pub fn on_device(mut self, device: Option<i32>) -> SharedSession {
        self.device = device;
        self
    }

    /// The CUDA device the session runs on; `None`: the CPU.
    pub fn device(&self) -> Option<i32> {
        self.device
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// The symbolic dimension names of the inputs and outputs, signature order.
    pub fn dim_names(&self) -> &DimNames {
        &self.dim_names
    }

    /// Runs one batch: `inputs` in any order (each a model input), every output in signature
    /// order. May be called from many threads at once.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_inner(inputs)
            .map_err(|e| RuntimeError::Run(e.to_string()))
    }

    fn run_inner(&self, inputs: &[Tensor]) -> ort::Result<Vec<Tensor>> {
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), to_ort(t)?)))
            .collect::<ort::Result<Vec<_>>>()?;
        let refs: Vec<(&str, &DynValue)> = values.iter().map(|(n, v)| (*n, v)).collect();
        let owned = self.run_raw(&refs)?;
        owned
            .iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_ort(&spec.name, value))
            .collect()
    }

    /// Runs on values the caller keeps: `inputs` by name (each a model input, any order),
    /// every output as ONNX Runtime made it (in CPU memory), signature order. For a loop that
    /// feeds a run's outputs to the next run (a decoder's caches) without copying them out and
    /// back in.
    pub fn run_values(&self, inputs: &[(&str, &DynValue)]) -> Result<Vec<DynValue>, RuntimeError> {
        self.run_raw(inputs)
            .map_err(|e| RuntimeError::Run(e.to_string()))
    }

    fn run_raw(&self, inputs: &[(&str, &DynValue)]) -> ort::Result<Vec<DynValue>> {
        let mut names = Vec::with_capacity(inputs.len());
        for (name, _) in inputs {
            let index = self.signature.inputs.iter().position(|s| s.name == *name);
            let index =
                index.ok_or_else(|| ort::Error::new(format!("the model has no input {name}")))?;
            names.push(self.inputs[index].as_ptr());
        }
        let value_ptrs: Vec<*const ort::sys::OrtValue> =
            inputs.iter().map(|(_, v)| v.ptr()).collect();
        let output_names: Vec<_> = self.outputs.iter().map(|n| n.as_ptr()).collect();
        let mut outputs: Vec<*mut ort::sys::OrtValue> = vec![ptr::null_mut(); output_names.len()];
        // SAFETY: the session pointer is valid while `self.session` lives; the name and value
        // arrays hold `len` valid pointers each and outlive the call; `outputs` has room for
        // every output and ONNX Runtime fills it with values it allocated. Concurrent `Run`
        // calls on one session are supported by ONNX Runtime (module documentation).
        let status = unsafe {
            (ort::api().Run)(
                self.session.ptr().cast_mut(),
                ptr::null(),
                names.as_ptr(),
                value_ptrs.as_ptr(),
                value_ptrs.len(),
                output_names.as_ptr(),
                output_names.len(),
                outputs.as_mut_ptr(),
            )
        };
        // SAFETY: `status` was just returned by ONNX Runtime and is released here once.
        let result = unsafe { ort::Error::result_from_status(status) };
        // Take ownership of whatever was returned, so it is released even on an error.
        let owned: Vec<Option<DynValue>> = outputs
            .iter()
            .map(|&p| {
                // SAFETY: a non-null pointer is an OrtValue ONNX Runtime allocated with the
                // session's allocator for this call; nothing else owns it.
                NonNull::new(p)
                    .map(|p| unsafe { DynValue::from_ptr(p, Some(self.session.allocator())) })
            })
            .collect();
        result?;
        owned
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| {
                value.ok_or_else(|| {
                    ort::Error::new(format!("output {} was not returned", spec.name))
                })
            })
            .collect()
    }
}
