//! Checks a decoded request against the model's signature before it may join a batch.
//!
//! Every model input present exactly once, no unknown inputs, no tensor without elements (a
//! zero dimension would let `[9e18, 0]` pass as 9e18 rows of nothing), datatypes, ranks and fixed
//! dimensions as the model declares them (`-1` is dynamic), batched inputs (dimension 0
//! dynamic) agreeing on their number of rows (at least one), requested outputs that exist, each named at most once,
//! and BYTES elements that are UTF-8: ONNX Runtime string tensors hold UTF-8 text, and the
//! binary extension lets a producer send any bytes, which must be refused here rather than
//! altered on their way into a session.

use super::error::ProtocolError;
use super::request::InferenceRequest;
use super::tensor::{Tensor, TensorData};
use super::text::quoted;
use super::types::{ModelSignature, TensorSpec};

fn describe(spec: &TensorSpec) -> String {
    format!("{} {:?}", spec.datatype, spec.shape)
}

fn describe_all(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{} ({})", s.name, describe(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a BYTES element that is not UTF-8, naming its flat (row-major) index.
fn check_utf8(input: &Tensor, path: impl Fn() -> String) -> Result<(), ProtocolError> {
    let TensorData::Bytes(elements) = &input.data else {
        return Ok(());
    };
    for (index, element) in elements.iter().enumerate() {
        if let Err(e) = std::str::from_utf8(element) {
            return Err(ProtocolError::InvalidUtf8 {
                path: path(),
                index,
                offset: e.valid_up_to(),
            });
        }
    }
    Ok(())
}

/// Checks `req` against `sig`; the first problem found is returned.
pub fn validate_request(req: &InferenceRequest, sig: &ModelSignature) -> Result<(), ProtocolError> {
    let mut seen: Vec<Option<usize>> = vec![None; sig.inputs.len()];
    // (rows, index) of the first batched input.
    let mut batch: Option<(usize, usize)> = None;
    // An input's path in errors, written only when there is one (not once per job).
    let path_of = |i: usize| format!("inputs[{i}] ({})", quoted(&req.inputs[i].name));
    for (i, input) in req.inputs.iter().enumerate() {
        let path = || path_of(i);
        let spec = &sig.inputs[input_slot(i, input, sig, &mut seen)?];
        check_input(input, spec, path)?;
        check_utf8(input, path)?;
        if spec.is_batched() {
            let rows = input.shape[0];
            match &batch {
                Some((expected, first)) if *expected != rows => {
                    return Err(ProtocolError::BatchMismatch {
                        path: path(),
                        first: path_of(*first),
                        expected: *expected,
                        got: rows,
                    })
                }
                Some(_) => {}
                None => batch = Some((rows, i)),
            }
        }
    }
    if let Some(k) = seen.iter().position(Option::is_none) {
        let spec = &sig.inputs[k];
        return Err(ProtocolError::MissingInput {
            name: spec.name.clone(),
            spec: describe(spec),
        });
    }
    check_outputs(req, sig)
}

/// The index in `sig.inputs` of request input `i`, which must name a model input not named
/// before (`seen[k]`: the request input that named model input `k`).
fn input_slot(
    i: usize,
    input: &Tensor,
    sig: &ModelSignature,
    seen: &mut [Option<usize>],
) -> Result<usize, ProtocolError> {
    let Some(k) = sig.inputs.iter().position(|s| s.name == input.name) else {
        return Err(ProtocolError::UnknownInput {
            path: format!("inputs[{i}]"),
            name: input.name.clone(),
            expected: describe_all(&sig.inputs),
        });
    };
    if let Some(first) = seen[k] {
        return Err(ProtocolError::DuplicateInput {
            path: format!("inputs[{i}]"),
            name: input.name.clone(),
            first,
        });
    }
    seen[k] = Some(i);
    Ok(k)
}

/// One input against its spec: datatype, rank, fixed dimensions, and at least one element.
fn check_input(
    input: &Tensor,
    spec: &TensorSpec,
    path: impl Fn() -> String,
) -> Result<(), ProtocolError> {
    if input.datatype != spec.datatype {
        return Err(ProtocolError::DatatypeMismatch {
            path: path(),
            expected: spec.datatype,
            got: input.datatype,
        });
    }
    if input.shape.len() != spec.shape.len() {
        return Err(ProtocolError::RankMismatch {
            path: path(),
            expected: spec.shape.len(),
            model_shape: spec.shape.clone(),
            got: input.shape.len(),
            shape: input.shape.clone(),
        });
    }
    for (dim, (&want, &got)) in spec.shape.iter().zip(&input.shape).enumerate() {
        if want >= 0 && usize::try_from(want) != Ok(got) {
            return Err(ProtocolError::DimensionMismatch {
                path: path(),
                dim,
                expected: want,
                got,
            });
        }
    }
    if input.shape.contains(&0) {
        if spec.is_batched() && input.shape[0] == 0 {
            return Err(ProtocolError::EmptyBatch { path: path() });
        }
        return Err(ProtocolError::EmptyTensor {
            path: path(),
            shape: input.shape.clone(),
        });
    }
    Ok(())
}

/// Requested outputs: each one the model has, each named at most once.
fn check_outputs(req: &InferenceRequest, sig: &ModelSignature) -> Result<(), ProtocolError> {
    let mut requested: Vec<Option<usize>> = vec![None; sig.outputs.len()];
    for (i, o) in req.outputs.iter().flatten().enumerate() {
        let Some(k) = sig.outputs.iter().position(|s| s.name == o.name) else {
            return Err(ProtocolError::UnknownOutput {
                path: format!("outputs[{i}]"),
                name: o.name.clone(),
                valid: sig
                    .outputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if let Some(first) = requested[k] {
            return Err(ProtocolError::DuplicateOutput {
                path: format!("outputs[{i}]"),
                name: o.name.clone(),
                first,
            });
        }
        requested[k] = Some(i);
    }
    Ok(())
}
