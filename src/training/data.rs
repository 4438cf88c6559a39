//! Training data: where it comes from ([`DataSource`]), reading it ([`DataSource::load`]) and
//! shaping it for a loss ([`Dataset::prepare`]).
//!
//! `data` in a job is one of:
//! - inline: `{"x": [[5.1, 3.5, 1.4, 0.2], ...], "y": [0, ...]}` (`y` holds numbers, or rows of
//!   numbers for one-hot or multi-output targets);
//! - CSV: `{"uri": "file:///data/train.csv", "format": "csv", "label_column": "y"}`: a header
//!   row, numeric cells; `label_column` defaults to the last column, the others are features;
//! - NumPy: `{"uri": {"x": "file:///data/x.npy", "y": "file:///data/y.npy"}, "format": "npy"}`:
//!   `x` of shape `[rows, features]`, `y` of shape `[rows]` or `[rows, outputs]`.
//!
//! `format` may be left out when the URI ends in `.csv` or the URIs are an `{x, y}` pair.
//! Object-store URIs (`s3://`, `gs://`, ...) are refused: no object store is configured.
//! Files are read within the worker's [`DataLimits`] (see `files.rs`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::TrainingError;
use super::files::{file_path, invalid, read, DataLimits};
use super::npy;
pub use super::raw::RawData;
use super::rng::SeededRng;
use super::spec::Loss;

/// Where a job's data lives.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// Parsed inline data.
    Inline(RawData),
    Csv {
        path: PathBuf,
        label_column: Option<String>,
    },
    Npy {
        x: PathBuf,
        y: PathBuf,
    },
}

/// Features and targets ready for the graphs: `y` is `rows × targets` (one-hot for classes).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub rows: usize,
    pub features: usize,
    pub targets: usize,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

/// Parses CSV text (see the module documentation); `label_column` defaults to the last column.
pub fn from_csv(text: &str, label_column: Option<&str>) -> Result<RawData, TrainingError> {
    super::csv::parse(text, label_column)
}

/// `data.uri` as one string: a CSV file.
fn csv_source(
    uri: &str,
    format: Option<&str>,
    label_column: Option<String>,
) -> Result<DataSource, TrainingError> {
    if format == Some("npy") {
        return Err(invalid(
            "data.uri",
            "npy data needs {\"x\": uri, \"y\": uri}",
        ));
    }
    let path = file_path("data.uri", uri)?;
    if format.is_none() && path.extension().is_none_or(|e| e != "csv") {
        return Err(invalid(
            "data.format",
            "is required unless the uri ends in .csv",
        ));
    }
    Ok(DataSource::Csv { path, label_column })
}

/// `data.uri` as an `{x, y}` pair: NumPy files.
fn npy_source(
    pair: &serde_json::Map<String, Value>,
    format: Option<&str>,
    label_column: bool,
) -> Result<DataSource, TrainingError> {
    if format == Some("csv") {
        return Err(invalid("data.uri", "csv data takes a single uri string"));
    }
    if label_column {
        return Err(invalid("data.label_column", "does not apply to npy data"));
    }
    let get = |k: &str| match pair.get(k) {
        Some(Value::String(u)) => file_path(&format!("data.uri.{k}"), u),
        _ => Err(invalid(
            &format!("data.uri.{k}"),
            "must be a file:// URI string",
        )),
    };
    if let Some(key) = pair.keys().find(|k| *k != "x" && *k != "y") {
        return Err(invalid(&format!("data.uri.{key}"), "unknown field"));
    }
    Ok(DataSource::Npy {
        x: get("x")?,
        y: get("y")?,
    })
}

impl DataSource {
    /// Reads the `data` object of a job (inline data is parsed and checked here; files are read by
    /// [`DataSource::load`]).
    pub fn from_json(data: &Value) -> Result<DataSource, TrainingError> {
        let Value::Object(map) = data else {
            return Err(invalid(
                "data",
                "must be an object with x and y, or with uri",
            ));
        };
        if let Some(key) = map
            .keys()
            .find(|k| !["x", "y", "uri", "format", "label_column"].contains(&k.as_str()))
        {
            return Err(invalid(&format!("data.{key}"), "unknown field"));
        }
        let format = match map.get("format") {
            None => None,
            Some(Value::String(f)) if f == "csv" || f == "npy" => Some(f.as_str()),
            Some(other) => {
                return Err(invalid(
                    "data.format",
                    format_args!("{other} is not \"csv\" or \"npy\""),
                ))
            }
        };
        let label_column = match map.get("label_column") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(invalid(
                    "data.label_column",
                    format_args!("{other} is not a string"),
                ))
            }
        };
        match (map.get("uri"), map.get("x"), map.get("y")) {
            (None, Some(x), Some(y)) => Ok(DataSource::Inline(super::inline::parse(x, y)?)),
            (None, _, _) => Err(invalid("data", "needs x and y, or uri")),
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err(invalid("data", "has both uri and inline x/y"))
            }
            (Some(Value::String(uri)), None, None) => csv_source(uri, format, label_column),
            (Some(Value::Object(pair)), None, None) => {
                npy_source(pair, format, label_column.is_some())
            }
            (Some(other), None, None) => Err(invalid(
                "data.uri",
                format_args!("{other} is not a URI or {{x, y}} pair"),
            )),
        }
    }

    /// Reads the data (files are read now, within `limits`).
    pub fn load(&self, limits: &DataLimits) -> Result<RawData, TrainingError> {
        match self {
            DataSource::Inline(raw) => Ok(raw.clone()),
            DataSource::Csv { path, label_column } => {
                let text = read(path, "data.uri", limits)?;
                let text = String::from_utf8(text)
                    .map_err(|_| invalid("data.uri", "the CSV file is not UTF-8"))?;
                super::csv::parse(&text, label_column.as_deref())
            }
            DataSource::Npy { x, y } => npy_pair(x, y, limits),
        }
    }
}

fn npy_pair(x: &Path, y: &Path, limits: &DataLimits) -> Result<RawData, TrainingError> {
    let xa = npy::parse(&read(x, "data.uri.x", limits)?).map_err(|e| invalid("data.uri.x", e))?;
    let ya = npy::parse(&read(y, "data.uri.y", limits)?).map_err(|e| invalid("data.uri.y", e))?;
    let (rows, features) = match xa.shape[..] {
        [r, f] => (r, f),
        [r] => (r, 1),
        ref s => {
            return Err(invalid(
                "data.uri.x",
                format_args!("shape {s:?} is not [rows, features]"),
            ))
        }
    };
    let y_columns = match ya.shape[..] {
        [r] if r == rows => None,
        [r, c] if r == rows => Some(c),
        ref s => {
            return Err(invalid(
                "data.uri.y",
                format_args!("shape {s:?} does not match x's {rows} rows (expected [{rows}] or [{rows}, outputs])"),
            ))
        }
    };
    if let Some(i) = xa.values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "data.uri.x",
            format_args!("row {} holds a non-finite value", i / features.max(1)),
        ));
    }
    Ok(RawData {
        rows,
        features,
        x: xa.values.iter().map(|&v| v as f32).collect(),
        y: ya.values,
        y_columns,
        y_field: "data.uri.y".to_string(),
    })
}

impl Dataset {
    /// Fits raw data to a network with `units` outputs trained with `loss`:
    /// class indices become one-hot rows, and every label is checked against the loss.
    pub fn prepare(raw: &RawData, units: usize, loss: Loss) -> Result<Dataset, TrainingError> {
        let field = raw.y_field.as_str();
        if raw.rows == 0 {
            return Err(invalid("data", "is empty"));
        }
        let class_indices = matches!(
            (loss, raw.y_columns),
            (Loss::SparseCategoricalCrossentropy, None | Some(1))
                | (Loss::CategoricalCrossentropy, None)
        );
        let y = if class_indices {
            one_hot(raw, units, field)?
        } else {
            let cols = raw.y_columns.unwrap_or(1);
            if cols != units {
                return Err(invalid(
                    field,
                    format_args!("rows have {cols} values, the output layer has {units} units"),
                ));
            }
            if loss != Loss::Mse {
                if let Some(i) = raw.y.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    return Err(invalid(
                        field,
                        format_args!(
                            "row {}: {} is outside [0, 1], as {} needs",
                            i / cols,
                            raw.y[i],
                            loss.as_str()
                        ),
                    ));
                }
            }
            raw.y.iter().map(|&v| v as f32).collect()
        };
        Ok(Dataset {
            rows: raw.rows,
            features: raw.features,
            targets: units,
            x: raw.x.clone(),
            y,
        })
    }

    /// SHA-256 of the prepared data: rows, features, targets (u64 LE), then `x` and `y` (f32 LE).
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for n in [self.rows, self.features, self.targets] {
            h.update((n as u64).to_le_bytes());
        }
        for v in self.x.iter().chain(&self.y) {
            h.update(v.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Splits row indices into training and validation rows (shuffled with `rng` first when
/// `shuffle`).
pub(super) fn split(
    rows: usize,
    validation_split: f64,
    shuffle: bool,
    rng: &mut SeededRng,
) -> Result<(Vec<usize>, Vec<usize>), TrainingError> {
    let mut order: Vec<usize> = (0..rows).collect();
    if shuffle {
        rng.shuffle(&mut order);
    }
    // As Keras: the training rows are round(rows * (1 - split)), the rest are held out.
    let kept = (rows as f64 * (1.0 - validation_split)).round() as usize;
    let held = rows - kept;
    let invalid = |message: String| TrainingError::InvalidData {
        field: "validation_split".to_string(),
        message,
    };
    if kept == 0 {
        return Err(invalid(format!(
            "{} leaves no training rows out of {rows}",
            validation_split
        )));
    }
    if held == 0 && validation_split > 0.0 {
        return Err(invalid(format!(
            "{} holds out no rows out of {rows}",
            validation_split
        )));
    }
    let val = order.split_off(rows - held);
    Ok((order, val))
}

fn one_hot(raw: &RawData, units: usize, field: &str) -> Result<Vec<f32>, TrainingError> {
    let mut y = vec![0.0f32; raw.rows * units];
    for (r, &label) in raw.y.iter().enumerate() {
        if label.fract() != 0.0 || label < 0.0 || label >= units as f64 {
            return Err(invalid(
                field,
                format_args!(
                    "row {r}: label {label} is out of range (expected an integer class in [0, {}])",
                    units - 1
                ),
            ));
        }
        y[r * units + label as usize] = 1.0;
    }
    Ok(y)
}
