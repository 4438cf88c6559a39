//! Whether a job may write a version of its model: its name must match `training.allowed_models`
//! and, when the model exists, the version it would produce must keep the inference signature of
//! the model's newest version (input and output names, datatypes, non-batch dimensions), so that
//! the model's clients keep working. Pure apart from [`served_signature`], which reads the file.

use crate::onnx::{decode_model, signature, Signature, TensorSignature};
use crate::repository::ModelStore;

use super::budget::{Budget, Rules};
use super::data::DataSource;
use super::error::TrainingError;
use super::files::DataLimits;
use super::job::TrainJob;

/// Longest producer or file text echoed in a refusal.
const MAX_ECHO: usize = 128;

fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

/// `*` matches any run of characters (also none), `?` exactly one; the rest matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let mut pi = 0;
    let mut ni = 0;
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Refuses a model name matching none of `patterns` (`training.allowed_models`; empty: any).
pub fn check_allowed(patterns: &[String], model: &str) -> Result<(), TrainingError> {
    if patterns.is_empty() || patterns.iter().any(|p| glob_match(p, model)) {
        return Ok(());
    }
    Err(TrainingError::ModelRefused(format!(
        "{} matches none of training.allowed_models",
        quoted(model)
    )))
}

/// The signature of the newest version of `model` in `store`, `None` when it has no version.
pub fn served_signature(
    store: &ModelStore,
    model: &str,
) -> Result<Option<Signature>, TrainingError> {
    let failed = |e: String| {
        TrainingError::ModelRefused(format!(
            "{}: the newest version cannot be read ({e})",
            quoted(model)
        ))
    };
    let Some(&newest) = store
        .versions(model)
        .map_err(|e| failed(e.to_string()))?
        .last()
    else {
        return Ok(None);
    };
    let bytes = store
        .read_version(model, newest)
        .map_err(|e| failed(e.to_string()))?;
    let proto = decode_model(&bytes).map_err(|e| failed(e.to_string()))?;
    signature(&proto)
        .map(Some)
        .map_err(|e| failed(e.to_string()))
}

/// What a job training `features` inputs into `units` outputs would serve: `input` FP32
/// `[-1, features]` → `output` FP32 `[-1, units]`, or, when the model already serves one input
/// and one output, under those names.
pub fn produced_signature(served: Option<&Signature>, features: usize, units: usize) -> Signature {
    let name = |list: Option<&Vec<TensorSignature>>, default: &str| match list {
        Some(l) if l.len() == 1 => l[0].name.clone(),
        _ => default.to_string(),
    };
    let tensor = |name: String, width: usize| TensorSignature {
        name,
        datatype: "FP32".to_string(),
        dims: vec![-1, width as i64],
    };
    Signature {
        inputs: vec![tensor(name(served.map(|s| &s.inputs), "input"), features)],
        outputs: vec![tensor(name(served.map(|s| &s.outputs), "output"), units)],
    }
}

fn describe(t: &TensorSignature) -> String {
    let dims: Vec<String> = t.dims.iter().map(i64::to_string).collect();
    format!("{} {} [{}]", quoted(&t.name), t.datatype, dims.join(", "))
}

fn describe_all(list: &[TensorSignature]) -> String {
    let all: Vec<String> = list.iter().take(4).map(describe).collect();
    let more = list.len().saturating_sub(4);
    if more > 0 {
        format!("{} and {more} more", all.join(", "))
    } else {
        all.join(", ")
    }
}

/// Same name, datatype, rank and dimensions after the first (the batch dimension).
fn same(a: &TensorSignature, b: &TensorSignature) -> bool {
    a.name == b.name
        && a.datatype == b.datatype
        && a.dims.len() == b.dims.len()
        && a.dims.iter().skip(1).eq(b.dims.iter().skip(1))
}

/// Refuses a new version whose signature differs from the served one, naming the difference.
pub fn check_signature(
    model: &str,
    served: &Signature,
    produced: &Signature,
) -> Result<(), TrainingError> {
    for (kind, have, want) in [
        ("input", &served.inputs, &produced.inputs),
        ("output", &served.outputs, &produced.outputs),
    ] {
        let differs = if have.len() != want.len() {
            Some((describe_all(have), describe_all(want)))
        } else {
            have.iter()
                .zip(want.iter())
                .find(|(h, w)| !same(h, w))
                .map(|(h, w)| (describe(h), describe(w)))
        };
        if let Some((serves, would)) = differs {
            let plural = if have.len() == 1 { "" } else { "s" };
            return Err(TrainingError::ModelRefused(format!(
                "{} serves {kind}{plural} {serves}; this job would produce {would}",
                quoted(model)
            )));
        }
    }
    Ok(())
}

/// The checks a job passes before it is trained: its model name against `allowed` patterns, the
/// budget at once for inline data (file data is checked by the engine once read), and the
/// served signature read from `store`, which the engine compares once the data's width is known.
pub fn admit(
    job: &TrainJob,
    store: &ModelStore,
    data: &DataLimits,
    budget: &Budget,
    allowed: &[String],
) -> Result<Rules, TrainingError> {
    check_allowed(allowed, &job.model_name)?;
    if let DataSource::Inline(raw) = &job.data {
        budget.check(job, raw.rows, raw.features)?;
    }
    Ok(Rules {
        data: data.clone(),
        budget: budget.clone(),
        served: served_signature(store, &job.model_name)?,
    })
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
