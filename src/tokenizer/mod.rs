//! Text in, token ids out: a model's `tokenizer.json` (the Hugging Face `tokenizers` format)
//! applied to a job's BYTES tensor of strings, under rules for untrusted input.
//!
//! Between `protocol` (a decoded job) and `batching` (its tensors): each string of a job's
//! text tensor `[n]` becomes one row of `input_ids`, `attention_mask` and, when the model has
//! it, `token_type_ids`, all INT64 `[n, L]` with `L` the job's longest row (shorter rows padded
//! with the tokenizer's pad id and mask 0; batches of jobs are padded further by
//! `execution::padding`). Special tokens are added when the file has a post-processor (`[CLS] …
//! [SEP]`), and each row is truncated to the model's maximum length (or the file's truncation
//! length, when smaller).
//!
//! Before any tokenizing, [`TextLimits`] bound the work and memory a job can ask for: strings
//! per job, bytes per string and bytes per job; then each string must be UTF-8. A job outside
//! them is answered with an error naming the element (`inputs[0].data[3]`), never a panic
//! (property-tested with arbitrary bytes).

mod error;
pub mod train;

use std::path::Path;

pub use error::{TextError, TokenizerError};

use crate::protocol::{DataType, Tensor, TensorData};

/// What one job's text may hold, checked before tokenizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    /// Strings per job (rows of the text tensor).
    pub max_texts: usize,
    /// Bytes of one string.
    pub max_text_bytes: usize,
    /// Bytes of all of a job's strings together.
    pub max_job_bytes: usize,
}

impl Default for TextLimits {
    /// 1 024 strings, 16 KiB each, 1 MiB a job: a 128-token row of English is under 1 KiB, so a
    /// string this long is already cut by truncation many times over, and tokenizing 1 MiB takes
    /// milliseconds.
    fn default() -> Self {
        TextLimits {
            max_texts: 1024,
            max_text_bytes: 16 << 10,
            max_job_bytes: 1 << 20,
        }
    }
}

/// A job's tokens: `rows` × `length` ids, mask and (when asked for) type ids, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub rows: usize,
    pub length: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Option<Vec<i64>>,
}

impl Tokens {
    /// One INT64 tensor `[rows, length]` of `values` named `name`.
    pub fn tensor(&self, name: &str, values: &[i64]) -> Tensor {
        Tensor::from_i64(name, vec![self.rows, self.length], values)
    }
}

/// A loaded `tokenizer.json`, ready for untrusted text.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: i64,
    max_length: usize,
    limits: TextLimits,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` at `path`; rows are cut to `max_length` tokens (the model's
    /// maximum), or to the file's own truncation length when it is smaller.
    pub fn from_file(
        path: &Path,
        max_length: usize,
        limits: TextLimits,
    ) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Tokenizer::from_bytes(&bytes, max_length, limits)
    }

    /// [`Tokenizer::from_file`] on the file's bytes.
    pub fn from_bytes(
        json: &[u8],
        max_length: usize,
        limits: TextLimits,
    ) -> Result<Tokenizer, TokenizerError> {
        if max_length == 0 {
            return Err(TokenizerError::MaxLength);
        }
        let mut inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| TokenizerError::Parse(e.to_string()))?;
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => inner
                .token_to_id(error::PAD_TOKEN)
                .ok_or(TokenizerError::NoPadToken)?,
        };
        let max_length = inner
            .get_truncation()
            .map_or(max_length, |t| t.max_length.min(max_length));
        let truncation = tokenizers::TruncationParams {
            max_length,
            ..inner.get_truncation().cloned().unwrap_or_default()
        };
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| TokenizerError::Parse(e.to_string()))?;
        inner.with_padding(None);
        Ok(Tokenizer {
            inner,
            pad_id: i64::from(pad_id),
            max_length,
            limits,
        })
    }

    /// The id rows are padded with.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Tokens per row at most.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The vocabulary's size, special tokens included: every id is below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes the strings of `text`, the BYTES tensor `[n]` at `path` (`inputs[0]`), with
    /// token type ids when `type_ids`.
    pub fn encode(&self, text: &Tensor, path: &str, type_ids: bool) -> Result<Tokens, TextError> {
        let strings = self.check(text, path)?;
        let mut rows = Vec::with_capacity(strings.len());
        for (index, s) in strings.into_iter().enumerate() {
            let encoding = self
                .inner
                .encode(s, true)
                .map_err(|e| TextError::Tokenize {
                    path: path.to_string(),
                    index,
                    message: e.to_string(),
                })?;
            rows.push(encoding);
        }
        let length = rows.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let cells = rows.len() * length;
        let mut tokens = Tokens {
            rows: rows.len(),
            length,
            input_ids: Vec::with_capacity(cells),
            attention_mask: Vec::with_capacity(cells),
            token_type_ids: type_ids.then(|| Vec::with_capacity(cells)),
        };
        for e in &rows {
            let pad = length - e.len();
            let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
            tokens.input_ids.extend(widen(e.get_ids()));
            tokens
                .input_ids
                .extend(std::iter::repeat_n(self.pad_id, pad));
            tokens.attention_mask.extend(widen(e.get_attention_mask()));
            tokens.attention_mask.extend(std::iter::repeat_n(0, pad));
            if let Some(t) = tokens.token_type_ids.as_mut() {
                t.extend(widen(e.get_type_ids()));
                t.extend(std::iter::repeat_n(0, pad));
            }
        }
        Ok(tokens)
    }

    /// The strings of `text`, once every limit and UTF-8 hold.
    fn check<'t>(&self, text: &'t Tensor, path: &str) -> Result<Vec<&'t str>, TextError> {
        let (TensorData::Bytes(items), DataType::Bytes, [n]) =
            (&text.data, text.datatype, text.shape.as_slice())
        else {
            return Err(TextError::NotText {
                path: path.to_string(),
                datatype: text.datatype,
                shape: text.shape.clone(),
            });
        };
        let limits = &self.limits;
        if *n > limits.max_texts || items.len() != *n {
            return Err(TextError::TooManyTexts {
                path: path.to_string(),
                max: limits.max_texts,
                got: *n,
            });
        }
        let mut total = 0usize;
        for (index, item) in items.iter().enumerate() {
            if item.len() > limits.max_text_bytes {
                return Err(TextError::TextTooLong {
                    path: path.to_string(),
                    index,
                    max: limits.max_text_bytes,
                    got: item.len(),
                });
            }
            total += item.len();
        }
        if total > limits.max_job_bytes {
            return Err(TextError::JobTooLong {
                path: path.to_string(),
                max: limits.max_job_bytes,
                got: total,
            });
        }
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                std::str::from_utf8(item).map_err(|e| TextError::InvalidUtf8 {
                    path: path.to_string(),
                    index,
                    offset: e.valid_up_to(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
