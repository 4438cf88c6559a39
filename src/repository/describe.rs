//! The repository as `infermq models` shows it: every model, its configuration, and each
//! version's inputs and outputs (or why it cannot be read), and for a decoder its generation.

use std::path::Path;

use serde_json::{json, Value};

use super::config::ModelConfig;
use super::store::ModelStore;
use crate::protocol::ModelSignature;

/// Describes every model of `store`; `signature` reads a version's ONNX bytes (an ONNX Runtime
/// session in the CLI); `generation` says what a version directory's decoder generates
/// (`None`: not a decoder).
pub fn describe(
    store: &ModelStore,
    signature: impl Fn(&[u8]) -> Result<ModelSignature, String>,
    generation: impl Fn(&Path, &ModelConfig, &ModelSignature) -> Option<Value>,
) -> Result<Value, super::RepositoryError> {
    let (models, broken) = store.scan()?;
    let mut out = Vec::new();
    for entry in models {
        let versions: Vec<Value> = entry
            .versions
            .iter()
            .map(|&version| {
                let served = entry.served.contains(&version);
                let read = store
                    .read_version(&entry.name, version)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| signature(&bytes));
                let path = store.model_path(&entry.name, version);
                let dir = path.parent().unwrap_or(Path::new("."));
                match read {
                    Ok(s) => match generation(dir, &entry.config, &s) {
                        Some(g) => json!({"version": version.to_string(), "served": served, "inputs": s.inputs, "outputs": s.outputs, "generate": g}),
                        None => json!({"version": version.to_string(), "served": served, "inputs": s.inputs, "outputs": s.outputs}),
                    },
                    Err(error) => json!({"version": version.to_string(), "served": served, "error": error}),
                }
            })
            .collect();
        out.push(json!({
            "name": entry.name.as_str(),
            "config": {
                "max_batch_size": entry.config.max_batch_size,
                "max_queue_delay_ms": entry.config.max_queue_delay_ms,
                "preferred_batch_sizes": entry.config.preferred_batch_sizes,
                "instances": entry.config.instances,
                "version_policy": format!("{:?}", entry.config.version_policy),
                "length_buckets": entry.config.length_buckets,
                "max_batch_elements": entry.config.max_batch_elements,
                "text_input": entry.config.text.as_ref().map(|t| t.name.as_str()),
            },
            "versions": versions,
        }));
    }
    for (name, error) in broken {
        out.push(json!({"name": name, "error": error.to_string()}));
    }
    Ok(Value::Array(out))
}
