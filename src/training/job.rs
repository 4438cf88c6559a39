//! The training job: the JSON body of a message on `infermq.train`, validated into typed values.
//!
//! Field reference (defaults in parentheses):
//! - `id`, `model_name` (a [`ModelName`]: 1-128 letters, digits, `_`, `-`, `.`, not starting
//!   with `.`; it names a repository folder);
//! - `layers`: `[{"units": n, "activation": relu|sigmoid|tanh|linear|softmax (linear)}]`, the
//!   last one is the output layer;
//! - `loss`: `mse`, `binary_crossentropy` (targets in [0, 1], sigmoid output),
//!   `categorical_crossentropy` (one-hot `y` rows, or class indices, which are one-hot encoded),
//!   `sparse_categorical_crossentropy` (class index `y`); both categorical losses need a softmax
//!   output layer with at least 2 units;
//! - `optimizer` (adam): `{"type": "sgd", "learning_rate" (0.01), "momentum" (0)}` or
//!   `{"type": "adam", "learning_rate" (0.001), "beta_1" (0.9), "beta_2" (0.999),
//!   "epsilon" (1e-7)}`, each with an optional `schedule` (see [`Schedule`]);
//! - `epochs` (10), `batch_size` (32), `validation_split` (0), `seed` (0), `shuffle` (true),
//!   `early_stopping`: `{"patience" (0), "min_delta" (0)}` (monitors `val_loss` when there is a
//!   validation split, else `loss`; the best weights are kept);
//! - `data`: see [`super::data::DataSource`]; `init_from`: `{"model_version": "3"}`.
//!
//! Unknown fields are rejected, so a typo (`"epoch"`) is an error rather than a silent default.

use serde::Deserialize;

use super::data::DataSource;
use super::error::TrainingError;
use super::spec::{in_range, invalid, parse_optimizer, RawOptimizer};
pub use super::spec::{Activation, EarlyStopping, Layer, Loss, Optimizer, Schedule};
use crate::protocol::ModelName;

/// A validated training job.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub id: String,
    pub model_name: ModelName,
    pub layers: Vec<Layer>,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    pub batch_size: usize,
    pub validation_split: f64,
    pub seed: u64,
    pub shuffle: bool,
    pub early_stopping: Option<EarlyStopping>,
    pub data: DataSource,
    pub init_from: Option<String>,
}

impl TrainJob {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn model_name(&self) -> &ModelName {
        &self.model_name
    }

    /// The version named by `init_from.model_version`.
    pub fn init_from_version(&self) -> Option<&str> {
        self.init_from.as_deref()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    id: String,
    model_name: String,
    layers: Vec<RawLayer>,
    loss: String,
    #[serde(default)]
    optimizer: Option<RawOptimizer>,
    #[serde(default)]
    epochs: Option<u64>,
    #[serde(default)]
    batch_size: Option<u64>,
    #[serde(default)]
    validation_split: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    shuffle: Option<bool>,
    #[serde(default)]
    early_stopping: Option<RawEarlyStopping>,
    data: serde_json::Value,
    #[serde(default)]
    init_from: Option<RawInitFrom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    units: u64,
    #[serde(default)]
    activation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEarlyStopping {
    #[serde(default)]
    patience: Option<u64>,
    #[serde(default)]
    min_delta: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitFrom {
    model_version: serde_json::Value,
}

/// Largest accepted `units`, `epochs` and `batch_size`.
const MAX_UNITS: u64 = 1 << 16;
const MAX_EPOCHS: u64 = 1_000_000;
const MAX_BATCH: u64 = 1 << 24;

/// The `model` label of training metrics: `name` when it is a valid model name, else `""`, so a
/// producer's string that failed validation never becomes a series.
pub fn metric_model_name(name: &str) -> &str {
    if ModelName::is_valid(name) {
        name
    } else {
        ""
    }
}

/// Parses and validates a training job body. Fields are checked in the order of the struct, and
/// the first problem is the error.
pub fn parse_job(body: &[u8]) -> Result<TrainJob, TrainingError> {
    let raw: RawJob =
        serde_json::from_slice(body).map_err(|e| TrainingError::BadJson(e.to_string()))?;
    if raw.id.is_empty() {
        return Err(invalid("id", "must not be empty"));
    }
    let model_name = ModelName::parse(&raw.model_name).map_err(|e| invalid("model_name", e))?;
    let layers = parse_layers(&raw.layers)?;
    let loss = parse_loss(&raw.loss)?;
    check_output_layer(&layers, loss)?;
    let (optimizer, learning_rate, schedule) = parse_optimizer(raw.optimizer.as_ref())?;
    let epochs = count("epochs", raw.epochs.unwrap_or(10), MAX_EPOCHS)?;
    let batch_size = count("batch_size", raw.batch_size.unwrap_or(32), MAX_BATCH)?;
    let validation_split = in_range(
        "validation_split",
        raw.validation_split.unwrap_or(0.0),
        0.0,
        1.0,
        false,
        true,
    )?;
    let early_stopping = raw.early_stopping.map(parse_early_stopping).transpose()?;
    let data = DataSource::from_json(&raw.data)?;
    let init_from = raw.init_from.map(parse_init_from).transpose()?;
    Ok(TrainJob {
        id: raw.id,
        model_name,
        layers,
        loss,
        optimizer,
        learning_rate,
        schedule,
        epochs,
        batch_size,
        validation_split,
        seed: raw.seed.unwrap_or(0),
        shuffle: raw.shuffle.unwrap_or(true),
        early_stopping,
        data,
        init_from,
    })
}

fn parse_loss(name: &str) -> Result<Loss, TrainingError> {
    Loss::parse(name).ok_or_else(|| {
        invalid(
            "loss",
            format_args!("unknown loss {name:?} (expected one of {})", Loss::NAMES),
        )
    })
}

/// A count within `[1, max]`.
fn count(field: &str, value: u64, max: u64) -> Result<usize, TrainingError> {
    if !(1..=max).contains(&value) {
        return Err(invalid(
            field,
            format_args!("{value} is outside [1, {max}]"),
        ));
    }
    Ok(value as usize)
}

fn parse_early_stopping(raw: RawEarlyStopping) -> Result<EarlyStopping, TrainingError> {
    Ok(EarlyStopping {
        patience: raw.patience.unwrap_or(0) as usize,
        min_delta: in_range(
            "early_stopping.min_delta",
            raw.min_delta.unwrap_or(0.0),
            0.0,
            f64::MAX,
            false,
            false,
        )?,
    })
}

/// `init_from.model_version`: a non-empty string or an unsigned integer, as a string.
fn parse_init_from(raw: RawInitFrom) -> Result<String, TrainingError> {
    match raw.model_version {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s),
        serde_json::Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        other => Err(invalid(
            "init_from.model_version",
            format_args!("{other} is not a version"),
        )),
    }
}

fn parse_layers(raw: &[RawLayer]) -> Result<Vec<Layer>, TrainingError> {
    if raw.is_empty() {
        return Err(invalid("layers", "must hold at least one layer"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, l)| {
            if let Some(kind) = l.kind.as_deref().filter(|k| *k != "dense") {
                return Err(invalid(
                    &format!("layers[{i}].type"),
                    format_args!("unknown layer type {kind:?} (expected dense)"),
                ));
            }
            if !(1..=MAX_UNITS).contains(&l.units) {
                return Err(invalid(
                    &format!("layers[{i}].units"),
                    format_args!("{} is outside [1, {MAX_UNITS}]", l.units),
                ));
            }
            let name = l.activation.as_deref().unwrap_or("linear");
            let activation = Activation::parse(name).ok_or_else(|| {
                invalid(
                    &format!("layers[{i}].activation"),
                    format_args!(
                        "unknown activation {name:?} (expected one of {})",
                        Activation::NAMES
                    ),
                )
            })?;
            Ok(Layer {
                units: l.units as usize,
                activation,
            })
        })
        .collect()
}

/// The last layer must produce what the loss expects.
fn check_output_layer(layers: &[Layer], loss: Loss) -> Result<(), TrainingError> {
    let last = layers[layers.len() - 1];
    let field = format!("layers[{}]", layers.len() - 1);
    let need = match loss {
        Loss::Mse => return Ok(()),
        Loss::BinaryCrossentropy if last.activation != Activation::Sigmoid => {
            "binary_crossentropy needs a sigmoid output layer"
        }
        Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy
            if last.activation != Activation::Softmax || last.units < 2 =>
        {
            "categorical losses need a softmax output layer with units >= 2"
        }
        _ => return Ok(()),
    };
    Err(invalid(
        &field,
        format_args!(
            "{need}; got {} units with activation {}",
            last.units,
            last.activation.as_str()
        ),
    ))
}
