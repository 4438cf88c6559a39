//! The `[inputs.<name>]` tables of a model's `config.toml`: pad values of the inputs whose
//! dynamic dimensions may differ between jobs of one batch, and the `text` input of a model that
//! ships a tokenizer. Checked when the file is read (each message names the key); whether a pad
//! value fits its input's datatype is checked when a version loads, against the model.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A pad value as written in a configuration file (`0`, `-inf`, `false`, `""`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PadLiteral {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// One `[inputs.<name>]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// What padding fills this input's padded dimensions with.
    pub pad_value: Option<PadLiteral>,
    /// `"BYTES"`: the only datatype of a text input (optional, for the reader).
    pub datatype: Option<String>,
    /// `[-1]`: the only shape of a text input (optional, for the reader).
    pub shape: Option<Vec<i64>>,
    /// A `tokenizer.json` in the version directory: makes this input the model's text input.
    pub tokenizer: Option<String>,
    /// Tokens a text at most, special tokens included (a text input only).
    pub max_length: Option<usize>,
}

/// The text input producers send instead of the model's token inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextInput {
    /// The input's name in what producers send (`text`).
    pub name: String,
    /// The tokenizer file's name in the version directory.
    pub tokenizer: String,
    /// Tokens a row at most; `None`: [`DEFAULT_MAX_LENGTH`] (or the file's own truncation).
    pub max_length: Option<usize>,
}

/// Tokens a text at most when `max_length` is not given.
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// Checks the `[inputs]` tables; returns the text input, if any, or the message naming the key.
pub fn check_inputs(inputs: &BTreeMap<String, InputConfig>) -> Result<Option<TextInput>, String> {
    let mut text: Option<TextInput> = None;
    for (name, input) in inputs {
        let key = |field: &str| format!("inputs.{name}.{field}");
        let Some(tokenizer) = &input.tokenizer else {
            for (set, field) in [
                (input.datatype.is_some(), "datatype"),
                (input.shape.is_some(), "shape"),
                (input.max_length.is_some(), "max_length"),
            ] {
                if set {
                    return Err(format!(
                        "{}: only a text input (one with a tokenizer) takes this key",
                        key(field)
                    ));
                }
            }
            continue;
        };
        if let Some(other) = &text {
            return Err(format!(
                "{}: a model has one text input at most ({} has a tokenizer too)",
                key("tokenizer"),
                other.name
            ));
        }
        let plain = !tokenizer.is_empty()
            && !tokenizer.contains(['/', '\\'])
            && tokenizer != "."
            && tokenizer != "..";
        if !plain {
            return Err(format!(
                "{}: expected a file name in the version directory (no '/'), got {tokenizer:?}",
                key("tokenizer")
            ));
        }
        if input.pad_value.is_some() {
            return Err(format!(
                "{}: a text input is not padded (its token inputs are)",
                key("pad_value")
            ));
        }
        if input.datatype.as_deref().is_some_and(|d| d != "BYTES") {
            return Err(format!(
                "{}: a text input is \"BYTES\", got {:?}",
                key("datatype"),
                input.datatype.as_deref().unwrap_or_default()
            ));
        }
        if input.shape.as_ref().is_some_and(|s| s[..] != [-1]) {
            return Err(format!(
                "{}: a text input has shape [-1] (one string a row), got {:?}",
                key("shape"),
                input.shape.as_deref().unwrap_or_default()
            ));
        }
        if input.max_length == Some(0) {
            return Err(format!("{} must be at least 1", key("max_length")));
        }
        text = Some(TextInput {
            name: name.clone(),
            tokenizer: tokenizer.clone(),
            max_length: input.max_length,
        });
    }
    Ok(text)
}

/// Checks `length_buckets`: each bound at least 1.
pub fn check_buckets(buckets: &[usize]) -> Result<(), String> {
    if buckets.contains(&0) {
        return Err("length_buckets must be at least 1".into());
    }
    Ok(())
}
