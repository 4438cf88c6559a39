//! Numeric CSV files: a header row, then one row per sample; one column holds the label.
//!
//! Read with the `csv` crate (RFC 4180): fields may be quoted (with commas or doubled quotes
//! inside), lines may end in CRLF, a UTF-8 byte-order mark before the header is ignored, cells are
//! trimmed and empty lines skipped. Error messages give line numbers and column names but never
//! echo cell contents, since the file is on the worker's disk.

use super::error::TrainingError;
use super::raw::RawData;

/// Longest list of header names echoed in an error.
const MAX_ECHO: usize = 256;

fn invalid(message: impl std::fmt::Display) -> TrainingError {
    TrainingError::InvalidData {
        field: "data.uri".to_string(),
        message: message.to_string(),
    }
}

fn malformed(error: &csv::Error) -> TrainingError {
    let line = error.position().map(|p| p.line()).unwrap_or(0);
    invalid(format_args!("line {line} is not valid CSV"))
}

/// `a, b, c` cut to about [`MAX_ECHO`] bytes.
fn echo_names(names: &csv::StringRecord) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if out.len() + name.len() > MAX_ECHO {
            out.push_str(&format!("... ({} columns)", names.len()));
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    out
}

/// Parses CSV text; `label_column` defaults to the last column.
pub fn parse(text: &str, label_column: Option<&str>) -> Result<RawData, TrainingError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let names = reader.headers().map_err(|e| malformed(&e))?.clone();
    if names.is_empty() || names.iter().all(str::is_empty) {
        return Err(invalid("the CSV file is empty"));
    }
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
                .position(|n| n == want)
                .ok_or_else(|| TrainingError::InvalidData {
                    field: "data.label_column".to_string(),
                    message: format!(
                        "{want:?} is not a column of the CSV header ({})",
                        echo_names(&names)
                    ),
                })?
        }
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut rows = 0;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(|e| malformed(&e))? {
        let line_no = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != names.len() {
            return Err(invalid(format_args!(
                "line {line_no} has {} cells, the header has {}",
                record.len(),
                names.len()
            )));
        }
        for (c, cell) in record.iter().enumerate() {
            let v: f64 = cell
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| {
                    invalid(format_args!(
                        "line {line_no}, column {:?}: not a number",
                        &names[c]
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

    #[test]
    fn quoted_fields_a_byte_order_mark_and_crlf_are_read() {
        let text =
            "\u{feff}\"sepal, length\",\"the \"\"label\"\"\"\r\n\"1.5\", 2\r\n\r\n3,\"4\"\r\n";
        let raw = parse(text, Some("the \"label\"")).expect("parses");
        assert_eq!((raw.rows, raw.features), (2, 1));
        assert_eq!(raw.x, vec![1.5, 3.0]);
        assert_eq!(raw.y, vec![2.0, 4.0]);
        // Without the BOM being skipped the first column would be named "\u{feff}a".
        let raw = parse("\u{feff}a,y\n1,0\n", Some("y")).expect("parses");
        assert_eq!(raw.x, vec![1.0]);
        let e = parse("\u{feff}a,y\n1,0\n", Some("a")).map(|r| r.features);
        assert_eq!(e.expect("a is a column"), 1);
    }

    #[test]
    fn a_comma_inside_quotes_is_not_a_separator() {
        let e = parse("a,y\n\"1,5\",0\n", None).unwrap_err().to_string();
        assert!(e.contains("line 2, column \"a\": not a number"), "{e}");
    }

    #[test]
    fn long_headers_are_echoed_bounded() {
        let header: Vec<String> = (0..500).map(|i| format!("column_{i}")).collect();
        let text = format!("{}\n", header.join(","));
        let e = parse(&text, Some("nope")).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("(500 columns)"), "{e}");
    }
}
