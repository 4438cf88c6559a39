//! One ONNX Runtime session run from several threads at once.
//!
//! ONNX Runtime documents `OrtApi::Run` as safe to call concurrently on one session (each run
//! keeps its own execution frame; the session's allocators lock). The `ort` crate's
//! `Session::run` takes `&mut self` regardless, out of caution about some execution providers,
//! so a [`SharedSession`] calls `Run` itself through `ort::api()` with `&self`, converting
//! tensors exactly as [`super::session::run_session`] does.

use std::ffi::CString;
use std::ptr::{self, NonNull};

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::sys::OrtValue;
use ort::value::DynValue;
use ort::AsPointer;

use super::session::{dim_names_of, element_type_of, from_ort, signature_of, to_ort, DimNames};
use super::RuntimeError;
use crate::protocol::{DataType, ModelSignature, Tensor};

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
        let refs: Vec<(&str, *const OrtValue)> =
            values.iter().map(|(n, v)| (*n, v.ptr())).collect();
        // With none given, `run_raw` returns every output.
        let owned = self.run_raw(&refs, &[])?.into_iter().flatten();
        owned
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_ort(&spec.name, &value))
            .collect()
    }

    /// Runs on values the caller keeps: `inputs` by name (each a model input, any order),
    /// every output as ONNX Runtime made it (in CPU memory), signature order. For a loop that
    /// feeds a run's outputs to the next run (a decoder's caches) without copying them out and
    /// back in.
    pub fn run_values(&self, inputs: &[(&str, &DynValue)]) -> Result<Vec<DynValue>, RuntimeError> {
        let inputs: Vec<(&str, *const OrtValue)> =
            inputs.iter().map(|(name, v)| (*name, v.ptr())).collect();
        let outputs = self
            .run_raw(&inputs, &[])
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        // With none given, `run_raw` returns every output.
        Ok(outputs.into_iter().flatten().collect())
    }

    /// Runs with `given` outputs written into memory the caller holds ([`TensorView`]s, which
    /// may also be inputs: a decoder's cache bound as both its past and its present, written
    /// in place). Returns the other outputs as ONNX Runtime made them, signature order, `None`
    /// for those given.
    pub fn run_into(
        &self,
        inputs: &[(&str, &DynValue)],
        views: &[(&str, &TensorView<'_>)],
        given: &[(&str, &TensorView<'_>)],
    ) -> Result<Vec<Option<DynValue>>, RuntimeError> {
        let mut all: Vec<(&str, *const OrtValue)> =
            inputs.iter().map(|(name, v)| (*name, v.ptr())).collect();
        all.extend(
            views
                .iter()
                .map(|(name, v)| (*name, v.ptr.as_ptr().cast_const())),
        );
        let given: Vec<(&str, *mut OrtValue)> = given
            .iter()
            .map(|(name, v)| (*name, v.ptr.as_ptr()))
            .collect();
        self.run_raw(&all, &given)
            .map_err(|e| RuntimeError::Run(e.to_string()))
    }

    /// Runs `inputs`, writing the `given` outputs in place; the others are returned (`None` at
    /// a given one's place). An output neither given nor returned is an error.
    fn run_raw(
        &self,
        inputs: &[(&str, *const OrtValue)],
        given: &[(&str, *mut OrtValue)],
    ) -> ort::Result<Vec<Option<DynValue>>> {
        let mut names = Vec::with_capacity(inputs.len());
        for (name, _) in inputs {
            let index = self.signature.inputs.iter().position(|s| s.name == *name);
            let index =
                index.ok_or_else(|| ort::Error::new(format!("the model has no input {name}")))?;
            names.push(self.inputs[index].as_ptr());
        }
        let value_ptrs: Vec<*const OrtValue> = inputs.iter().map(|(_, v)| *v).collect();
        let output_names: Vec<_> = self.outputs.iter().map(|n| n.as_ptr()).collect();
        let mut outputs: Vec<*mut OrtValue> = vec![ptr::null_mut(); output_names.len()];
        let mut is_given = vec![false; output_names.len()];
        for (name, value) in given {
            let index = self.signature.outputs.iter().position(|s| s.name == *name);
            let index =
                index.ok_or_else(|| ort::Error::new(format!("the model has no output {name}")))?;
            outputs[index] = *value;
            is_given[index] = true;
        }
        // SAFETY: the session pointer is valid while `self.session` lives; the name and value
        // arrays hold `len` valid pointers each and outlive the call; `outputs` has room for
        // every output: ONNX Runtime writes the given ones in place (their memory outlives the
        // call, borrowed by their views) and fills the null ones with values it allocated.
        // Concurrent `Run` calls on one session are supported by ONNX Runtime (module
        // documentation).
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
        // Take ownership of whatever ONNX Runtime allocated, so it is released even on an
        // error; the given values stay their owners'.
        let owned: Vec<Option<DynValue>> = outputs
            .iter()
            .zip(&is_given)
            .map(|(&p, &given)| {
                if given {
                    return None;
                }
                // SAFETY: a non-null pointer is an OrtValue ONNX Runtime allocated with the
                // session's allocator for this call; nothing else owns it.
                NonNull::new(p)
                    .map(|p| unsafe { DynValue::from_ptr(p, Some(self.session.allocator())) })
            })
            .collect();
        result?;
        for ((value, spec), given) in owned.iter().zip(&self.signature.outputs).zip(&is_given) {
            if value.is_none() && !given {
                return Err(ort::Error::new(format!(
                    "output {} was not returned",
                    spec.name
                )));
            }
        }
        Ok(owned)
    }
}

/// An ONNX Runtime tensor over CPU memory the caller holds: a run reads it, or writes it in
/// place when it is given as an output ([`SharedSession::run_into`]). It borrows its memory
/// for as long as it lives.
pub struct TensorView<'a> {
    ptr: NonNull<OrtValue>,
    _memory: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> TensorView<'a> {
    /// `bytes` as a tensor of `shape` and `datatype` (a fixed-size type); its length must be
    /// exactly what the shape needs.
    pub fn new(
        bytes: &'a mut [u8],
        shape: &[usize],
        datatype: DataType,
    ) -> Result<TensorView<'a>, RuntimeError> {
        let elements: usize = shape.iter().product();
        let needed = datatype.element_size().map(|size| size * elements);
        if needed != Some(bytes.len()) {
            return Err(RuntimeError::Run(format!(
                "a tensor view of {shape:?} {datatype:?} over {} bytes",
                bytes.len()
            )));
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let info = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let mut value: *mut OrtValue = ptr::null_mut();
        // SAFETY: `bytes` is valid for reads and writes of its length for 'a, which the view
        // cannot outlive; ONNX Runtime keeps the pointer, not the memory info (copied into the
        // value).
        let status = unsafe {
            (ort::api().CreateTensorWithDataAsOrtValue)(
                info.ptr(),
                bytes.as_mut_ptr().cast(),
                bytes.len(),
                dims.as_ptr(),
                dims.len(),
                element_type_of(datatype).into(),
                &mut value,
            )
        };
        // SAFETY: `status` was just returned by ONNX Runtime and is released here once.
        unsafe { ort::Error::result_from_status(status) }
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let ptr = NonNull::new(value)
            .ok_or_else(|| RuntimeError::Run("ONNX Runtime made no tensor".into()))?;
        Ok(TensorView {
            ptr,
            _memory: std::marker::PhantomData,
        })
    }
}

impl Drop for TensorView<'_> {
    fn drop(&mut self) {
        // SAFETY: the value was made by CreateTensorWithDataAsOrtValue and is released once; it
        // does not own the memory it points to.
        unsafe { (ort::api().ReleaseValue)(self.ptr.as_ptr()) };
    }
}
