//! What a loaded version takes in, read once when it loads: the signature producers see, the
//! padding of its batches ([`PadPlan`], from the `[inputs.<name>] pad_value` keys and the
//! model's symbolic dimension names) and its text input ([`TextIn`], from a tokenizer).
//!
//! Without pad values and without a text input nothing changes: the producers' signature is the
//! model's and jobs batch only with jobs of equal shapes.

use std::path::Path;
use std::sync::Arc;

use crate::execution::padding::{PadLiteral, PadPlan, PadValue, SymbolicTensor};
use crate::execution::text::TextIn;
use crate::protocol::ModelSignature;
use crate::repository::ModelConfig;
use crate::runtime::DimNames;

/// A version's inputs as served.
pub struct VersionInputs {
    /// What producers send and get (validation, metadata, `/v2/models`).
    pub signature: ModelSignature,
    pub pad_plan: Option<Arc<PadPlan>>,
    pub text: Option<Arc<TextIn>>,
}

/// Reads the inputs of the version at `model_path` (its `model.onnx`), whose runtime signature
/// is `model` and whose symbolic dimension names the runtime reports as `names` (`None`: not
/// known, so nothing can be padded), as `config` asks; the message names the key of what
/// cannot be served.
pub fn version_inputs(
    config: &ModelConfig,
    model_path: &Path,
    model: &ModelSignature,
    names: Option<&DimNames>,
) -> Result<VersionInputs, String> {
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let text = config
        .text
        .as_ref()
        .map(|t| TextIn::load(t, dir, model))
        .transpose()?;
    let text_name = config.text.as_ref().map(|t| t.name.as_str());
    for name in config.inputs.keys() {
        if Some(name.as_str()) != text_name && !model.inputs.iter().any(|i| &i.name == name) {
            let known: Vec<&str> = model.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(format!(
                "inputs.{name}: the model has no input {name:?} (its inputs: {})",
                known.join(", ")
            ));
        }
    }
    let mut values = Vec::with_capacity(model.inputs.len());
    for input in &model.inputs {
        let configured = config
            .inputs
            .get(&input.name)
            .and_then(|i| i.pad_value.clone());
        let literal = configured.or_else(|| {
            let id = text.as_ref()?.default_pad(&input.name)?;
            Some(PadLiteral::Int(id))
        });
        let value = literal
            .map(|l| PadValue::new(input.datatype, &l))
            .transpose()
            .map_err(|e| format!("inputs.{}.{e}", input.name))?;
        values.push(value);
    }
    let padding = if values.iter().any(Option::is_some) {
        let names = names.ok_or("inputs: pad values are given, but the runtime does not report the model's dimension names")?;
        Some(Arc::new(plan(model, names, values)?))
    } else {
        None
    };
    let signature = match &text {
        Some(text) => text.public(model),
        None => model.clone(),
    };
    Ok(VersionInputs {
        signature,
        pad_plan: padding,
        text: text.map(Arc::new),
    })
}

/// The padding of a model whose inputs have pad `values` (signature order), from the symbolic
/// dimension names `names` the runtime reports.
fn plan(
    model: &ModelSignature,
    names: &DimNames,
    values: Vec<Option<PadValue>>,
) -> Result<PadPlan, String> {
    let input_dims = &names.inputs;
    let output_dims = &names.outputs;
    let input_names: Vec<Vec<Option<&str>>> = input_dims.iter().map(|d| as_str(d)).collect();
    let output_names: Vec<Vec<Option<&str>>> = output_dims.iter().map(|d| as_str(d)).collect();
    let symbolic_inputs: Vec<(SymbolicTensor, Option<PadValue>)> = model
        .inputs
        .iter()
        .zip(&input_names)
        .zip(values)
        .map(|((spec, dims), value)| {
            let tensor = SymbolicTensor {
                name: &spec.name,
                dims,
            };
            (tensor, value)
        })
        .collect();
    let symbolic_outputs: Vec<SymbolicTensor> = model
        .outputs
        .iter()
        .zip(&output_names)
        .map(|(spec, dims)| SymbolicTensor {
            name: &spec.name,
            dims,
        })
        .collect();
    let plan =
        PadPlan::new(&symbolic_inputs, &symbolic_outputs).map_err(|e| format!("inputs: {e}"))?;
    if !plan.pads() {
        return Err("inputs: pad values are given, but no input with one has a named (dim_param) dimension after the first: nothing can be padded".into());
    }
    Ok(plan)
}

/// Borrowed dimension names.
fn as_str(dims: &[Option<String>]) -> Vec<Option<&str>> {
    dims.iter().map(|d| d.as_deref()).collect()
}
