//! The `warmup` key of a model's `config.toml`: whether and how a version is warmed before it
//! serves. Two kinds, with different rules when the run fails:
//!
//! - **made up** (`true`, the default, or a list of batch sizes): infermq makes the inputs from
//!   the signature. It cannot know what a model needs (a minimum length, a value that matters),
//!   so this warm-up is best-effort: a failure is logged, counted and shown, and the version
//!   serves all the same.
//! - **described** (`[[warmup]]` tables, Triton's `model_warmup`): the operator gives each input's
//!   shape and data (zeros, random values or a file). It states what the model must run, so a
//!   failure refuses the version.
//!
//! Read here; the tensors are made by [`crate::serving::warmup`] once the signature is known.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::protocol::DataType;

/// Most runs of one described sample (`count`).
pub const MAX_WARMUP_COUNT: usize = 100;

/// `warmup`: made up (default, or at given batch sizes), off, or described samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Warmup {
    /// Made-up inputs at batch 1 and `max_batch_size`, or at each preferred batch size.
    #[default]
    Default,
    Off,
    /// Made-up inputs at these batch sizes (each capped at `max_batch_size`).
    Sizes(Vec<usize>),
    /// The operator's samples, run in order; one that fails refuses the version.
    Samples(Vec<WarmupSample>),
}

/// One `[[warmup]]` table, as Triton's `ModelWarmup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupSample {
    /// For logs and errors; `warmup[i]` when not given.
    pub name: String,
    /// Rows put in front of each input's `dims` when the version is batched; must be 1 when it
    /// is not (its inputs are then exactly `dims`).
    pub batch_size: usize,
    /// Times the sample runs on each session.
    pub count: usize,
    /// Every input of the model, by name.
    pub inputs: BTreeMap<String, WarmupInput>,
}

/// `[warmup.inputs.<name>]`: the shape (without the batch dimension of a batched model) and
/// the data of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupInput {
    pub dims: Vec<usize>,
    /// Checked against the model's datatype when given.
    pub data_type: Option<DataType>,
    pub data: WarmupData,
}

/// Where a described input's values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmupData {
    Zero,
    /// Reproducible pseudo-random values (the same every load).
    Random,
    /// Raw little-endian values of the input's datatype (BYTES: each element a 4-byte
    /// little-endian length and its bytes, Triton's layout), in `models/<name>/warmup/`.
    File(PathBuf),
}

impl Warmup {
    /// Reads the `warmup` value of the config file of the model in `model_dir`; the error names
    /// the key (`warmup[1].inputs.x.dims`).
    pub(super) fn from_value(value: toml::Value, model_dir: &Path) -> Result<Warmup, String> {
        let sizes_expected = "warmup: expected true, false, a list of batch sizes, each at least 1 (e.g. [1, 32]), or [[warmup]] tables";
        match value {
            toml::Value::Boolean(true) => Ok(Warmup::Default),
            toml::Value::Boolean(false) => Ok(Warmup::Off),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                if items.is_empty() {
                    return Err(sizes_expected.into());
                }
                let samples = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| sample(i, item, model_dir))
                    .collect::<Result<_, _>>()?;
                Ok(Warmup::Samples(samples))
            }
            toml::Value::Array(items) => {
                let sizes: Vec<usize> = items
                    .iter()
                    .map(|v| v.as_integer().and_then(|n| usize::try_from(n).ok()))
                    .collect::<Option<_>>()
                    .ok_or(sizes_expected)?;
                if sizes.is_empty() || sizes.contains(&0) {
                    return Err(sizes_expected.into());
                }
                Ok(Warmup::Sizes(sizes))
            }
            _ => Err(sizes_expected.into()),
        }
    }

    /// True when a failure of this warm-up refuses the version.
    pub fn is_described(&self) -> bool {
        matches!(self, Warmup::Samples(_))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSample {
    name: Option<String>,
    #[serde(default = "one")]
    batch_size: usize,
    #[serde(default = "one")]
    count: usize,
    inputs: BTreeMap<String, RawInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    dims: Vec<usize>,
    data_type: Option<String>,
    #[serde(default)]
    zero_data: bool,
    #[serde(default)]
    random_data: bool,
    input_data_file: Option<String>,
}

fn one() -> usize {
    1
}

fn sample(i: usize, value: toml::Value, model_dir: &Path) -> Result<WarmupSample, String> {
    let raw: RawSample = value
        .try_into()
        .map_err(|e: toml::de::Error| format!("warmup[{i}]: {}", e.message()))?;
    if raw.batch_size == 0 {
        return Err(format!(
            "warmup[{i}].batch_size: expected at least 1, got 0"
        ));
    }
    if raw.count == 0 || raw.count > MAX_WARMUP_COUNT {
        return Err(format!(
            "warmup[{i}].count: expected 1 to {MAX_WARMUP_COUNT}, got {}",
            raw.count
        ));
    }
    if raw.inputs.is_empty() {
        return Err(format!(
            "warmup[{i}].inputs: expected a [warmup.inputs.<name>] table for each input of the model"
        ));
    }
    let inputs = raw
        .inputs
        .into_iter()
        .map(|(name, input)| {
            let key = format!("warmup[{i}].inputs.{name}");
            input_of(&key, input, model_dir).map(|input| (name, input))
        })
        .collect::<Result<_, _>>()?;
    Ok(WarmupSample {
        name: raw.name.unwrap_or_else(|| format!("warmup[{i}]")),
        batch_size: raw.batch_size,
        count: raw.count,
        inputs,
    })
}

fn input_of(key: &str, raw: RawInput, model_dir: &Path) -> Result<WarmupInput, String> {
    let data_type = raw
        .data_type
        .map(|name| {
            DataType::parse(&name).ok_or_else(|| {
                format!("{key}.data_type: expected a KServe datatype (FP32, INT64, BYTES, ...), got {name:?}")
            })
        })
        .transpose()?;
    let data = match (raw.zero_data, raw.random_data, raw.input_data_file) {
        (true, false, None) => WarmupData::Zero,
        (false, true, None) => WarmupData::Random,
        (false, false, Some(file)) => WarmupData::File(warmup_file(key, &file, model_dir)?),
        _ => {
            return Err(format!(
                "{key}: expected exactly one of zero_data = true, random_data = true or input_data_file"
            ))
        }
    };
    Ok(WarmupInput {
        dims: raw.dims,
        data_type,
        data,
    })
}

/// `file` inside `models/<name>/warmup/`: a relative path without `..`.
fn warmup_file(key: &str, file: &str, model_dir: &Path) -> Result<PathBuf, String> {
    let path = Path::new(file);
    let plain = !file.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "{key}.input_data_file: expected a relative path inside the model's warmup/ directory, got {file:?}"
        ));
    }
    Ok(model_dir.join("warmup").join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Warmup, String> {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        Warmup::from_value(table.remove("warmup").unwrap(), Path::new("/m/vad"))
    }

    #[test]
    fn described_samples_are_read_with_triton_defaults() {
        let warmup = parse(
            "[[warmup]]\nname = \"one chunk\"\n\
             [warmup.inputs.input]\ndims = [1, 512]\nrandom_data = true\n\
             [warmup.inputs.sr]\ndims = []\ndata_type = \"INT64\"\ninput_data_file = \"sr.bin\"\n\
             [warmup.inputs.state]\ndims = [2, 1, 128]\nzero_data = true\n\
             [[warmup]]\nbatch_size = 8\ncount = 3\n\
             [warmup.inputs.input]\ndims = [4]\nzero_data = true\n",
        )
        .unwrap();
        let Warmup::Samples(samples) = warmup else {
            panic!("{warmup:?}")
        };
        assert_eq!(samples.len(), 2);
        let first = &samples[0];
        assert_eq!(
            (first.name.as_str(), first.batch_size, first.count),
            ("one chunk", 1, 1)
        );
        assert_eq!(first.inputs["input"].data, WarmupData::Random);
        assert_eq!(first.inputs["state"].dims, [2, 1, 128]);
        assert_eq!(
            first.inputs["sr"],
            WarmupInput {
                dims: vec![],
                data_type: Some(DataType::I64),
                data: WarmupData::File("/m/vad/warmup/sr.bin".into()),
            }
        );
        assert_eq!(
            (
                samples[1].name.as_str(),
                samples[1].batch_size,
                samples[1].count
            ),
            ("warmup[1]", 8, 3)
        );
        assert!(Warmup::Samples(samples).is_described());
        assert!(!Warmup::Default.is_described() && !Warmup::Sizes(vec![1]).is_described());
    }

    #[test]
    fn errors_name_the_key() {
        let input = |body: &str| format!("[[warmup]]\n[warmup.inputs.x]\n{body}\n");
        for (text, needle) in [
            (
                input("dims = [1]"),
                "warmup[0].inputs.x: expected exactly one of",
            ),
            (
                input("dims = [1]\nzero_data = true\nrandom_data = true"),
                "warmup[0].inputs.x: expected exactly one",
            ),
            (
                input("dims = [1]\ninput_data_file = \"../secret\""),
                "warmup[0].inputs.x.input_data_file",
            ),
            (
                input("dims = [1]\ninput_data_file = \"/etc/passwd\""),
                "warmup[0].inputs.x.input_data_file",
            ),
            (
                input("dims = [1]\nzero_data = true\ndata_type = \"FLOAT\""),
                "warmup[0].inputs.x.data_type",
            ),
            (input("dims = [-1]\nzero_data = true"), "warmup[0]"),
            (
                input("dims = [1]\nzero_data = true\nshape = [1]"),
                "unknown field `shape`",
            ),
            (
                "[[warmup]]\nbatch_size = 1\ninputs = {}".into(),
                "warmup[0].inputs",
            ),
            (
                "[[warmup]]\nbatch_size = 0\n[warmup.inputs.x]\ndims = []\nzero_data = true".into(),
                "warmup[0].batch_size",
            ),
            (
                "[[warmup]]\ncount = 1000\n[warmup.inputs.x]\ndims = []\nzero_data = true".into(),
                "warmup[0].count",
            ),
            ("warmup = [1, 0]".into(), "warmup: expected"),
            ("warmup = []".into(), "warmup: expected"),
            ("warmup = [1, {}]".into(), "warmup: expected"),
            ("warmup = \"yes\"".into(), "warmup: expected"),
        ] {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
