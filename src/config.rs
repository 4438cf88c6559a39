//! Configuration: built-in defaults → `config/default.toml` → `--config FILE` → environment
//! `INFERMQ__SECTION__KEY`, validated once at start into typed sections that are passed to
//! constructors. Unknown keys and invalid values stop the start with a message naming the key.
//!
//! Also the per-model `config.toml` of the model repository ([`ModelConfig`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The defaults, compiled in so a binary started anywhere behaves the same.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The broker URL of the built-in defaults (`config/default.toml`).
pub use crate::broker::addresses::{redact_url, DEFAULT_BROKER_URL};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{path}: {message}")]
    ModelConfig { path: PathBuf, message: String },
}

/// The whole worker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub repository: RepositorySettings,
    pub runtime: RuntimeSettings,
    pub http: HttpSettings,
    pub batching: BatchingSettings,
    pub training: TrainingSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub gateway: GatewaySettings,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// One `amqp(s)://` URL per broker node (a TOML string or array; comma-separated in the
    /// environment). See [`crate::broker::BrokerAddresses`].
    #[serde(deserialize_with = "crate::broker::addresses::deserialize_urls")]
    pub url: Vec<String>,
    /// File holding the URL or URLs (a mounted Secret); replaces `url` when set.
    #[serde(default)]
    pub url_file: PathBuf,
    #[serde(default)]
    pub tls: crate::broker::tls::TlsSettings,
    pub prefix: String,
    pub prefetch: u16,
    pub max_message_bytes: usize,
    pub delivery_limit: u32,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field(
                "url",
                &self.url.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("delivery_limit", &self.delivery_limit)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl BrokerSettings {
    /// Replaces `url` by the first line of `url_file` when that is set (one URL, or a cluster's
    /// URLs separated by commas).
    fn read_url_file(&mut self) -> Result<(), ConfigError> {
        if self.url_file.as_os_str().is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.url_file).map_err(|e| ConfigError::Invalid {
            key: "broker.url_file",
            message: format!("{}: {e}", self.url_file.display()),
        })?;
        self.url = crate::broker::BrokerAddresses::parse_list(text.lines().next().unwrap_or(""));
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySettings {
    pub path: PathBuf,
    pub models: Vec<String>,
    pub poll_interval_ms: u64,
}

pub use crate::runtime::ExecutionProvider;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    pub library: PathBuf,
    pub execution_providers: Vec<ExecutionProvider>,
    pub require_gpu: bool,
    pub intra_threads: usize,
    /// Threads of the worker's async runtime (consumers, batchers, publisher, HTTP); 0: one per
    /// core. Inference runs on instance threads of its own, whatever this is.
    pub async_threads: usize,
    /// CPUs for the instance threads that run ONNX Runtime (one each, round robin).
    #[serde(deserialize_with = "crate::runtime::affinity::one_or_many")]
    pub instance_cpus: Vec<usize>,
    /// CPUs for every other thread of the worker (tokio, broker connection, HTTP).
    #[serde(deserialize_with = "crate::runtime::affinity::one_or_many")]
    pub io_cpus: Vec<usize>,
    /// Bytes the worker may use for models; 0: the cgroup's limit, else the machine's memory.
    pub memory_limit: u64,
    pub cuda: crate::runtime::cuda::CudaSettings,
}

impl RuntimeSettings {
    /// The configured library path, `None` when left empty.
    pub fn library(&self) -> Option<&Path> {
        (!self.library.as_os_str().is_empty()).then_some(self.library.as_path())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSettings {
    pub max_batch_size: usize,
    pub max_queue_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    pub enabled: bool,
    pub concurrency: usize,
    pub consumer_timeout_ms: u64,
    /// Directory every `file://` training data URI must resolve inside; empty: `file://` refused.
    pub data_dir: PathBuf,
    /// Largest training data file read, in bytes.
    pub max_data_bytes: u64,
    /// Budget of one job (see `training::Budget`).
    pub max_parameters: u64,
    pub max_work: u64,
    pub max_duration_ms: u64,
    pub progress_interval_ms: u64,
    pub max_history: usize,
    /// Glob patterns (`*`, `?`) of the model names jobs may write; empty: any.
    pub allowed_models: Vec<String>,
    /// Broker users (the AMQP `user_id` property) whose training jobs are accepted; empty:
    /// anyone.
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

impl TrainingSettings {
    /// The configured data directory, `None` when left empty.
    pub fn data_dir(&self) -> Option<&Path> {
        (!self.data_dir.as_os_str().is_empty()).then_some(self.data_dir.as_path())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub shutdown_timeout_ms: u64,
}

impl WorkerSettings {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// `infermq gateway`: the KServe v2 HTTP front door (see `docs/GATEWAY.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    /// Wait for a result when the request names none; also the job's `x-deadline-ms`.
    pub timeout_ms: u64,
    /// Largest timeout a request may ask for.
    pub max_timeout_ms: u64,
    /// A model's queue holding more ready jobs than this is answered 429; 0: no bound.
    pub max_queue_depth: u32,
    /// How long a queue's state (exists, consumers, depth) is reused.
    pub queue_check_ms: u64,
    /// How long a model's metadata from the fleet is reused.
    pub metadata_cache_ms: u64,
    pub max_body_bytes: usize,
    /// Requests answered at once; more are answered 429.
    pub max_in_flight: usize,
    /// Broker connections (a deadpool pool) and channels over them (each with its reply consumer).
    pub connections: usize,
    pub channels: usize,
    pub shutdown_timeout_ms: u64,
    /// Threads of the gateway's async runtime (HTTP and broker); 0: one per core.
    pub async_threads: usize,
}

impl GatewaySettings {
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.timeout_ms == 0 || self.max_timeout_ms < self.timeout_ms {
            return Err((
                "gateway.max_timeout_ms",
                "needs 0 < timeout_ms <= max_timeout_ms",
            ));
        }
        if self.queue_check_ms == 0 {
            return Err(("gateway.queue_check_ms", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(("gateway.max_body_bytes", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(("gateway.max_in_flight", "must be at least 1"));
        }
        if self.connections == 0 || self.channels == 0 {
            return Err((
                "gateway.channels",
                "connections and channels must be at least 1",
            ));
        }
        Ok(())
    }
}

pub use crate::telemetry::LogFormat;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// Tracing of jobs across the queue (`telemetry::trace`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`; empty: spans are not exported.
    pub otlp_endpoint: String,
}

impl Settings {
    /// Loads the layers and validates the result. `file` is `--config FILE`;
    /// `defaults_file` is `config/default.toml` when it exists in the working directory.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Settings::load`] with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        let local = Path::new("config/default.toml");
        if local.is_file() {
            builder = builder.add_source(File::from(local).format(FileFormat::Toml));
        }
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    message: format!("{} does not exist", file.display()),
                });
            }
            builder = builder.add_source(File::from(file).format(FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("INFERMQ__"))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("INFERMQ")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("runtime.execution_providers")
                .with_list_parse_key("repository.models")
                .with_list_parse_key("training.allowed_models")
                .with_list_parse_key("runtime.instance_cpus")
                .with_list_parse_key("runtime.io_cpus")
                .with_list_parse_key("runtime.cuda.device_ids")
                .with_list_parse_key("broker.url")
                .with_list_parse_key("training.allowed_users")
                .source(Some(env)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.broker.read_url_file()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if let Err(message) = crate::broker::addresses::check_urls(&self.broker.url) {
            return invalid("broker.url", &message);
        }
        if let Err(crate::broker::tls::ConnectError::Settings(message)) = self.broker.tls.check() {
            return invalid("broker.tls", message);
        }
        if self.broker.prefix.is_empty() || self.broker.prefix.contains(char::is_whitespace) {
            return invalid("broker.prefix", "must be a non-empty name without spaces");
        }
        if self.broker.max_message_bytes == 0 {
            return invalid("broker.max_message_bytes", "must be at least 1");
        }
        if self.broker.delivery_limit == 0 {
            return invalid("broker.delivery_limit", "must be at least 1");
        }
        if self.broker.reconnect_initial_ms == 0
            || self.broker.reconnect_max_ms < self.broker.reconnect_initial_ms
        {
            return invalid(
                "broker.reconnect_max_ms",
                "needs 0 < reconnect_initial_ms <= reconnect_max_ms",
            );
        }
        if self.repository.poll_interval_ms == 0 {
            return invalid("repository.poll_interval_ms", "must be at least 1");
        }
        if self.runtime.execution_providers.is_empty() {
            return invalid(
                "runtime.execution_providers",
                "must name at least one of cuda, cpu",
            );
        }
        if self.runtime.require_gpu
            && !self
                .runtime
                .execution_providers
                .contains(&ExecutionProvider::Cuda)
        {
            return invalid(
                "runtime.require_gpu",
                "is true but runtime.execution_providers has no \"cuda\"",
            );
        }
        for (key, cpus) in [
            ("runtime.instance_cpus", &self.runtime.instance_cpus),
            ("runtime.io_cpus", &self.runtime.io_cpus),
        ] {
            if let Err(message) = crate::runtime::affinity::check_usable(cpus) {
                return invalid(key, &message);
            }
        }
        if let Err((key, message)) = self.runtime.cuda.check() {
            return invalid(key, &message);
        }
        if self.batching.max_batch_size > 65536 {
            return invalid("batching.max_batch_size", "must be at most 65536");
        }
        if self.training.concurrency == 0 {
            return invalid("training.concurrency", "must be at least 1");
        }
        if self.training.max_data_bytes == 0 {
            return invalid("training.max_data_bytes", "must be at least 1");
        }
        for (key, value) in [
            ("training.max_parameters", self.training.max_parameters),
            ("training.max_work", self.training.max_work),
            ("training.max_duration_ms", self.training.max_duration_ms),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.training.max_history < 2 {
            return invalid(
                "training.max_history",
                "must be at least 2 (the first and last epochs)",
            );
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty");
        }
        if let Err(message) = crate::telemetry::trace::check_endpoint(&self.telemetry.otlp_endpoint)
        {
            return invalid("telemetry.otlp_endpoint", &message);
        }
        if let Err((key, message)) = self.gateway.check() {
            return invalid(key, message);
        }
        Ok(())
    }
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
}

impl ModelConfig {
    /// Reads `path`; a missing file is the default configuration.
    pub fn read(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => {
                return Err(ConfigError::ModelConfig {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        };
        let config: ModelConfig = toml::from_str(&text).map_err(|e| ConfigError::ModelConfig {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if config.instances == Some(0) {
            return Err(ConfigError::ModelConfig {
                path: path.to_path_buf(),
                message: "instances must be at least 1".into(),
            });
        }
        if config.preferred_batch_sizes.contains(&0) {
            return Err(ConfigError::ModelConfig {
                path: path.to_path_buf(),
                message: "preferred_batch_sizes must be at least 1".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
