//! Padded batches, as pure functions over tensors: a job's lengths in the model's padded
//! dimensions (refused when its inputs disagree on one), a batch's inputs padded to its longest
//! job with each input's pad value, and each job's outputs cut back to its own lengths.
//!
//! Which dimensions are padded comes from the model's symbolic dimension names (`dim_param`):
//! every dimension after the first of an input that has a pad value, and that is symbolic, is
//! padded; inputs sharing a name (`sequence` on `input_ids` and `attention_mask`) are padded
//! together, and an output dimension with that name is cut back. [`PadPlan`] holds that
//! reading; it is built once per model version, so the functions here never see names.
//!
//! Padding then cutting back is the identity (property-tested), for every datatype.

use crate::protocol::{ErrorCode, Tensor};

mod block;
mod value;

use block::{blank, copy_region, Place};
pub use value::{PadLiteral, PadValue, PadValueError};

/// One padded axis of a tensor, and which of the model's padded dimensions it is (an index
/// into a job's lengths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaddedAxis {
    pub axis: usize,
    pub dim: usize,
}

/// How one model input is padded: nothing (empty `axes`, no value), or along `axes` with
/// `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPad {
    pub name: String,
    pub axes: Vec<PaddedAxis>,
    pub value: Option<PadValue>,
}

/// A model version's padding: its padded dimensions' names, each input's padding (signature
/// order) and each output's axes cut back (signature order).
#[derive(Debug, Clone, PartialEq)]
pub struct PadPlan {
    pub dims: Vec<String>,
    pub inputs: Vec<InputPad>,
    pub outputs: Vec<Vec<PaddedAxis>>,
}

/// A model input or output as [`PadPlan::new`] reads it: its name and, for each dimension, its
/// symbolic name (`dim_param`), `None` for a fixed size.
#[derive(Debug, Clone, Copy)]
pub struct SymbolicTensor<'a> {
    pub name: &'a str,
    pub dims: &'a [Option<&'a str>],
}

/// A model whose padding cannot be read from its dimension names and pad values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(String);

/// Why a job or a batch could not be padded or cut back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PadError {
    /// Two inputs of one job disagree on a shared padded dimension: the producer's fault.
    #[error("inputs: {other}.shape[{other_axis}] is {other_len} but {first}.shape[{first_axis}] is {first_len}: both are the model's dimension {dim:?} and must be equal within a job")]
    SharedDimension {
        dim: String,
        first: String,
        first_axis: usize,
        first_len: usize,
        other: String,
        other_axis: usize,
        other_len: usize,
    },
    /// The tensors do not fit the plan (a batch built wrongly): the worker's fault.
    #[error("padding: {0}")]
    Inconsistent(String),
}

impl PadError {
    /// `invalid_request` for a job's own inputs, `internal` for the rest.
    pub fn code(&self) -> ErrorCode {
        match self {
            PadError::SharedDimension { .. } => ErrorCode::InvalidRequest,
            PadError::Inconsistent(_) => ErrorCode::Internal,
        }
    }
}

fn inconsistent(message: impl Into<String>) -> PadError {
    PadError::Inconsistent(message.into())
}

impl PadPlan {
    /// Reads a model's padding: each dimension after the first of an input with a pad value is
    /// padded when it is symbolic; dimensions of one name are padded together and numbered in
    /// order of first appearance; output dimensions of those names are cut back. An input
    /// without a pad value that has such a dimension is refused (its jobs could never share a
    /// batch, and its length would go unchecked against the others').
    pub fn new(
        inputs: &[(SymbolicTensor, Option<PadValue>)],
        outputs: &[SymbolicTensor],
    ) -> Result<PadPlan, PlanError> {
        let mut dims: Vec<String> = Vec::new();
        for (tensor, _) in inputs.iter().filter(|(_, value)| value.is_some()) {
            for name in tensor.dims.iter().skip(1).flatten() {
                if !dims.iter().any(|d| d == name) {
                    dims.push(name.to_string());
                }
            }
        }
        let axes = |tensor: &SymbolicTensor| -> Vec<PaddedAxis> {
            let dim = |name: &&str| dims.iter().position(|d| d == name);
            let named = tensor.dims.iter().enumerate().skip(1);
            named
                .filter_map(|(axis, name)| {
                    name.as_ref()
                        .and_then(dim)
                        .map(|dim| PaddedAxis { axis, dim })
                })
                .collect()
        };
        let mut plan_inputs = Vec::with_capacity(inputs.len());
        for (tensor, value) in inputs {
            let padded = axes(tensor);
            if let (None, Some(a)) = (value, padded.first()) {
                return Err(PlanError(format!(
                    "input {:?} has the padded dimension {:?} but no pad_value",
                    tensor.name, dims[a.dim]
                )));
            }
            plan_inputs.push(InputPad {
                name: tensor.name.to_string(),
                axes: padded,
                value: value.clone(),
            });
        }
        Ok(PadPlan {
            outputs: outputs.iter().map(axes).collect(),
            inputs: plan_inputs,
            dims,
        })
    }

    /// True when some input is padded.
    pub fn pads(&self) -> bool {
        self.inputs.iter().any(|i| !i.axes.is_empty())
    }

    /// A job's length in each padded dimension, read from its inputs (signature order, shapes
    /// already validated against the model's ranks); refused naming both inputs when two
    /// disagree.
    pub fn lengths(&self, inputs: &[Tensor]) -> Result<Vec<usize>, PadError> {
        let mut seen: Vec<Option<(usize, usize, usize)>> = vec![None; self.dims.len()];
        for (index, (pad, tensor)) in self.inputs.iter().zip(inputs).enumerate() {
            for a in &pad.axes {
                let len = *tensor
                    .shape
                    .get(a.axis)
                    .ok_or_else(|| inconsistent(format!("{} has no axis {}", pad.name, a.axis)))?;
                let slot = seen
                    .get_mut(a.dim)
                    .ok_or_else(|| inconsistent(format!("no padded dimension #{}", a.dim)))?;
                match *slot {
                    None => *slot = Some((index, a.axis, len)),
                    Some((first, first_axis, first_len)) if first_len != len => {
                        return Err(PadError::SharedDimension {
                            dim: self.dims[a.dim].clone(),
                            first: self.inputs[first].name.clone(),
                            first_axis,
                            first_len,
                            other: pad.name.clone(),
                            other_axis: a.axis,
                            other_len: len,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(seen.into_iter().map(|s| s.map_or(0, |s| s.2)).collect())
    }

    /// The exact part of a job's batching key: every input's dimensions after the first, with
    /// padded ones written as 0, each input closed by `usize::MAX`.
    pub fn exact_key(&self, inputs: &[Tensor]) -> Vec<usize> {
        let mut key = Vec::new();
        for (index, tensor) in inputs.iter().enumerate() {
            let axes = self.inputs.get(index).map_or(&[][..], |p| &p.axes[..]);
            for (axis, &d) in tensor.shape.iter().enumerate().skip(1) {
                let padded = axes.iter().any(|a| a.axis == axis);
                key.push(if padded { 0 } else { d });
            }
            key.push(usize::MAX);
        }
        key
    }

    /// The batch's inputs: each job's inputs (signature order) joined along dimension 0 and
    /// padded to the longest of `lengths` (each job's, as [`PadPlan::lengths`] measured them
    /// when it was accepted) in each padded dimension.
    pub fn pad_batch(
        &self,
        jobs: &[&[Tensor]],
        lengths: &[&[usize]],
    ) -> Result<Vec<Tensor>, PadError> {
        let mut longest = vec![0usize; self.dims.len()];
        for job in lengths {
            if job.len() != longest.len() {
                return Err(inconsistent(
                    "a job's lengths do not match the padded dimensions",
                ));
            }
            for (l, &len) in longest.iter_mut().zip(job.iter()) {
                *l = (*l).max(len);
            }
        }
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, pad)| {
                let parts: Vec<&Tensor> = jobs
                    .iter()
                    .map(|job| {
                        job.get(i)
                            .ok_or_else(|| inconsistent("a job lacks an input"))
                    })
                    .collect::<Result<_, _>>()?;
                pad_input(&parts, pad, &longest)
            })
            .collect()
    }

    /// Each job's outputs from the batch's: its rows (`rows` per job, in batch order) and,
    /// along the padded axes, its own `lengths`.
    pub fn cut_batch(
        &self,
        outputs: &[Tensor],
        jobs: &[(usize, &[usize])],
    ) -> Result<Vec<Vec<Tensor>>, PadError> {
        let mut per_job: Vec<Vec<Tensor>> = jobs
            .iter()
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for (o, output) in outputs.iter().enumerate() {
            let axes = self.outputs.get(o).map_or(&[][..], |a| &a[..]);
            let mut start = 0;
            for (j, &(rows, lengths)) in jobs.iter().enumerate() {
                per_job[j].push(cut_rows(output, start, rows, axes, lengths)?);
                start += rows;
            }
        }
        Ok(per_job)
    }
}

/// Joins `parts` (one input of each job) along dimension 0, padding each of `pad`'s axes to
/// `longest[dim]` with its value.
pub fn pad_input(parts: &[&Tensor], pad: &InputPad, longest: &[usize]) -> Result<Tensor, PadError> {
    let first = parts.first().ok_or_else(|| inconsistent("no parts"))?;
    let mut shape = first.shape.clone();
    if shape.is_empty() {
        return Err(inconsistent(format!("{} is a scalar", pad.name)));
    }
    shape[0] = 0;
    for a in &pad.axes {
        let target = longest.get(a.dim).copied();
        *shape
            .get_mut(a.axis)
            .ok_or_else(|| inconsistent(format!("{} has no axis {}", pad.name, a.axis)))? =
            target.ok_or_else(|| inconsistent(format!("no padded dimension #{}", a.dim)))?;
    }
    for part in parts {
        let fits = part.datatype == first.datatype
            && part.shape.len() == shape.len()
            && part.is_consistent()
            && (1..shape.len()).all(|d| {
                let padded = pad.axes.iter().any(|a| a.axis == d);
                part.shape[d] == shape[d] || (padded && part.shape[d] <= shape[d])
            });
        if !fits {
            return Err(inconsistent(format!(
                "{}: part {} {:?} does not fit {} {:?}",
                pad.name, part.datatype, part.shape, first.datatype, shape
            )));
        }
        shape[0] += part.shape[0];
    }
    if pad.axes.is_empty() || parts.iter().all(|p| p.shape[1..] == shape[1..]) {
        return Tensor::concat_rows(parts).map_err(|e| inconsistent(e.to_string()));
    }
    let value = pad
        .value
        .as_ref()
        .ok_or_else(|| inconsistent(format!("{} is padded without a pad value", pad.name)))?;
    let count = crate::protocol::tensor::checked_count(&shape)
        .ok_or_else(|| inconsistent(format!("{}: padded shape {shape:?} overflows", pad.name)))?;
    let row: usize = shape[1..].iter().product();
    let mut data = value.filled(first.datatype, count)?;
    let mut offset = 0;
    for part in parts {
        let from = Place {
            shape: &part.shape,
            offset: 0,
        };
        let to = Place {
            shape: &shape,
            offset: offset * row,
        };
        copy_region(&part.data, from, &mut data, to, &part.shape, first.datatype)?;
        offset += part.shape[0];
    }
    Ok(Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data,
    })
}

/// Rows `start..start + rows` of `output`, each of `axes` cut to `lengths[dim]`.
pub fn cut_rows(
    output: &Tensor,
    start: usize,
    rows: usize,
    axes: &[PaddedAxis],
    lengths: &[usize],
) -> Result<Tensor, PadError> {
    let end = start
        .checked_add(rows)
        .filter(|&end| !output.shape.is_empty() && end <= output.shape[0] && output.is_consistent())
        .ok_or_else(|| {
            inconsistent(format!(
                "output {} {:?} has no rows {start}..{start}+{rows}",
                output.name, output.shape
            ))
        })?;
    if axes.is_empty() {
        return Ok(output.slice_rows(start, end));
    }
    let mut shape = output.shape.clone();
    shape[0] = rows;
    for a in axes {
        let len = lengths.get(a.dim).copied().unwrap_or(usize::MAX);
        match shape.get_mut(a.axis) {
            Some(d) if len <= *d => *d = len,
            _ => {
                return Err(inconsistent(format!(
                    "output {} {:?}: cannot cut axis {} to {len}",
                    output.name, output.shape, a.axis
                )))
            }
        }
    }
    let row: usize = output.shape[1..].iter().product();
    let mut data = blank(output.datatype, shape.iter().product());
    let from = Place {
        shape: &output.shape,
        offset: start * row,
    };
    let to = Place {
        shape: &shape,
        offset: 0,
    };
    copy_region(&output.data, from, &mut data, to, &shape, output.datatype)?;
    Ok(Tensor {
        name: output.name.clone(),
        datatype: output.datatype,
        shape,
        data,
    })
}

#[cfg(test)]
mod tests;
