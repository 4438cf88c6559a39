//! Text in: a model version with a tokenizer takes a BYTES input (`text`, `[n]`) from
//! producers instead of its token inputs. Between validation and batching, each job's strings
//! become `input_ids`, `attention_mask` and (when the model has it) `token_type_ids`, INT64
//! `[n, L]` with `L` the job's longest row; batches of such jobs are then padded like any
//! padded model's ([`super::padding`]).
//!
//! What producers see (`/v2/models/<name>`, metadata, validation) is [`TextIn::public`]: the
//! model's inputs with the token inputs replaced by the text input.

use std::path::Path;

use crate::protocol::{DataType, ModelSignature, Tensor, TensorSpec};
use crate::repository::inputs::{TextInput, DEFAULT_MAX_LENGTH};
use crate::tokenizer::TextError;
use crate::tokenizer::{TextLimits, Tokenizer};

/// The token inputs a tokenizer fills, by name.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";

fn is_token_input(name: &str) -> bool {
    [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS].contains(&name)
}

/// A version's text input: its tokenizer and the model's inputs it fills.
#[derive(Debug)]
pub struct TextIn {
    /// The input producers send (`text`).
    pub name: String,
    pub tokenizer: Tokenizer,
    /// The model's inputs, in signature order (the token inputs among them).
    model_inputs: Vec<String>,
    type_ids: bool,
}

impl TextIn {
    /// Loads `text`'s tokenizer from `version_dir` for a model with signature `model`, which
    /// must take INT64 `input_ids` and `attention_mask` of rank 2.
    pub fn load(
        text: &TextInput,
        version_dir: &Path,
        model: &ModelSignature,
    ) -> Result<TextIn, String> {
        for name in [INPUT_IDS, ATTENTION_MASK] {
            let fits = model
                .inputs
                .iter()
                .any(|i| i.name == name && i.datatype == DataType::I64 && i.shape.len() == 2);
            if !fits {
                return Err(format!(
                    "inputs.{}: a text input needs the model to take {name} INT64 [batch, sequence]",
                    text.name
                ));
            }
        }
        if model.inputs.iter().any(|i| i.name == text.name) {
            return Err(format!(
                "inputs.{}: the model has an input of that name already",
                text.name
            ));
        }
        let path = version_dir.join(&text.tokenizer);
        let max_length = text.max_length.unwrap_or(DEFAULT_MAX_LENGTH);
        let tokenizer = Tokenizer::from_file(&path, max_length, TextLimits::default())
            .map_err(|e| format!("inputs.{}.tokenizer: {e}", text.name))?;
        Ok(TextIn {
            name: text.name.clone(),
            tokenizer,
            model_inputs: model.inputs.iter().map(|i| i.name.clone()).collect(),
            type_ids: model.inputs.iter().any(|i| i.name == TOKEN_TYPE_IDS),
        })
    }

    /// What producers send: `model` with the token inputs replaced by the text input, BYTES
    /// `[-1]`, where `input_ids` was.
    pub fn public(&self, model: &ModelSignature) -> ModelSignature {
        let mut inputs = Vec::with_capacity(model.inputs.len());
        for input in &model.inputs {
            if input.name == INPUT_IDS {
                inputs.push(TensorSpec {
                    name: self.name.clone(),
                    datatype: DataType::Bytes,
                    shape: vec![-1],
                });
            } else if !is_token_input(&input.name) {
                inputs.push(input.clone());
            }
        }
        ModelSignature {
            inputs,
            outputs: model.outputs.clone(),
        }
    }

    /// The model's inputs (signature order) for a job's validated inputs (any order): the text
    /// tokenized into the token inputs, the others as sent. Text that cannot be tokenized is
    /// the producer's error, naming the element.
    pub fn model_inputs(&self, mut inputs: Vec<Tensor>) -> Result<Vec<Tensor>, TextError> {
        let at = inputs
            .iter()
            .position(|t| t.name == self.name)
            .ok_or_else(|| TextError::MissingInput {
                name: self.name.clone(),
            })?;
        let text = inputs.swap_remove(at);
        let path = format!("inputs[{at}]");
        let tokens = self.tokenizer.encode(&text, &path, self.type_ids)?;
        let mut out = Vec::with_capacity(self.model_inputs.len());
        for name in &self.model_inputs {
            let tensor = match name.as_str() {
                INPUT_IDS => tokens.tensor(name, &tokens.input_ids),
                ATTENTION_MASK => tokens.tensor(name, &tokens.attention_mask),
                TOKEN_TYPE_IDS => {
                    let ids = tokens.token_type_ids.as_deref().unwrap_or_default();
                    tokens.tensor(name, ids)
                }
                _ => {
                    let i = inputs
                        .iter()
                        .position(|t| &t.name == name)
                        .ok_or_else(|| TextError::MissingInput { name: name.clone() })?;
                    inputs.swap_remove(i)
                }
            };
            out.push(tensor);
        }
        Ok(out)
    }

    /// The pad value of a token input without one in the configuration: the tokenizer's pad
    /// id for `input_ids`, 0 for the mask and type ids.
    pub fn default_pad(&self, input: &str) -> Option<i64> {
        match input {
            INPUT_IDS => Some(self.tokenizer.pad_id()),
            ATTENTION_MASK | TOKEN_TYPE_IDS => Some(0),
            _ => None,
        }
    }
}
