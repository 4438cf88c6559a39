//! Decoders: a model version that generates text token by token, found from its files without
//! configuration, in the two layouts exports come in.
//!
//! - **onnxruntime-genai's builder** (`genai_config.json` beside the model): the names, layers,
//!   heads, context length and token ids come from that file. Its attention is
//!   GroupQueryAttention, which reads each row's length off the attention mask's row sum: rows
//!   sit at the start of the cache buffers, right-padded ([`CacheLayout::RowLengths`]); it has
//!   no `position_ids`.
//! - **The plain export** (optimum, transformers.js, `torch.onnx.export`): inputs `input_ids`,
//!   `attention_mask`, `position_ids`, `past_key_values.{i}.key|value`, outputs `logits` and
//!   `present.{i}.key|value`; rows of different lengths are left-padded, with mask 0 on the
//!   padding and their own positions ([`CacheLayout::LeftPadded`]). Token ids and the context
//!   length come from `config.json` and `generation_config.json` beside the model.
//!
//! In both, each run returns the caches one run longer than it was given them (past + new
//! positions); infermq passes buffers only as wide as the longest row, not the context.
//!
//! `[generate]` in `config.toml` names what an export names otherwise. A model with cache
//! inputs that fits neither layout is refused, naming what is missing; a model without them is
//! not a decoder and serves prediction jobs as before.

use std::path::Path;

use serde_json::Value;

pub use crate::execution::generate::spec::{
    element_size, CacheLayout, DecoderSpec, GenerateBudgets,
};
use crate::protocol::{DataType, ModelSignature, TensorSpec};
use crate::repository::config::GenerateConfig;

/// The decoder in `version_dir` with `signature`, `None` when the model is not one.
pub fn find_decoder(
    version_dir: &Path,
    config: Option<&GenerateConfig>,
    signature: &ModelSignature,
) -> Result<Option<DecoderSpec>, String> {
    let genai = version_dir.join("genai_config.json");
    let names = Names::new(config);
    let layout = if genai.is_file() {
        let text =
            std::fs::read_to_string(&genai).map_err(|e| format!("genai_config.json: {e}"))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("genai_config.json: {e}"))?;
        Found::genai(&json, names)?
    } else if signature
        .inputs
        .iter()
        .any(|i| i.name == names.past_key.replace("%d", "0"))
    {
        Found::plain(version_dir, names)?
    } else if config.is_some() {
        return Err(format!(
            "[generate] is set, but the model has no cache input {} and no genai_config.json",
            names.past_key.replace("%d", "0")
        ));
    } else {
        return Ok(None);
    };
    let budgets = GenerateBudgets::from_config(config)?;
    layout.check(signature, config, budgets).map(Some)
}

/// Names as `[generate]` sets them, or the plain export's.
struct Names {
    input_ids: String,
    attention_mask: String,
    position_ids: String,
    past_key: String,
    past_value: String,
    present_key: String,
    present_value: String,
    logits: String,
}

impl Names {
    fn new(config: Option<&GenerateConfig>) -> Names {
        let c = config.cloned().unwrap_or_default();
        Names {
            input_ids: c.input_ids.unwrap_or_else(|| "input_ids".into()),
            attention_mask: c.attention_mask.unwrap_or_else(|| "attention_mask".into()),
            position_ids: c.position_ids.unwrap_or_else(|| "position_ids".into()),
            past_key: c
                .past_key
                .unwrap_or_else(|| "past_key_values.%d.key".into()),
            past_value: c
                .past_value
                .unwrap_or_else(|| "past_key_values.%d.value".into()),
            present_key: c.present_key.unwrap_or_else(|| "present.%d.key".into()),
            present_value: c.present_value.unwrap_or_else(|| "present.%d.value".into()),
            logits: c.logits.unwrap_or_else(|| "logits".into()),
        }
    }
}

/// A layout found, before it is checked against the model's signature.
struct Found {
    layout: CacheLayout,
    found_by: &'static str,
    names: Names,
    /// Layers, heads and head size where a file says them (else read off the cache inputs).
    layers: Option<usize>,
    kv_heads: Option<usize>,
    head_size: Option<usize>,
    context_length: Option<usize>,
    eos_token_ids: Vec<u32>,
}

impl Found {
    /// From `genai_config.json`; `[generate]` names win over the file's.
    fn genai(json: &Value, mut names: Names) -> Result<Found, String> {
        let model = &json["model"];
        let decoder = &model["decoder"];
        if !decoder.is_object() {
            return Err("genai_config.json has no model.decoder".into());
        }
        let file = decoder["filename"].as_str().unwrap_or("model.onnx");
        if file != "model.onnx" {
            return Err(format!(
                "genai_config.json: model.decoder.filename is {file}; infermq serves a version's model.onnx (rename the file and the entry)"
            ));
        }
        let text = |v: &Value, key: &str| v[key].as_str().map(str::to_string);
        let inputs = &decoder["inputs"];
        let outputs = &decoder["outputs"];
        let defaults = Names::new(None);
        // A name the operator set in [generate] differs from the default: keep it.
        let take = |current: &mut String, default: &str, found: Option<String>| {
            if current == default {
                if let Some(found) = found {
                    *current = found;
                }
            }
        };
        take(
            &mut names.input_ids,
            &defaults.input_ids,
            text(inputs, "input_ids"),
        );
        take(
            &mut names.attention_mask,
            &defaults.attention_mask,
            text(inputs, "attention_mask"),
        );
        take(
            &mut names.position_ids,
            &defaults.position_ids,
            text(inputs, "position_ids"),
        );
        take(
            &mut names.past_key,
            &defaults.past_key,
            text(inputs, "past_key_names"),
        );
        take(
            &mut names.past_value,
            &defaults.past_value,
            text(inputs, "past_value_names"),
        );
        take(
            &mut names.present_key,
            &defaults.present_key,
            text(outputs, "present_key_names"),
        );
        take(
            &mut names.present_value,
            &defaults.present_value,
            text(outputs, "present_value_names"),
        );
        take(&mut names.logits, &defaults.logits, text(outputs, "logits"));
        let count = |v: &Value| v.as_u64().map(|n| n as usize);
        let context = count(&model["context_length"]).or(count(&json["search"]["max_length"]));
        Ok(Found {
            layout: CacheLayout::RowLengths,
            found_by: "genai_config.json",
            names,
            layers: count(&decoder["num_hidden_layers"]),
            kv_heads: count(&decoder["num_key_value_heads"]),
            head_size: count(&decoder["head_size"]),
            context_length: context,
            eos_token_ids: token_ids(&model["eos_token_id"]),
        })
    }

    /// The plain layout: token ids and context length from `generation_config.json` and
    /// `config.json` beside the model, where they are.
    fn plain(version_dir: &Path, names: Names) -> Result<Found, String> {
        let read = |file: &str| -> Result<Value, String> {
            match std::fs::read_to_string(version_dir.join(file)) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{file}: {e}")),
                Err(_) => Ok(Value::Null),
            }
        };
        let config = read("config.json")?;
        let generation = read("generation_config.json")?;
        let mut eos = token_ids(&generation["eos_token_id"]);
        if eos.is_empty() {
            eos = token_ids(&config["eos_token_id"]);
        }
        let context = [
            "max_position_embeddings",
            "n_positions",
            "max_sequence_length",
        ]
        .iter()
        .find_map(|key| config[key].as_u64())
        .map(|n| n as usize);
        Ok(Found {
            layout: CacheLayout::LeftPadded,
            found_by: "past_key_values",
            names,
            layers: None,
            kv_heads: None,
            head_size: None,
            context_length: context,
            eos_token_ids: eos,
        })
    }

    /// Checks every name against `signature` and completes what the files did not say.
    fn check(
        self,
        signature: &ModelSignature,
        config: Option<&GenerateConfig>,
        budgets: GenerateBudgets,
    ) -> Result<DecoderSpec, String> {
        let names = &self.names;
        let input = |name: &str| signature.inputs.iter().find(|s| s.name == name);
        let output = |name: &str| signature.outputs.iter().find(|s| s.name == name);
        let int64 = |name: &str| -> Result<(), String> {
            match input(name) {
                Some(s) if s.datatype == DataType::I64 && s.shape.len() == 2 => Ok(()),
                Some(s) => Err(format!(
                    "decoder input {name} is {} of rank {}, expected INT64 [batch, sequence]",
                    s.datatype.as_str(),
                    s.shape.len()
                )),
                None => Err(format!("decoder has no input {name} ({})", self.found_by)),
            }
        };
        int64(&names.input_ids)?;
        int64(&names.attention_mask)?;
        let position_ids = match input(&names.position_ids) {
            Some(_) => {
                int64(&names.position_ids)?;
                Some(names.position_ids.clone())
            }
            None if self.layout == CacheLayout::LeftPadded => {
                return Err(format!(
                    "decoder has no input {}: rows of different lengths are batched left-padded, and each needs its own positions",
                    names.position_ids
                ))
            }
            None => None,
        };
        let mut caches = Vec::new();
        while input(&names.past_key.replace("%d", &caches.len().to_string())).is_some() {
            let i = caches.len().to_string();
            caches.push([
                names.past_key.replace("%d", &i),
                names.past_value.replace("%d", &i),
                names.present_key.replace("%d", &i),
                names.present_value.replace("%d", &i),
            ]);
        }
        if caches.is_empty() {
            return Err(format!(
                "decoder has no cache input {}",
                names.past_key.replace("%d", "0")
            ));
        }
        if let Some(layers) = self.layers.filter(|&l| l != caches.len()) {
            return Err(format!(
                "{} says {layers} layers, the model has cache inputs for {}",
                self.found_by,
                caches.len()
            ));
        }
        let first = input(&caches[0][0]).expect("found above");
        let (kv_heads, head_size) = cache_dims(first, self.kv_heads, self.head_size)?;
        let kv_type = first.datatype;
        if !matches!(kv_type, DataType::F32 | DataType::F16) {
            return Err(format!(
                "cache input {} is {}: infermq keeps FP32 or FP16 caches",
                first.name,
                kv_type.as_str()
            ));
        }
        for names in &caches {
            for (i, name) in names.iter().enumerate() {
                let spec = if i < 2 { input(name) } else { output(name) };
                let spec = spec.ok_or_else(|| {
                    let what = if i < 2 { "input" } else { "output" };
                    format!("decoder has no cache {what} {name}")
                })?;
                let dims = cache_dims(spec, Some(kv_heads), Some(head_size));
                if spec.datatype != kv_type || dims.is_err() {
                    return Err(format!(
                        "cache {name} is {} {:?}, expected {} [batch, {kv_heads}, sequence, {head_size}] like {}",
                        spec.datatype.as_str(),
                        spec.shape,
                        kv_type.as_str(),
                        first.name
                    ));
                }
            }
        }
        let logits = output(&names.logits)
            .ok_or_else(|| format!("decoder has no output {}", names.logits))?;
        if !matches!(logits.datatype, DataType::F32 | DataType::F16) || logits.shape.len() != 3 {
            return Err(format!(
                "decoder output {} is {} of rank {}, expected FP32 or FP16 [batch, sequence, vocabulary]",
                names.logits,
                logits.datatype.as_str(),
                logits.shape.len()
            ));
        }
        let settings = config.cloned().unwrap_or_default();
        let context_length = settings
            .context_length
            .or(self.context_length)
            .ok_or_else(|| {
                format!(
                    "no context length: {} does not say it; set [generate] context_length",
                    self.found_by
                )
            })?;
        if context_length < 2 {
            return Err(format!("context length {context_length} is under 2 tokens"));
        }
        let eos_token_ids = settings.eos_token_ids.unwrap_or(self.eos_token_ids);
        if eos_token_ids.is_empty() {
            return Err("no end-of-sequence token id: set eos_token_id in generation_config.json or [generate] eos_token_ids".into());
        }
        Ok(DecoderSpec {
            layout: self.layout,
            found_by: self.found_by,
            input_ids: names.input_ids.clone(),
            attention_mask: names.attention_mask.clone(),
            position_ids,
            caches,
            logits: names.logits.clone(),
            kv_heads,
            head_size,
            kv_type,
            logits_type: logits.datatype,
            context_length,
            eos_token_ids,
            budgets,
        })
    }
}

/// A cache's `[batch, kv heads, sequence, head size]` with fixed heads and head size, equal to
/// `heads` and `size` where those are known.
fn cache_dims(
    spec: &TensorSpec,
    heads: Option<usize>,
    size: Option<usize>,
) -> Result<(usize, usize), String> {
    let fixed =
        |d: i64, known: Option<usize>| match (usize::try_from(d).ok().filter(|&d| d > 0), known) {
            (Some(d), Some(k)) if d == k => Some(d),
            (Some(_), Some(_)) => None,
            (Some(d), None) => Some(d),
            // A dynamic dimension takes the size the configuration says.
            (None, known) => known,
        };
    match spec.shape.as_slice() {
        [_, h, _, s] => match (fixed(*h, heads), fixed(*s, size)) {
            (Some(h), Some(s)) => Ok((h, s)),
            _ => Err(format!(
                "cache {} has shape {:?}: its heads and head size must be fixed (or said in genai_config.json)",
                spec.name, spec.shape
            )),
        },
        _ => Err(format!(
            "cache {} has shape {:?}, expected [batch, kv heads, sequence, head size]",
            spec.name, spec.shape
        )),
    }
}

/// An id or a list of ids (`eos_token_id` comes as either).
fn token_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn plain_signature(layers: usize) -> ModelSignature {
        let mut inputs = vec![
            spec("input_ids", DataType::I64, &[-1, -1]),
            spec("attention_mask", DataType::I64, &[-1, -1]),
            spec("position_ids", DataType::I64, &[-1, -1]),
        ];
        let mut outputs = vec![spec("logits", DataType::F32, &[-1, -1, 512])];
        for i in 0..layers {
            for kv in ["key", "value"] {
                inputs.push(spec(
                    &format!("past_key_values.{i}.{kv}"),
                    DataType::F32,
                    &[-1, 2, -1, 16],
                ));
                outputs.push(spec(
                    &format!("present.{i}.{kv}"),
                    DataType::F32,
                    &[-1, 2, -1, 16],
                ));
            }
        }
        ModelSignature { inputs, outputs }
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_plain_export_is_found_with_its_token_ids_and_context() {
        let dir = dir_with(&[
            (
                "config.json",
                r#"{"max_position_embeddings": 256, "eos_token_id": 9}"#,
            ),
            ("generation_config.json", r#"{"eos_token_id": [2, 3]}"#),
        ]);
        let found = find_decoder(dir.path(), None, &plain_signature(2))
            .unwrap()
            .unwrap();
        assert_eq!(found.layout, CacheLayout::LeftPadded);
        assert_eq!(found.caches.len(), 2);
        assert_eq!((found.kv_heads, found.head_size), (2, 16));
        assert_eq!(found.context_length, 256);
        assert_eq!(found.eos_token_ids, vec![2, 3]);
        // 2 layers × (key, value) × 2 heads × 16 × 4 bytes.
        assert_eq!(found.kv_bytes_per_token(), 512);
        assert_eq!(found.kv_bytes_admitted(), 512 * 256 * 32);
    }

    #[test]
    fn a_model_without_caches_is_not_a_decoder() {
        let signature = ModelSignature {
            inputs: vec![spec("x", DataType::F32, &[-1, 4])],
            outputs: vec![spec("y", DataType::F32, &[-1, 3])],
        };
        let dir = dir_with(&[]);
        assert_eq!(find_decoder(dir.path(), None, &signature).unwrap(), None);
        let config = GenerateConfig::default();
        let refused = find_decoder(dir.path(), Some(&config), &signature).unwrap_err();
        assert!(refused.contains("past_key_values.0.key"), "{refused}");
    }

    #[test]
    fn what_is_missing_is_named() {
        let dir = dir_with(&[("config.json", r#"{"max_position_embeddings": 256}"#)]);
        let refused = find_decoder(dir.path(), None, &plain_signature(1)).unwrap_err();
        assert!(refused.contains("end-of-sequence"), "{refused}");
        let mut signature = plain_signature(1);
        signature.outputs.retain(|o| o.name != "present.0.value");
        let dir = dir_with(&[(
            "config.json",
            r#"{"max_position_embeddings": 256, "eos_token_id": 2}"#,
        )]);
        let refused = find_decoder(dir.path(), None, &signature).unwrap_err();
        assert_eq!(refused, "decoder has no cache output present.0.value");
        let mut signature = plain_signature(1);
        signature.inputs.retain(|o| o.name != "position_ids");
        let refused = find_decoder(dir.path(), None, &signature).unwrap_err();
        assert!(
            refused.starts_with("decoder has no input position_ids"),
            "{refused}"
        );
        let no_context = dir_with(&[("generation_config.json", r#"{"eos_token_id": 2}"#)]);
        let refused = find_decoder(no_context.path(), None, &plain_signature(1)).unwrap_err();
        assert!(refused.contains("context_length"), "{refused}");
    }

    #[test]
    fn genai_config_names_the_inputs_and_sizes() {
        let genai = r#"{"model": {"context_length": 128, "eos_token_id": [2], "decoder": {
            "filename": "model.onnx", "head_size": 16, "num_key_value_heads": 2, "num_hidden_layers": 1,
            "inputs": {"input_ids": "ids", "attention_mask": "mask", "past_key_names": "past.%d.k", "past_value_names": "past.%d.v"},
            "outputs": {"logits": "out", "present_key_names": "cur.%d.k", "present_value_names": "cur.%d.v"}}}}"#;
        let dir = dir_with(&[("genai_config.json", genai)]);
        let signature = ModelSignature {
            inputs: vec![
                spec("ids", DataType::I64, &[-1, -1]),
                spec("mask", DataType::I64, &[-1, -1]),
                spec("past.0.k", DataType::F16, &[-1, 2, -1, 16]),
                spec("past.0.v", DataType::F16, &[-1, 2, -1, 16]),
            ],
            outputs: vec![
                spec("out", DataType::F32, &[-1, -1, 512]),
                spec("cur.0.k", DataType::F16, &[-1, 2, -1, 16]),
                spec("cur.0.v", DataType::F16, &[-1, 2, -1, 16]),
            ],
        };
        let found = find_decoder(dir.path(), None, &signature).unwrap().unwrap();
        assert_eq!(found.layout, CacheLayout::RowLengths);
        assert_eq!(found.position_ids, None);
        assert_eq!(
            found.caches[0],
            ["past.0.k", "past.0.v", "cur.0.k", "cur.0.v"].map(String::from)
        );
        assert_eq!(found.kv_type, DataType::F16);
        assert_eq!(found.context_length, 128);
        let config = GenerateConfig {
            max_active_rows: Some(0),
            ..GenerateConfig::default()
        };
        let refused = find_decoder(dir.path(), Some(&config), &signature).unwrap_err();
        assert_eq!(refused, "[generate] max_active_rows must be at least 1");
        let config = GenerateConfig {
            stream_interval_ms: Some(60_001),
            ..GenerateConfig::default()
        };
        let refused = find_decoder(dir.path(), Some(&config), &signature).unwrap_err();
        assert_eq!(
            refused,
            "[generate] stream_interval_ms must be at most 60000 (a minute), not 60001"
        );
    }
}
