//! Inline data: `{"x": [[...], ...], "y": [...]}` in the job body, checked cell by cell so that
//! errors name the offending field (`data.x[3][1]`).

use serde_json::Value;

use super::error::TrainingError;
use super::raw::RawData;

fn invalid(field: &str, message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidData {
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn number(v: &Value, field: impl Fn() -> String) -> Result<f64, TrainingError> {
    match v.as_f64() {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(&field(), format_args!("{v} is not a number"))),
    }
}

/// Parses inline `x` (rows of numbers, or numbers) and `y` (numbers, or rows of numbers).
pub fn parse(x: &Value, y: &Value) -> Result<RawData, TrainingError> {
    let Value::Array(xs) = x else {
        return Err(invalid("data.x", "must be an array of rows"));
    };
    let Value::Array(ys) = y else {
        return Err(invalid("data.y", "must be an array"));
    };
    if xs.is_empty() {
        return Err(invalid("data.x", "is empty"));
    }
    if xs.len() != ys.len() {
        return Err(invalid(
            "data.y",
            format_args!("has {} rows, data.x has {}", ys.len(), xs.len()),
        ));
    }
    let mut features = None;
    let mut flat = Vec::new();
    for (r, row) in xs.iter().enumerate() {
        let values: Vec<f64> = match row {
            Value::Array(cells) => cells
                .iter()
                .enumerate()
                .map(|(c, v)| number(v, || format!("data.x[{r}][{c}]")))
                .collect::<Result<_, _>>()?,
            v => vec![number(v, || format!("data.x[{r}]"))?],
        };
        let n = *features.get_or_insert(values.len());
        if values.len() != n || n == 0 {
            return Err(invalid(
                &format!("data.x[{r}]"),
                format_args!("has {} values, expected {n} (as data.x[0])", values.len()),
            ));
        }
        flat.extend(values.into_iter().map(|v| v as f32));
    }
    let (y, y_columns) = inline_labels(ys)?;
    Ok(RawData {
        rows: xs.len(),
        features: features.unwrap_or(0),
        x: flat,
        y,
        y_columns,
        y_field: "data.y".to_string(),
    })
}

fn inline_labels(ys: &[Value]) -> Result<(Vec<f64>, Option<usize>), TrainingError> {
    if !matches!(ys.first(), Some(Value::Array(_))) {
        let y = ys
            .iter()
            .enumerate()
            .map(|(r, v)| number(v, || format!("data.y[{r}]")))
            .collect::<Result<_, _>>()?;
        return Ok((y, None));
    }
    let mut columns = None;
    let mut y = Vec::new();
    for (r, row) in ys.iter().enumerate() {
        let Value::Array(cells) = row else {
            return Err(invalid(
                &format!("data.y[{r}]"),
                "is not a row like data.y[0]",
            ));
        };
        let n = *columns.get_or_insert(cells.len());
        if cells.len() != n || n == 0 {
            return Err(invalid(
                &format!("data.y[{r}]"),
                format_args!("has {} values, expected {n}", cells.len()),
            ));
        }
        for (c, v) in cells.iter().enumerate() {
            y.push(number(v, || format!("data.y[{r}][{c}]"))?);
        }
    }
    Ok((y, columns))
}
