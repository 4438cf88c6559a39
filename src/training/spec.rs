//! The vocabulary of a training job: activations, losses, optimizers and learning-rate
//! schedules, and the validation of the `optimizer` object.

use serde::Deserialize;

use super::error::TrainingError;

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

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::BinaryCrossentropy => "binary_crossentropy",
            Loss::CategoricalCrossentropy => "categorical_crossentropy",
            Loss::SparseCategoricalCrossentropy => "sparse_categorical_crossentropy",
        }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOptimizer {
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

pub(super) fn invalid(field: &str, message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidJob {
        field: field.to_string(),
        message: message.to_string(),
    }
}

pub(super) fn in_range(
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

pub(super) fn parse_optimizer(
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
    let (optimizer, default_lr) = optimizer_kind(raw)?;
    check_applies(raw, optimizer)?;
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

/// The optimizer `optimizer.type` names, with its parameters, and its default learning rate.
fn optimizer_kind(raw: &RawOptimizer) -> Result<(Optimizer, f64), TrainingError> {
    let unit = |field: &str, value: f64, lo_open: bool, hi_open: bool| {
        in_range(field, value, 0.0, 1.0, lo_open, hi_open)
    };
    match raw.kind.as_str() {
        "sgd" => {
            let momentum = unit(
                "optimizer.momentum",
                raw.momentum.unwrap_or(0.0),
                false,
                true,
            )?;
            Ok((Optimizer::Sgd { momentum }, 0.01))
        }
        "adam" => Ok((
            Optimizer::Adam {
                beta_1: unit("optimizer.beta_1", raw.beta_1.unwrap_or(0.9), false, true)?,
                beta_2: unit("optimizer.beta_2", raw.beta_2.unwrap_or(0.999), false, true)?,
                epsilon: unit(
                    "optimizer.epsilon",
                    raw.epsilon.unwrap_or(1e-7),
                    true,
                    false,
                )?,
            },
            0.001,
        )),
        other => Err(invalid(
            "optimizer.type",
            format_args!("unknown optimizer {other:?} (expected sgd or adam)"),
        )),
    }
}

/// Refuses a parameter of the other optimizer (`beta_1` for sgd, `momentum` for adam).
fn check_applies(raw: &RawOptimizer, optimizer: Optimizer) -> Result<(), TrainingError> {
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
            only("epsilon", raw.epsilon.is_some())
        }
        Optimizer::Adam { .. } => only("momentum", raw.momentum.is_some()),
    }
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
