//! The training job: the JSON body of a message on `infermq.train`, validated into typed values.
//!
//! Field reference (defaults in brackets):
//! - `id`, `model_name` (letters, digits, `_`, `-`, `.`; it names a repository folder);
//! - `layers`: `[{"units": n, "activation": relu|sigmoid|tanh|linear|softmax [linear]}]`, the
//!   last one is the output layer;
//! - `loss`: `mse`, `binary_crossentropy`, `categorical_crossentropy` (one-hot `y`),
//!   `sparse_categorical_crossentropy` (class index `y`);
//! - `optimizer` [adam, 0.001]: `{"type": "sgd", "learning_rate", "momentum" [0]}` or
//!   `{"type": "adam", "learning_rate", "beta_1" [0.9], "beta_2" [0.999], "epsilon" [1e-7]}`,
//!   each with an optional `schedule` (see [`Schedule`]);
//! - `epochs` [10], `batch_size` [32], `validation_split` [0], `seed` [0], `shuffle` [true],
//!   `early_stopping`: `{"patience" [0], "min_delta" [0]}` (monitors `val_loss` when there is a
//!   validation split, else `loss`; the best weights are kept);
//! - `data`: see [`super::data::DataSource`]; `init_from`: `{"model_version": "3"}`.
//!
//! Unknown fields are rejected, so a typo (`"epoch"`) is an error rather than a silent default.

use serde::Deserialize;

use super::data::DataSource;
use super::TrainingError;

/// The activation of a dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
    Linear,
    Softmax,
}

impl Activation {
    pub const NAMES: &'static str = "relu, sigmoid, tanh, linear, softmax";

    pub fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "relu" => Activation::Relu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Linear => "linear",
            Activation::Softmax => "softmax",
        }
    }
}

/// The loss the training graph minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Mse,
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
}

impl Loss {
    pub const NAMES: &'static str =
        "mse, binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy";

    pub fn parse(name: &str) -> Option<Loss> {
        Some(match name {
            "mse" | "mean_squared_error" => Loss::Mse,
            "binary_crossentropy" => Loss::BinaryCrossentropy,
            "categorical_crossentropy" => Loss::CategoricalCrossentropy,
            "sparse_categorical_crossentropy" => Loss::SparseCategoricalCrossentropy,
            _ => return None,
        })
    }

    /// Classification losses report `accuracy`; `mse` reports `mse` and `mae`.
    pub fn is_classification(self) -> bool {
        self != Loss::Mse
    }
}

/// A learning-rate schedule, evaluated on the host before every step (the step graph takes the
/// rate as an input, so no schedule needs a new graph). `step` counts optimizer steps from 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `{"type": "constant"}`: the base rate.
    Constant,
    /// `{"type": "exponential_decay", "decay_rate": r, "decay_steps": n, "staircase": false}`:
    /// `lr * r^(step / n)` (the exponent floored when `staircase`).
    ExponentialDecay {
        rate: f64,
        steps: f64,
        staircase: bool,
    },
    /// `{"type": "step_decay", "decay_rate": r, "decay_epochs": e}`: `lr * r^floor(epoch / e)`,
    /// `epoch` counted from 0.
    StepDecay { rate: f64, epochs: usize },
}

impl Schedule {
    /// The rate for optimizer step `step` (from 0) during epoch `epoch` (from 0).
    pub fn rate(&self, base: f64, step: u64, epoch: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::ExponentialDecay {
                rate,
                steps,
                staircase,
            } => {
                let e = step as f64 / steps;
                base * rate.powf(if staircase { e.floor() } else { e })
            }
            Schedule::StepDecay { rate, epochs } => base * rate.powi((epoch / epochs) as i32),
        }
    }
}

/// The optimizer of the training-step graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    Sgd {
        momentum: f64,
    },
    Adam {
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
    },
}

/// One dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub units: usize,
    pub activation: Activation,
}

/// Early stopping after `patience` epochs without an improvement larger than `min_delta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// A validated training job.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub id: String,
    pub model_name: String,
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

    pub fn model_name(&self) -> &str {
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
struct RawOptimizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    learning_rate: Option<f64>,
    #[serde(default)]
    momentum: Option<f64>,
    #[serde(default)]
    beta_1: Option<f64>,
    #[serde(default)]
    beta_2: Option<f64>,
    #[serde(default)]
    epsilon: Option<f64>,
    #[serde(default)]
    schedule: Option<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    decay_rate: Option<f64>,
    #[serde(default)]
    decay_steps: Option<f64>,
    #[serde(default)]
    decay_epochs: Option<u64>,
    #[serde(default)]
    staircase: Option<bool>,
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

fn invalid(field: &str, message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidJob {
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn in_range(
    field: &str,
    v: f64,
    lo: f64,
    hi: f64,
    lo_open: bool,
    hi_open: bool,
) -> Result<f64, TrainingError> {
    let ok = v.is_finite()
        && if lo_open { v > lo } else { v >= lo }
        && if hi_open { v < hi } else { v <= hi };
    if ok {
        Ok(v)
    } else {
        let (l, h) = (
            if lo_open { "(" } else { "[" },
            if hi_open { ")" } else { "]" },
        );
        Err(invalid(
            field,
            format_args!("{v} is outside {l}{lo}, {hi}{h}"),
        ))
    }
}

/// Parses and validates a training job body.
pub fn parse_job(body: &[u8]) -> Result<TrainJob, TrainingError> {
    let raw: RawJob =
        serde_json::from_slice(body).map_err(|e| TrainingError::BadJson(e.to_string()))?;
    if raw.id.is_empty() {
        return Err(invalid("id", "must not be empty"));
    }
    let name_ok = !raw.model_name.is_empty()
        && raw.model_name.len() <= 128
        && !raw.model_name.starts_with('.')
        && raw
            .model_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !name_ok {
        return Err(invalid(
            "model_name",
            format_args!(
                "{:?} must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'",
                raw.model_name
            ),
        ));
    }
    let layers = parse_layers(&raw.layers)?;
    let loss = Loss::parse(&raw.loss).ok_or_else(|| {
        invalid(
            "loss",
            format_args!(
                "unknown loss {:?} (expected one of {})",
                raw.loss,
                Loss::NAMES
            ),
        )
    })?;
    check_output_layer(&layers, loss)?;
    let (optimizer, learning_rate, schedule) = parse_optimizer(raw.optimizer.as_ref())?;
    let epochs = raw.epochs.unwrap_or(10);
    if !(1..=MAX_EPOCHS).contains(&epochs) {
        return Err(invalid(
            "epochs",
            format_args!("{epochs} is outside [1, {MAX_EPOCHS}]"),
        ));
    }
    let batch_size = raw.batch_size.unwrap_or(32);
    if !(1..=MAX_BATCH).contains(&batch_size) {
        return Err(invalid(
            "batch_size",
            format_args!("{batch_size} is outside [1, {MAX_BATCH}]"),
        ));
    }
    let validation_split = in_range(
        "validation_split",
        raw.validation_split.unwrap_or(0.0),
        0.0,
        1.0,
        false,
        true,
    )?;
    let early_stopping = match raw.early_stopping {
        None => None,
        Some(es) => Some(EarlyStopping {
            patience: es.patience.unwrap_or(0) as usize,
            min_delta: in_range(
                "early_stopping.min_delta",
                es.min_delta.unwrap_or(0.0),
                0.0,
                f64::MAX,
                false,
                false,
            )?,
        }),
    };
    let data = DataSource::from_json(&raw.data)?;
    let init_from = match raw.init_from {
        None => None,
        Some(RawInitFrom {
            model_version: serde_json::Value::String(s),
        }) if !s.is_empty() => Some(s),
        Some(RawInitFrom {
            model_version: serde_json::Value::Number(n),
        }) if n.is_u64() => Some(n.to_string()),
        Some(RawInitFrom { model_version }) => {
            return Err(invalid(
                "init_from.model_version",
                format_args!("{model_version} is not a version"),
            ))
        }
    };
    Ok(TrainJob {
        id: raw.id,
        model_name: raw.model_name,
        layers,
        loss,
        optimizer,
        learning_rate,
        schedule,
        epochs: epochs as usize,
        batch_size: batch_size as usize,
        validation_split,
        seed: raw.seed.unwrap_or(0),
        shuffle: raw.shuffle.unwrap_or(true),
        early_stopping,
        data,
        init_from,
    })
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

fn parse_optimizer(
    raw: Option<&RawOptimizer>,
) -> Result<(Optimizer, f64, Schedule), TrainingError> {
    let Some(raw) = raw else {
        return Ok((
            Optimizer::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            0.001,
            Schedule::Constant,
        ));
    };
    let (optimizer, default_lr) = match raw.kind.as_str() {
        "sgd" => {
            let momentum = in_range(
                "optimizer.momentum",
                raw.momentum.unwrap_or(0.0),
                0.0,
                1.0,
                false,
                true,
            )?;
            (Optimizer::Sgd { momentum }, 0.01)
        }
        "adam" => (
            Optimizer::Adam {
                beta_1: in_range(
                    "optimizer.beta_1",
                    raw.beta_1.unwrap_or(0.9),
                    0.0,
                    1.0,
                    false,
                    true,
                )?,
                beta_2: in_range(
                    "optimizer.beta_2",
                    raw.beta_2.unwrap_or(0.999),
                    0.0,
                    1.0,
                    false,
                    true,
                )?,
                epsilon: in_range(
                    "optimizer.epsilon",
                    raw.epsilon.unwrap_or(1e-7),
                    0.0,
                    1.0,
                    true,
                    false,
                )?,
            },
            0.001,
        ),
        other => {
            return Err(invalid(
                "optimizer.type",
                format_args!("unknown optimizer {other:?} (expected sgd or adam)"),
            ))
        }
    };
    let only = |name: &str, set: bool| -> Result<(), TrainingError> {
        if set {
            Err(invalid(
                &format!("optimizer.{name}"),
                format_args!("does not apply to {}", raw.kind),
            ))
        } else {
            Ok(())
        }
    };
    match optimizer {
        Optimizer::Sgd { .. } => {
            only("beta_1", raw.beta_1.is_some())?;
            only("beta_2", raw.beta_2.is_some())?;
            only("epsilon", raw.epsilon.is_some())?;
        }
        Optimizer::Adam { .. } => only("momentum", raw.momentum.is_some())?,
    }
    let lr = in_range(
        "optimizer.learning_rate",
        raw.learning_rate.unwrap_or(default_lr),
        0.0,
        1e6,
        true,
        false,
    )?;
    let schedule = match &raw.schedule {
        None => Schedule::Constant,
        Some(s) => parse_schedule(s)?,
    };
    Ok((optimizer, lr, schedule))
}

fn parse_schedule(raw: &RawSchedule) -> Result<Schedule, TrainingError> {
    let rate = |raw: &RawSchedule| -> Result<f64, TrainingError> {
        let r = raw
            .decay_rate
            .ok_or_else(|| invalid("optimizer.schedule.decay_rate", "is required"))?;
        in_range("optimizer.schedule.decay_rate", r, 0.0, 1e6, true, false)
    };
    match raw.kind.as_str() {
        "constant" => Ok(Schedule::Constant),
        "exponential_decay" => {
            let steps = raw
                .decay_steps
                .ok_or_else(|| invalid("optimizer.schedule.decay_steps", "is required"))?;
            Ok(Schedule::ExponentialDecay {
                rate: rate(raw)?,
                steps: in_range(
                    "optimizer.schedule.decay_steps",
                    steps,
                    0.0,
                    f64::MAX,
                    true,
                    false,
                )?,
                staircase: raw.staircase.unwrap_or(false),
            })
        }
        "step_decay" => {
            let epochs = raw
                .decay_epochs
                .ok_or_else(|| invalid("optimizer.schedule.decay_epochs", "is required"))?;
            if epochs == 0 {
                return Err(invalid(
                    "optimizer.schedule.decay_epochs",
                    "must be at least 1",
                ));
            }
            Ok(Schedule::StepDecay {
                rate: rate(raw)?,
                epochs: epochs as usize,
            })
        }
        other => Err(invalid(
            "optimizer.schedule.type",
            format_args!(
                "unknown schedule {other:?} (expected constant, exponential_decay or step_decay)"
            ),
        )),
    }
}
