//! Numeric CSV files: a header row, then one row per sample; one column holds the label.
//!
//! Cells are trimmed and may be quoted; empty lines are skipped. Error messages give line numbers
//! and column names but never echo cell contents, since the file is on the worker's disk.

use super::data::RawData;
use super::TrainingError;

fn invalid(message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidData {
        field: "data.uri".to_string(),
        message: message.to_string(),
    }
}

fn cells(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|c| c.trim().trim_matches('"').trim())
}

/// Parses CSV text; `label_column` defaults to the last column.
pub fn parse(text: &str, label_column: Option<&str>) -> Result<RawData, TrainingError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| invalid("the CSV file is empty"))?;
    let names: Vec<&str> = cells(header).collect();
    if names.len() < 2 {
        return Err(invalid(
            "the CSV header needs at least one feature column and a label column",
        ));
    }
    let label = match label_column {
        None => names.len() - 1,
        Some(want) => {
            names
                .iter()
                .position(|n| *n == want)
                .ok_or_else(|| TrainingError::InvalidData {
                    field: "data.label_column".to_string(),
                    message: format!(
                        "{want:?} is not a column of the CSV header ({})",
                        names.join(", ")
                    ),
                })?
        }
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut rows = 0;
    for (line_no, line) in lines {
        let row: Vec<&str> = cells(line).collect();
        if row.len() != names.len() {
            return Err(invalid(format_args!(
                "line {line_no} has {} cells, the header has {}",
                row.len(),
                names.len()
            )));
        }
        for (c, cell) in row.iter().enumerate() {
            let v: f64 = cell
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| {
                    invalid(format_args!(
                        "line {line_no}, column {:?}: not a number",
                        names[c]
                    ))
                })?;
            if c == label {
                y.push(v);
            } else {
                x.push(v as f32);
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(invalid("the CSV file has a header but no rows"));
    }
    Ok(RawData {
        rows,
        features: names.len() - 1,
        x,
        y,
        y_columns: None,
        y_field: "data.label_column".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_features_and_the_named_label() {
        let raw = parse("a,label,b\n1,0,2\n\"3\", 1 ,4\r\n\n", Some("label")).expect("parses");
        assert_eq!((raw.rows, raw.features), (2, 2));
        assert_eq!(raw.x, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(raw.y, vec![0.0, 1.0]);
    }

    #[test]
    fn label_defaults_to_the_last_column() {
        let raw = parse("a,b,y\n1,2,3\n", None).expect("parses");
        assert_eq!(raw.y, vec![3.0]);
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let e = parse("a,y\n1,0\n2,oops\n", None).unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("\"y\"") && !e.contains("oops"),
            "{e}"
        );
        let e = parse("a,y\n1,0,5\n", None).unwrap_err().to_string();
        assert!(e.contains("line 2 has 3 cells"), "{e}");
        let e = parse("a,y\n1,0\n", Some("nope")).unwrap_err().to_string();
        assert!(e.contains("data.label_column"), "{e}");
        assert!(parse("a,y\n", None).is_err());
        assert!(parse("", None).is_err());
    }
}
