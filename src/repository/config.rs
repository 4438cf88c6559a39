//! `models/<name>/config.toml`: how the repository serves one model (batching, instances,
//! execution providers, which versions, who may send jobs). Read by [`super::ModelStore`] on
//! every scan; the worker's own settings are `crate::config::Settings`.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::inputs::{check_buckets, check_inputs, InputConfig, TextInput};
pub use super::warmup::Warmup;
use crate::runtime::ExecutionProvider;

/// A model's `config.toml` that could not be read or was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ModelConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those present (any order in, ascending out).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        let mut versions = present.to_vec();
        versions.sort_unstable();
        versions.dedup();
        match self {
            VersionPolicy::Latest(n) => versions.split_off(versions.len().saturating_sub(*n)),
            VersionPolicy::All => versions,
            VersionPolicy::Specific(wanted) => versions
                .into_iter()
                .filter(|v| wanted.contains(v))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for VersionPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Table(RawTable),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawTable {
            latest: Option<usize>,
            specific: Option<Vec<u64>>,
            all: Option<toml::Value>,
        }
        let err = || {
            serde::de::Error::custom("expected \"all\", \"latest\", { latest = N }, { all = {} } or { specific = [versions] }")
        };
        match Raw::deserialize(d).map_err(|_| err())? {
            Raw::Name(n) if n == "all" => Ok(VersionPolicy::All),
            Raw::Name(n) if n == "latest" => Ok(VersionPolicy::Latest(1)),
            Raw::Name(_) => Err(err()),
            Raw::Table(t) => match (t.latest, t.specific, t.all) {
                (Some(0), None, None) => Err(serde::de::Error::custom("latest must be at least 1")),
                (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
                (None, Some(v), None) if !v.is_empty() => Ok(VersionPolicy::Specific(v)),
                (None, None, Some(_)) => Ok(VersionPolicy::All),
                _ => Err(err()),
            },
        }
    }
}

/// `models/<name>/config.toml`: every key optional; defaults work for any ONNX model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Rows per batch; 0 = the model has no batch dimension (one job per run).
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_ms: Option<u64>,
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    pub instances: Option<usize>,
    /// Run batches on the worker's async thread instead of instance threads of their own: for
    /// models whose batch runs in microseconds, where the hand-off costs more than the run.
    #[serde(default)]
    pub inline: bool,
    pub execution_providers: Option<Vec<ExecutionProvider>>,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Broker users (the AMQP `user_id` property) whose prediction jobs are accepted; empty:
    /// anyone.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Warm-up run before a version is announced ready ([`Warmup`]).
    #[serde(skip)]
    pub warmup: Warmup,
    /// `warmup` as written; read into `warmup` once the model's directory is known.
    #[serde(default, rename = "warmup")]
    pub(crate) warmup_value: Option<toml::Value>,
    /// ONNX Runtime intra-op threads of this model's sessions, instead of
    /// `runtime.intra_threads` (0: one per core).
    pub intra_threads: Option<usize>,
    /// CUDA devices of this model's instances (round robin), instead of
    /// `runtime.cuda.device_ids`.
    pub device_ids: Option<Vec<usize>>,
    /// Upper bounds of the length buckets of padded batches: a batch holds jobs of one bucket.
    #[serde(default)]
    pub length_buckets: Vec<usize>,
    /// Most padded elements (rows × padded lengths) per batch; 0: no limit.
    #[serde(default)]
    pub max_batch_elements: usize,
    /// `[inputs.<name>]`: pad values, and the text input.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputConfig>,
    /// The text input of `inputs`, once checked.
    #[serde(skip)]
    pub text: Option<TextInput>,
    /// `[generate]`: a decoder's names where its export names them otherwise, and the budgets
    /// of its generation engine (docs/CONFIGURATION.md "Generation").
    pub generate: Option<GenerateConfig>,
}

/// `[generate]` of a model's `config.toml`. Every key is optional: a decoder exported by
/// onnxruntime-genai's builder or in the plain `past_key_values` layout is found without it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    pub input_ids: Option<String>,
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    /// Cache input names with `%d` for the layer (`past_key_values.%d.key`).
    pub past_key: Option<String>,
    pub past_value: Option<String>,
    /// Cache output names with `%d` for the layer (`present.%d.key`).
    pub present_key: Option<String>,
    pub present_value: Option<String>,
    pub logits: Option<String>,
    /// Tokens a row may hold, prompt and output together.
    pub context_length: Option<usize>,
    pub eos_token_ids: Option<Vec<u32>>,
    /// Rows decoded together at most (one per job): the KV cache memory admitted is this many
    /// rows of `context_length` tokens.
    pub max_active_rows: Option<usize>,
    /// Prompt tokens prefilled between two decode steps at most: how long a new prompt may hold
    /// up the jobs already decoding.
    pub max_prefill_tokens: Option<usize>,
    /// Jobs received and waiting for a row at most (with `max_active_rows`, the prefetch).
    pub max_waiting_jobs: Option<usize>,
    /// `max_tokens` of a job that sets none.
    pub max_tokens: Option<usize>,
    /// A streamed job's messages go at least this far apart (ms; its first piece at once);
    /// 0: each piece as soon as the job's previous message is confirmed.
    pub stream_interval_ms: Option<u64>,
}

impl ModelConfig {
    /// Reads `path`; a missing file is the default configuration.
    pub fn read(path: &Path) -> Result<ModelConfig, ModelConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => {
                return Err(ModelConfigError {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        };
        let mut config: ModelConfig = toml::from_str(&text).map_err(|e| ModelConfigError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if config.instances == Some(0) {
            return Err(ModelConfigError {
                path: path.to_path_buf(),
                message: "instances must be at least 1".into(),
            });
        }
        if let Some(ids) = &config.device_ids {
            let cuda = crate::runtime::cuda::CudaSettings {
                device_ids: ids.clone(),
                ..Default::default()
            };
            if let Err((_, message)) = cuda.check() {
                return Err(ModelConfigError {
                    path: path.to_path_buf(),
                    message: format!("device_ids: {message}"),
                });
            }
        }
        if config.preferred_batch_sizes.contains(&0) {
            return Err(ModelConfigError {
                path: path.to_path_buf(),
                message: "preferred_batch_sizes must be at least 1".into(),
            });
        }
        let refused = |message: String| ModelConfigError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(value) = config.warmup_value.take() {
            let model_dir = path.parent().unwrap_or(Path::new("."));
            config.warmup = Warmup::from_value(value, model_dir).map_err(refused)?;
        }
        check_buckets(&config.length_buckets).map_err(refused)?;
        config.text = check_inputs(&config.inputs).map_err(refused)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::inputs::PadLiteral;

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), text).expect("writable");
        file
    }

    #[test]
    fn version_policies_select_versions() {
        let present = [3, 1, 10, 2];
        let cases: &[(&str, Vec<u64>)] = &[
            ("", vec![10]),
            ("version_policy = \"all\"", vec![1, 2, 3, 10]),
            ("version_policy = { latest = 2 }", vec![3, 10]),
            ("version_policy = { specific = [1, 3, 99] }", vec![1, 3]),
            ("version_policy = { all = {} }", vec![1, 2, 3, 10]),
        ];
        for (text, want) in cases {
            let file = config_file(text);
            let config = ModelConfig::read(file.path()).unwrap();
            assert_eq!(&config.version_policy.select(&present), want, "{text}");
        }
    }

    #[test]
    fn warmup_is_on_off_or_sizes() {
        for (text, want) in [
            ("", Warmup::Default),
            ("warmup = true", Warmup::Default),
            ("warmup = false", Warmup::Off),
            ("warmup = [1, 32]", Warmup::Sizes(vec![1, 32])),
        ] {
            let file = config_file(text);
            assert_eq!(
                ModelConfig::read(file.path()).unwrap().warmup,
                want,
                "{text}"
            );
        }
        let file = config_file("device_ids = [1, 0]");
        let config = ModelConfig::read(file.path()).unwrap();
        assert_eq!(config.device_ids, Some(vec![1, 0]));
    }

    #[test]
    fn model_config_errors_name_the_key() {
        for (text, needle) in [
            ("max_batch_size = \"big\"", "max_batch_size"),
            ("instances = 0", "instances"),
            ("version_policy = { latest = 0 }", "latest"),
            ("batch = 3", "batch"),
            ("preferred_batch_sizes = [0]", "preferred_batch_sizes"),
            ("warmup = [0]", "warmup"),
            ("warmup = []", "warmup"),
            ("warmup = \"yes\"", "warmup"),
            ("device_ids = [1, 1]", "device_ids"),
            ("length_buckets = [16, 0]", "length_buckets"),
            ("max_batch_elements = -1", "max_batch_elements"),
            ("[inputs.ids]\npad_value = [0]", "pad_value"),
            ("[inputs.ids]\npadding = 0", "padding"),
            ("[inputs.ids]\nmax_length = 8", "inputs.ids.max_length"),
            (
                "[inputs.t]\ntokenizer = \"../t.json\"",
                "inputs.t.tokenizer",
            ),
            (
                "[inputs.t]\ntokenizer = \"t.json\"\npad_value = 0",
                "inputs.t.pad_value",
            ),
            (
                "[inputs.t]\ntokenizer = \"t.json\"\ndatatype = \"FP32\"",
                "inputs.t.datatype",
            ),
            (
                "[inputs.t]\ntokenizer = \"t.json\"\nshape = [-1, 8]",
                "inputs.t.shape",
            ),
            (
                "[inputs.t]\ntokenizer = \"t.json\"\nmax_length = 0",
                "inputs.t.max_length",
            ),
            (
                "[inputs.a]\ntokenizer = \"t.json\"\n[inputs.b]\ntokenizer = \"t.json\"",
                "inputs.b.tokenizer",
            ),
        ] {
            let file = config_file(text);
            let err = ModelConfig::read(file.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert_eq!(
            ModelConfig::read(Path::new("/nonexistent/config.toml")).unwrap(),
            ModelConfig::default()
        );
    }

    #[test]
    fn padding_and_text_keys_are_read() {
        let file = config_file(
            "length_buckets = [64, 16]\nmax_batch_elements = 4096\n\
             [inputs.input_ids]\npad_value = 0\n\
             [inputs.mask]\npad_value = -1.5\n\
             [inputs.text]\ndatatype = \"BYTES\"\nshape = [-1]\ntokenizer = \"tokenizer.json\"\nmax_length = 128",
        );
        let config = ModelConfig::read(file.path()).unwrap();
        assert_eq!(config.length_buckets, vec![64, 16]);
        assert_eq!(config.max_batch_elements, 4096);
        assert_eq!(
            config.inputs["input_ids"].pad_value,
            Some(PadLiteral::Int(0))
        );
        assert_eq!(
            config.inputs["mask"].pad_value,
            Some(PadLiteral::Float(-1.5))
        );
        assert_eq!(
            config.text,
            Some(TextInput {
                name: "text".into(),
                tokenizer: "tokenizer.json".into(),
                max_length: Some(128),
            })
        );
        let plain = config_file("[inputs.x]\npad_value = \"\"");
        assert_eq!(ModelConfig::read(plain.path()).unwrap().text, None);
    }
}
