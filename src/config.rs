//! Configuration: built-in defaults → `config/default.toml` → `--config FILE` → environment
//! `INFERMQ__SECTION__KEY`, validated once at start into typed sections that are passed to
//! constructors. Unknown keys and invalid values stop the start with a message naming the key.
//!
//! Only the process's own settings live here; the per-model `config.toml` of the model
//! repository is [`crate::repository::ModelConfig`]. The types of settings that belong to another
//! module (execution providers, log format, broker addresses) are defined there and used here,
//! never re-exported, so dependencies run one way: `config` → its users' types.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The defaults, compiled in so a binary started anywhere behaves the same.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

use crate::broker::addresses::redact_url;
use crate::runtime::ExecutionProvider;
use crate::telemetry::LogFormat;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
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
    /// A refused model makes `/readyz` answer 503 (Triton's strict readiness); off, a refused
    /// model is named under `ready` and the others serve.
    pub strict_readiness: bool,
    /// Distinct tenant names (the `x-infermq-tenant` header) given a label of their own in the
    /// per-tenant counters; later names count as `other`.
    pub max_tenants: usize,
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
    /// Jobs of gathered requests in flight per model (and shape) before new requests wait to
    /// go together; 0: no gathering (every request is its own job).
    pub gather_window: usize,
    /// How long a request that could go at once is held for others to join it; 0: never.
    pub gather_delay_us: u64,
    /// The API keys (TOML, `[[key]]` entries, see `docs/GATEWAY.md`); empty: no keys, every
    /// request is anonymous.
    pub api_keys_file: PathBuf,
    /// Without `api_keys_file`, serve on an address other than loopback all the same.
    pub allow_anonymous: bool,
    /// How often `api_keys_file` and the TLS files are checked for changes (SIGHUP: at once).
    pub reload_poll_ms: u64,
    /// Failed key checks from one client address within a minute before it is answered 429.
    pub auth_failures_per_minute: u32,
    /// A header that names the client's address (the rightmost one is taken), set by a proxy in
    /// front; empty: the TCP peer's address.
    pub client_address_header: String,
    /// The usage log (JSONL, one line per request); empty: none.
    pub usage_log: PathBuf,
    /// Size at which the usage log is rotated (renamed `.1`, older ones shifted).
    pub usage_log_max_bytes: u64,
    /// Rotated usage logs kept beside the current one.
    pub usage_log_files: usize,
    pub tls: GatewayTlsSettings,
}

/// HTTPS for the gateway: a certificate chain and its private key, PEM files reloaded when
/// they change; both empty: plain HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl GatewayTlsSettings {
    /// True when the gateway serves HTTPS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

impl GatewaySettings {
    /// The keys file, `None` when no keys are set (every request anonymous).
    pub fn api_keys_file(&self) -> Option<&Path> {
        (!self.api_keys_file.as_os_str().is_empty()).then_some(self.api_keys_file.as_path())
    }

    /// The usage log, `None` when none is written.
    pub fn usage_log(&self) -> Option<&Path> {
        (!self.usage_log.as_os_str().is_empty()).then_some(self.usage_log.as_path())
    }
}

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
}

mod check;
#[cfg(test)]
mod tests;
