//! ONNX Runtime sessions: execution providers, model signatures, and tensors in and out.
//!
//! Tensors cross the boundary as packed little-endian bytes ([`TensorData::Fixed`]), so a batch
//! is copied once into an ONNX Runtime tensor and once out of it, whatever the datatype. Running
//! a batch is [`super::shared::SharedSession`]'s.

use ort::ep::{self, ExecutionProvider as _};
use ort::memory::Allocator;
use std::path::Path;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{DynTensor, DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::cuda::{CudaInstance, CudaSettings};
use super::ExecutionProvider;
use super::RuntimeError;
use crate::protocol::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// How sessions are made: execution providers in order of preference, threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    pub execution_providers: Vec<ExecutionProvider>,
    /// Fail instead of falling back to the CPU when CUDA cannot be used.
    pub require_gpu: bool,
    /// Intra-op threads per session; 0 leaves ONNX Runtime's default.
    pub intra_threads: usize,
    /// CPUs for instance threads (one each, round robin) and for the threads sessions
    /// create; empty leaves them unpinned ([`super::affinity`]).
    pub cpus: Vec<usize>,
    /// CUDA devices of instances and arena options (`[runtime.cuda]`), used when CUDA runs.
    pub cuda: CudaSettings,
}

impl SessionOptions {
    pub fn cpu() -> SessionOptions {
        SessionOptions {
            execution_providers: vec![ExecutionProvider::Cpu],
            require_gpu: false,
            intra_threads: 1,
            cpus: Vec::new(),
            cuda: CudaSettings::default(),
        }
    }

    /// True when CUDA is asked for and the loaded ONNX Runtime was built with it.
    pub fn cuda_available() -> bool {
        ep::CUDA::is_available().unwrap_or(false)
    }

    /// Checks once at start that a required GPU can be had.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.require_gpu && !Self::cuda_available() {
            return Err(RuntimeError::GpuUnavailable(
                "runtime.require_gpu is true but the loaded ONNX Runtime has no CUDA execution provider (use an onnxruntime-gpu build via runtime.library or ORT_DYLIB_PATH)".into(),
            ));
        }
        Ok(())
    }

    /// The execution providers actually registered, by name (for logs and /v2/models).
    pub fn effective(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .execution_providers
            .iter()
            .filter_map(|p| match p {
                ExecutionProvider::Cuda if Self::cuda_available() || self.require_gpu => {
                    Some("cuda")
                }
                ExecutionProvider::Cuda => None,
                ExecutionProvider::Cpu => Some("cpu"),
            })
            .collect();
        if !names.contains(&"cpu") && !self.require_gpu {
            names.push("cpu");
        }
        names
    }

    fn dispatches(&self, cuda: &CudaInstance) -> Vec<ep::ExecutionProviderDispatch> {
        self.effective()
            .into_iter()
            .map(|name| match name {
                "cuda" if self.require_gpu => cuda.provider().build().error_on_failure(),
                "cuda" => cuda.provider().build(),
                _ => ep::CPU::default().build(),
            })
            .collect()
    }

    /// Creates a session from ONNX bytes (a model without external data: ONNX Runtime would
    /// look for it in the working directory), on CUDA device 0 when CUDA is used.
    pub fn session(&self, model: &[u8]) -> Result<Session, RuntimeError> {
        let load = |e: ort::Error| RuntimeError::Load(e.to_string());
        let cuda = self.cuda.instance(0);
        self.builder(&cuda)?.commit_from_memory(model).map_err(load)
    }

    /// Creates a session from a model file, so ONNX Runtime reads it itself and finds external
    /// data beside it; `cuda`: the device and arena options when CUDA is used.
    pub fn session_from_path(
        &self,
        model: &Path,
        cuda: &CudaInstance,
    ) -> Result<Session, RuntimeError> {
        let load = |e: ort::Error| RuntimeError::Load(format!("{}: {e}", model.display()));
        self.builder(cuda)?.commit_from_file(model).map_err(load)
    }

    /// A session builder with these options applied, to be committed by the caller.
    pub fn builder(&self, cuda: &CudaInstance) -> Result<SessionBuilder, RuntimeError> {
        let environment = super::env::environment().ok_or(RuntimeError::NotInitialised)?;
        self.build(environment, cuda)
            .map_err(|e| RuntimeError::Load(e.to_string()))
    }

    fn build(
        &self,
        environment: &ort::environment::Environment,
        cuda: &CudaInstance,
    ) -> ort::Result<SessionBuilder> {
        let mut builder = Session::builder(environment)?
            .with_execution_providers(self.dispatches(cuda))?
            .with_optimization_level(GraphOptimizationLevel::All)?;
        if self.intra_threads > 0 {
            builder = builder.with_intra_threads(self.intra_threads)?;
        }
        Ok(builder)
    }
}

/// Maps an ONNX element type to the contract's datatype.
pub fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

pub(super) fn element_type_of(dt: DataType) -> TensorElementType {
    match dt {
        DataType::Bool => TensorElementType::Bool,
        DataType::U8 => TensorElementType::Uint8,
        DataType::U16 => TensorElementType::Uint16,
        DataType::U32 => TensorElementType::Uint32,
        DataType::U64 => TensorElementType::Uint64,
        DataType::I8 => TensorElementType::Int8,
        DataType::I16 => TensorElementType::Int16,
        DataType::I32 => TensorElementType::Int32,
        DataType::I64 => TensorElementType::Int64,
        DataType::F16 => TensorElementType::Float16,
        DataType::F32 => TensorElementType::Float32,
        DataType::F64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

fn spec_of(role: &'static str, name: &str, dtype: &ValueType) -> Result<TensorSpec, RuntimeError> {
    let unsupported = || RuntimeError::UnsupportedType {
        role,
        name: name.to_string(),
        ty: match dtype {
            ValueType::Tensor { .. } => {
                format!("a {dtype}, an element type outside the KServe datatypes")
            }
            _ => format!("not a tensor but a {dtype}"),
        },
    };
    let ty = dtype.tensor_type().ok_or_else(unsupported)?;
    let datatype = datatype_of(ty).ok_or_else(unsupported)?;
    let shape = dtype.tensor_shape().ok_or_else(unsupported)?;
    Ok(TensorSpec {
        name: name.to_string(),
        datatype,
        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
    })
}

/// The inputs and outputs of a session.
pub fn signature_of(session: &Session) -> Result<ModelSignature, RuntimeError> {
    let inputs = session
        .inputs()
        .iter()
        .map(|o| spec_of("input", o.name(), o.dtype()))
        .collect::<Result<_, _>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| spec_of("output", o.name(), o.dtype()))
        .collect::<Result<_, _>>()?;
    Ok(ModelSignature { inputs, outputs })
}

/// Each input's and output's symbolic dimension names (`dim_param`) as the session reports
/// them, signature order; `None` where a dimension has none (fixed, or dynamic without a name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimNames {
    pub inputs: Vec<Vec<Option<String>>>,
    pub outputs: Vec<Vec<Option<String>>>,
}

fn names_of(dtype: &ValueType) -> Vec<Option<String>> {
    match dtype {
        ValueType::Tensor {
            dimension_symbols, ..
        } => dimension_symbols
            .iter()
            .map(|s| (!s.is_empty()).then(|| s.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The symbolic dimension names of a session's inputs and outputs.
pub fn dim_names_of(session: &Session) -> DimNames {
    DimNames {
        inputs: session
            .inputs()
            .iter()
            .map(|o| names_of(o.dtype()))
            .collect(),
        outputs: session
            .outputs()
            .iter()
            .map(|o| names_of(o.dtype()))
            .collect(),
    }
}

/// A value in CPU memory holding a copy of `tensor`.
pub fn to_ort(tensor: &Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    match &tensor.data {
        TensorData::Fixed(bytes) => {
            let mut value = DynTensor::new(
                &Allocator::default(),
                element_type_of(tensor.datatype),
                shape,
            )?;
            let len = value.size().unwrap_or(0);
            if len != bytes.len() {
                return Err(ort::Error::new(format!(
                    "input {} holds {} bytes, its shape needs {len}",
                    tensor.name,
                    bytes.len()
                )));
            }
            // SAFETY: the tensor was allocated on the CPU for exactly `len` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    value.data_ptr_mut().cast::<u8>(),
                    len,
                )
            };
            Ok(value.into_dyn())
        }
        TensorData::Bytes(elements) => {
            // Validation refuses non-UTF-8 elements before a job may join a batch; should one
            // get here anyway, fail rather than alter it.
            let strings = elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    std::str::from_utf8(e).map(str::to_owned).map_err(|_| {
                        ort::Error::new(format!(
                            "input {}: element {i} is not valid UTF-8",
                            tensor.name
                        ))
                    })
                })
                .collect::<ort::Result<Vec<String>>>()?;
            Ok(OrtTensor::from_string_array((shape, strings.as_slice()))?.into_dyn())
        }
    }
}

/// A tensor value in CPU memory: its shape, datatype and bytes, borrowed from `value` (an
/// output of [`super::SharedSession::run_values`], or a value made by [`to_ort`]).
pub fn value_view(value: &DynValue) -> ort::Result<(Vec<usize>, DataType, &[u8])> {
    let dtype = value.dtype();
    let ty = dtype
        .tensor_type()
        .ok_or_else(|| ort::Error::new("the value is not a tensor"))?;
    let datatype = datatype_of(ty)
        .filter(|d| *d != DataType::Bytes)
        .ok_or_else(|| ort::Error::new(format!("a tensor of {ty:?} has no fixed-size bytes")))?;
    let shape: Vec<usize> = dtype
        .tensor_shape()
        .map(|s| s.iter().map(|&d| d.max(0) as usize).collect())
        .unwrap_or_default();
    let tensor = value.view().downcast::<ort::value::DynTensorValueType>()?;
    let len = tensor.size().unwrap_or(0);
    // SAFETY: run outputs live in CPU memory (no IoBinding), `len` bytes long, valid while
    // `value` is, which the returned slice borrows.
    let bytes = unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<u8>(), len) };
    Ok((shape, datatype, bytes))
}

pub(super) fn from_ort(name: &str, value: &DynValue) -> ort::Result<Tensor> {
    let dtype = value.dtype();
    let ty = dtype
        .tensor_type()
        .ok_or_else(|| ort::Error::new(format!("output {name} is not a tensor")))?;
    let datatype = datatype_of(ty)
        .ok_or_else(|| ort::Error::new(format!("output {name} has unsupported type {ty:?}")))?;
    let shape: Vec<usize> = dtype
        .tensor_shape()
        .map(|s| s.iter().map(|&d| d.max(0) as usize).collect())
        .unwrap_or_default();
    let data = if datatype == DataType::Bytes {
        let (_, strings) = value.try_extract_strings()?;
        TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect())
    } else {
        let tensor = value.view().downcast::<ort::value::DynTensorValueType>()?;
        let len = tensor.size().unwrap_or(0);
        // SAFETY: outputs live in CPU memory (no IoBinding), `len` bytes long, valid while `value` is.
        let bytes = unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<u8>(), len) };
        TensorData::Fixed(bytes.to_vec())
    };
    Ok(Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data,
    })
}
