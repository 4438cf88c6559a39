//! The model versions this worker serves: [`ModelRegistry`] maps model → version →
//! [`ServedVersion`] (signature, batching limits, the inbox of its batch task), kept in step
//! with the repository by [`super::ModelSync`]; it answers readiness and `/v2/models`.

use crate::execution::generate::Generator;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::device_memory;
use super::stamp::FileStamp;
use crate::batching::{BatchLimits, Item};
use crate::execution::batch::{Chunk, ShapeKey};
use crate::execution::padding::PadPlan;
use crate::execution::text::TextIn;
use crate::protocol::text::quoted;
use crate::protocol::ModelSignature;
use crate::runtime::arena::ArenaProbe;
use crate::telemetry::ModelMetrics;

/// Why a job's model version cannot be resolved; `jobs` answers it with the contract's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// `unknown_model`.
    #[error("{0}")]
    UnknownModel(String),
    /// `unknown_version`.
    #[error("{0}")]
    UnknownVersion(String),
    /// `internal`: the registry cannot be read.
    #[error("{0}")]
    Internal(&'static str),
}

/// One loaded model version.
pub struct ServedVersion {
    pub model: Arc<str>,
    pub version: u64,
    pub label: Arc<str>,
    /// What producers send and get (with a text input: the text, not the token inputs).
    pub signature: ModelSignature,
    pub limits: BatchLimits,
    /// How jobs of different lengths are padded into one batch; `None`: they are not.
    pub pad_plan: Option<Arc<PadPlan>>,
    /// The text input tokenized into the model's token inputs; `None`: no tokenizer.
    pub text: Option<Arc<TextIn>>,
    pub instances: usize,
    pub execution_providers: Vec<&'static str>,
    /// `allowed_users` of the model's `config.toml`: who may send prediction jobs; empty: anyone.
    pub allowed_users: Vec<String>,
    /// Bytes the version is estimated to hold (memory admission), weights included.
    pub memory: u64,
    /// Batch sizes it was warmed at before serving (empty: warm-up off).
    pub warmup: Vec<usize>,
    /// Why its made-up warm-up failed; it serves all the same ([`crate::repository::warmup`]).
    pub warmup_error: Option<String>,
    /// Reads the memory arena of each of its sessions (one per device).
    pub arenas: Vec<ArenaProbe>,
    pub metrics: ModelMetrics,
    /// A decoder's generation engine: its jobs are generation jobs, never batched
    /// ([`crate::execution::generate`]); `None`: a model that answers in one pass.
    pub generator: Option<Arc<Generator>>,
    pub(super) inbox: mpsc::UnboundedSender<Item<ShapeKey, Chunk>>,
}

impl ServedVersion {
    /// Queues a chunk for batching; false when the version was unloaded (the chunk is dropped,
    /// and its job must be ended by the caller).
    pub fn send(&self, item: Item<ShapeKey, Chunk>) -> bool {
        self.inbox.send(item).is_ok()
    }
}

#[derive(Default)]
struct ModelState {
    versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// Versions that failed to load; retried once their files change (they may have been
    /// half written) or, refused for memory, once loaded versions hold less.
    failed: BTreeMap<u64, Failed>,
}

/// Why a version failed to load, its files as they were read, and (refused for memory) the
/// bytes loaded versions held then.
struct Failed {
    reason: String,
    stamp: Option<FileStamp>,
    in_use: Option<u64>,
}

/// The served models, shared by consumers, the sync task and the HTTP status.
pub struct ModelRegistry {
    models: RwLock<BTreeMap<String, ModelState>>,
    names: watch::Sender<BTreeSet<String>>,
    /// Models found in the repository at the last scan (for readiness and `/v2/models`),
    /// each with why its `config.toml` was refused, if it was.
    expected: RwLock<BTreeMap<String, Option<String>>>,
    /// Running consumers per model: a served model is ready only once it is consumed.
    consumers: Mutex<BTreeMap<String, usize>>,
    /// Set by [`ModelRegistry::clear`] at shutdown: nothing is served again afterwards.
    closed: std::sync::atomic::AtomicBool,
    /// Queues the broker refused to declare, by model (or `training`), with its reason.
    unavailable: Mutex<BTreeMap<String, String>>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        ModelRegistry {
            models: RwLock::default(),
            names: watch::channel(BTreeSet::new()).0,
            expected: RwLock::default(),
            consumers: Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            unavailable: Mutex::default(),
        }
    }
}

impl ModelRegistry {
    /// The served version for `version` (newest when `None`), or the contract's error.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedVersion>, ResolveError> {
        let models = self
            .models
            .read()
            .map_err(|_| ResolveError::Internal("model registry poisoned"))?;
        let state = models
            .get(model)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| {
                ResolveError::UnknownModel(format!(
                    "model {} is not served by this worker",
                    quoted(model)
                ))
            })?;
        let Some(v) = version.map(str::trim).filter(|v| !v.is_empty()) else {
            return state
                .versions
                .values()
                .next_back()
                .cloned()
                .ok_or(ResolveError::Internal("model has no version"));
        };
        v.parse::<u64>()
            .ok()
            .and_then(|n| state.versions.get(&n).cloned())
            .ok_or_else(|| {
                let served: Vec<String> = state.versions.keys().map(u64::to_string).collect();
                ResolveError::UnknownVersion(format!(
                    "model_version: model {} has no served version {} (served: {})",
                    quoted(model),
                    quoted(v),
                    served.join(", ")
                ))
            })
    }

    /// Names of models with at least one served version; changes wake consumers' supervisor.
    pub fn names(&self) -> watch::Receiver<BTreeSet<String>> {
        self.names.subscribe()
    }

    pub(super) fn publish_names(&self) {
        let names: BTreeSet<String> = self
            .models
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| !s.versions.is_empty())
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.names.send_if_modified(|current| {
            let changed = *current != names;
            *current = names;
            changed
        });
    }

    pub(crate) fn versions_of(&self, model: &str) -> Vec<u64> {
        self.models
            .read()
            .map(|m| {
                m.get(model)
                    .map(|s| s.versions.keys().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    pub(super) fn insert(&self, served: Arc<ServedVersion>) {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            // Loaded while the worker was stopping: dropping it ends its batch task.
            return;
        }
        if let Ok(mut models) = self.models.write() {
            let state = models.entry(served.model.to_string()).or_default();
            state.failed.remove(&served.version);
            state.versions.insert(served.version, served);
        }
    }

    pub(super) fn remove(&self, model: &str, version: u64) -> Option<Arc<ServedVersion>> {
        let mut models = self.models.write().ok()?;
        let state = models.get_mut(model)?;
        let removed = state.versions.remove(&version);
        if state.versions.is_empty() && state.failed.is_empty() {
            models.remove(model);
        }
        removed
    }

    /// Records the models found in the repository at the last scan, each with why its
    /// `config.toml` was refused, if it was.
    pub(super) fn set_expected(&self, names: BTreeMap<String, Option<String>>) {
        if let Ok(mut expected) = self.expected.write() {
            *expected = names;
        }
    }

    /// Every loaded version of a model not in `present` (the models found at the last scan).
    pub(super) fn versions_outside(&self, present: &BTreeSet<&str>) -> Vec<(String, u64)> {
        self.models
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| !present.contains(n.as_str()))
                    .flat_map(|(n, s)| s.versions.keys().map(move |v| (n.clone(), *v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn mark_failed(
        &self,
        model: &str,
        version: u64,
        reason: String,
        stamp: Option<FileStamp>,
        in_use: Option<u64>,
    ) {
        if let Ok(mut models) = self.models.write() {
            let failed = Failed {
                reason,
                stamp,
                in_use,
            };
            let state = models.entry(model.to_string()).or_default();
            state.failed.insert(version, failed);
        }
    }

    /// True when `version` failed to load and neither its files nor (refused for memory) the
    /// memory free for it changed since.
    pub(super) fn has_failed(&self, model: &str, version: u64, stamp: &Option<FileStamp>) -> bool {
        let in_use = self.memory_in_use();
        self.models
            .read()
            .map(|m| {
                m.get(model)
                    .and_then(|s| s.failed.get(&version))
                    .is_some_and(|f| f.stamp == *stamp && f.in_use.is_none_or(|u| in_use >= u))
            })
            .unwrap_or(false)
    }

    /// Every loaded version.
    pub fn served(&self) -> Vec<Arc<ServedVersion>> {
        self.models
            .read()
            .map(|m| {
                m.values()
                    .flat_map(|s| s.versions.values().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bytes every loaded version is estimated to hold.
    pub fn memory_in_use(&self) -> u64 {
        self.models
            .read()
            .map(|m| {
                m.values()
                    .flat_map(|s| s.versions.values())
                    .fold(0u64, |sum, v| sum.saturating_add(v.memory))
            })
            .unwrap_or(0)
    }

    /// Counts a consumer of `model`'s queue as running until the guard drops.
    pub fn consuming(self: &Arc<Self>, model: &str) -> ConsumingGuard {
        if let Ok(mut consumers) = self.consumers.lock() {
            *consumers.entry(model.to_string()).or_default() += 1;
        }
        ConsumingGuard {
            registry: self.clone(),
            model: model.to_string(),
        }
    }

    /// Unloads every version (shutdown): their batch tasks finish what they hold and stop.
    pub fn clear(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(mut models) = self.models.write() {
            models.clear();
        }
        self.publish_names();
    }

    /// Records that `queue_of`'s queue (a model, or `training`) cannot be declared, with the
    /// broker's reason; `None` clears it once declared.
    pub fn set_unavailable(&self, queue_of: &str, reason: Option<&str>) {
        if let Ok(mut unavailable) = self.unavailable.lock() {
            match reason {
                Some(reason) => unavailable.insert(queue_of.to_string(), reason.to_string()),
                None => unavailable.remove(queue_of),
            };
        }
    }

    /// Whether the worker is ready: every model found in the repository is served or was
    /// refused, every served model's queue is consumed (so a job published now is routed and
    /// read), and no queue is refused by the broker. Ready, it gives the refused models with
    /// their reasons, if any; `strict` (Triton's strict readiness): a refused model makes the
    /// worker unready too.
    pub fn readiness(&self, strict: bool) -> Result<Option<String>, String> {
        if let Some(refused) = self.unavailable.lock().ok().filter(|u| !u.is_empty()) {
            let list: Vec<String> = refused.iter().map(|(m, r)| format!("{m} ({r})")).collect();
            return Err(format!("queues the broker refused: {}", list.join("; ")));
        }
        let expected = self
            .expected
            .read()
            .map_err(|_| "model registry poisoned".to_string())?
            .clone();
        // Models without a served version: still loading, or refused (their config.toml, or
        // every version they have).
        let mut loading = Vec::new();
        let mut refused = Vec::new();
        for (model, config_error) in expected {
            if !self.versions_of(&model).is_empty() {
                continue;
            }
            match config_error.or_else(|| self.with_failures(&model)) {
                Some(reasons) => refused.push(format!("{model} ({reasons})")),
                None => loading.push(model),
            }
        }
        if !loading.is_empty() || (strict && !refused.is_empty()) {
            loading.extend(refused);
            return Err(format!("models not loaded: {}", loading.join(", ")));
        }
        let consumers = self
            .consumers
            .lock()
            .map_err(|_| "model registry poisoned".to_string())?;
        let idle: Vec<String> = self
            .names
            .borrow()
            .iter()
            .filter(|m| consumers.get(*m).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        if !idle.is_empty() {
            return Err(format!("models not consumed yet: {}", idle.join(", ")));
        }
        Ok((!refused.is_empty()).then(|| format!("refused: {}", refused.join(", "))))
    }

    /// Why the versions of `model` were refused, if any were.
    fn with_failures(&self, model: &str) -> Option<String> {
        let models = self.models.read().ok()?;
        let state = models.get(model).filter(|s| !s.failed.is_empty())?;
        let reasons: Vec<String> = state
            .failed
            .iter()
            .map(|(v, f)| format!("version {v}: {}", f.reason))
            .collect();
        Some(reasons.join("; "))
    }

    /// The `/v2/models` document: every model with its versions, and each model whose
    /// `config.toml` was refused with `config_error` (with no version when it never loaded).
    pub fn status_json(&self) -> serde_json::Value {
        let Ok(models) = self.models.read() else {
            return json!([]);
        };
        let config_errors: BTreeMap<String, String> = self
            .expected
            .read()
            .map(|e| {
                e.iter()
                    .filter_map(|(m, error)| Some((m.clone(), error.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let unloaded = config_errors
            .keys()
            .filter(|m| !models.contains_key(*m))
            .map(|m| json!({"name": m, "versions": [], "config_error": config_errors[m]}));
        let mut list: Vec<serde_json::Value> = models
            .iter()
            .map(|(name, state)| {
                let versions: Vec<serde_json::Value> = state
                    .versions
                    .values()
                    .map(|v| {
                        let mut version = json!({
                            "version": v.label.as_ref(),
                            "state": "READY",
                            "inputs": v.signature.inputs,
                            "outputs": v.signature.outputs,
                            "max_batch_size": v.limits.max_batch_size,
                            "max_queue_delay_ms": v.limits.max_queue_delay.as_millis() as u64,
                            "preferred_batch_sizes": v.limits.preferred_batch_sizes,
                            "instances": v.instances,
                            "execution_providers": v.execution_providers,
                            "memory_bytes": v.memory,
                            "warmup_batch_sizes": v.warmup,
                            "warmup_error": v.warmup_error,
                            "device_memory": device_memory::device_memory_json(v),
                        });
                        if let Some(generator) = &v.generator {
                            version["generate"] = generator.describe();
                        }
                        version
                    })
                    .chain(state.failed.iter().map(|(version, f)| json!({"version": version.to_string(), "state": "FAILED", "reason": f.reason})))
                    .collect();
                match config_errors.get(name) {
                    Some(error) => json!({"name": name, "versions": versions, "config_error": error}),
                    None => json!({"name": name, "versions": versions}),
                }
            })
            .collect();
        list.extend(unloaded);
        list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!(list)
    }
}

/// Marks a consumer stopped when dropped (see [`ModelRegistry::consuming`]).
pub struct ConsumingGuard {
    registry: Arc<ModelRegistry>,
    model: String,
}

impl Drop for ConsumingGuard {
    fn drop(&mut self) {
        if let Ok(mut consumers) = self.registry.consumers.lock() {
            if let Some(n) = consumers.get_mut(&self.model) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    consumers.remove(&self.model);
                }
            }
        }
    }
}
