//! The model versions this worker serves, kept in step with the repository.
//!
//! [`ModelRegistry`] maps model → version → [`ServedVersion`] (signature, batching limits, the
//! inbox of its batch task). [`ModelSync`] scans the repository, loads new versions (all their
//! instances) before unloading the versions they replace, so serving never pauses, and refuses a
//! broken version with an error log and a metric while the old one keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use super::job::Answerer;
use super::predict::{run_batch, BatchInfo, Chunk, ShapeKey};
use crate::batching::{batch_task, BatchLimits, Item, MakeTask};
use crate::config::{BatchingSettings, ExecutionProvider};
use crate::protocol::{ErrorCode, ModelSignature};
use crate::repository::{ModelEntry, ModelStore};
use crate::runtime::{Backend, InstancePool, OrtBackend, SessionOptions};
use crate::telemetry::{Metrics, ModelMetrics};

/// One loaded model version.
pub struct ServedVersion {
    pub model: Arc<str>,
    pub version: u64,
    pub label: Arc<str>,
    pub signature: ModelSignature,
    pub limits: BatchLimits,
    pub instances: usize,
    pub execution_providers: Vec<&'static str>,
    pub metrics: ModelMetrics,
    inbox: mpsc::UnboundedSender<Item<ShapeKey, Chunk>>,
}

impl ServedVersion {
    /// Queues a chunk for batching; gives it back if the version was unloaded.
    pub fn send(&self, item: Item<ShapeKey, Chunk>) -> Result<(), Item<ShapeKey, Chunk>> {
        self.inbox.send(item).map_err(|e| e.0)
    }
}

#[derive(Default)]
struct ModelState {
    versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// Versions that failed to load, with the reason and the file as it was read; retried
    /// once the file's size or modification time changes (it may have been half written).
    failed: BTreeMap<u64, (String, Option<FileStamp>)>,
}

/// A model file's size and modification time.
type FileStamp = (u64, Option<SystemTime>);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// The served models, shared by consumers, the sync task and the HTTP status.
pub struct ModelRegistry {
    models: RwLock<BTreeMap<String, ModelState>>,
    names: watch::Sender<BTreeSet<String>>,
    /// Models found in the repository at the last scan (for readiness).
    expected: RwLock<BTreeSet<String>>,
    /// Running consumers per model: a served model is ready only once it is consumed.
    consumers: Mutex<BTreeMap<String, usize>>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        ModelRegistry {
            models: RwLock::default(),
            names: watch::channel(BTreeSet::new()).0,
            expected: RwLock::default(),
            consumers: Mutex::default(),
        }
    }
}

impl ModelRegistry {
    /// The served version for `version` (newest when `None`), or the contract's error.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedVersion>, (ErrorCode, String)> {
        let models = self
            .models
            .read()
            .map_err(|_| (ErrorCode::Internal, "model registry poisoned".to_string()))?;
        let state = models
            .get(model)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownModel,
                    format!("model {model:?} is not served by this worker"),
                )
            })?;
        let served = || {
            state
                .versions
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match version.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(state.versions.values().next_back().cloned().expect("non-empty")),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|n| state.versions.get(&n).cloned())
                .ok_or_else(|| (ErrorCode::UnknownVersion, format!("model_version: model {model:?} has no served version {v:?} (served: {})", served()))),
        }
    }

    /// Names of models with at least one served version; changes wake consumers' supervisor.
    pub fn names(&self) -> watch::Receiver<BTreeSet<String>> {
        self.names.subscribe()
    }

    fn publish_names(&self) {
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

    fn versions_of(&self, model: &str) -> Vec<u64> {
        self.models
            .read()
            .map(|m| {
                m.get(model)
                    .map(|s| s.versions.keys().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    fn insert(&self, served: Arc<ServedVersion>) {
        if let Ok(mut models) = self.models.write() {
            let state = models.entry(served.model.to_string()).or_default();
            state.failed.remove(&served.version);
            state.versions.insert(served.version, served);
        }
    }

    fn remove(&self, model: &str, version: u64) -> Option<Arc<ServedVersion>> {
        let mut models = self.models.write().ok()?;
        let state = models.get_mut(model)?;
        let removed = state.versions.remove(&version);
        if state.versions.is_empty() && state.failed.is_empty() {
            models.remove(model);
        }
        removed
    }

    fn mark_failed(&self, model: &str, version: u64, reason: String, stamp: Option<FileStamp>) {
        if let Ok(mut models) = self.models.write() {
            models
                .entry(model.to_string())
                .or_default()
                .failed
                .insert(version, (reason, stamp));
        }
    }

    /// True when `version` failed to load and its file has not changed since.
    fn has_failed(&self, model: &str, version: u64, stamp: Option<FileStamp>) -> bool {
        self.models
            .read()
            .map(|m| {
                m.get(model)
                    .and_then(|s| s.failed.get(&version))
                    .is_some_and(|(_, failed)| *failed == stamp)
            })
            .unwrap_or(false)
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
        if let Ok(mut models) = self.models.write() {
            models.clear();
        }
        self.publish_names();
    }

    /// `None` when every model found in the repository has a served version, and every served
    /// model's queue is consumed (so a job published now is routed and read).
    pub fn not_ready_reason(&self) -> Option<String> {
        let expected = self.expected.read().ok()?.clone();
        let missing: Vec<String> = expected
            .into_iter()
            .filter(|m| self.versions_of(m).is_empty())
            .collect();
        if !missing.is_empty() {
            return Some(format!("models not loaded: {}", missing.join(", ")));
        }
        let consumers = self.consumers.lock().ok()?;
        let idle: Vec<String> = self
            .names
            .borrow()
            .iter()
            .filter(|m| consumers.get(*m).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        (!idle.is_empty()).then(|| format!("models not consumed yet: {}", idle.join(", ")))
    }

    /// The `/v2/models` document.
    pub fn status_json(&self) -> serde_json::Value {
        let Ok(models) = self.models.read() else {
            return json!([]);
        };
        let list: Vec<serde_json::Value> = models
            .iter()
            .map(|(name, state)| {
                let versions: Vec<serde_json::Value> = state
                    .versions
                    .values()
                    .map(|v| {
                        json!({
                            "version": v.label.as_ref(),
                            "state": "READY",
                            "inputs": v.signature.inputs,
                            "outputs": v.signature.outputs,
                            "max_batch_size": v.limits.max_batch_size,
                            "max_queue_delay_ms": v.limits.max_queue_delay.as_millis() as u64,
                            "preferred_batch_sizes": v.limits.preferred_batch_sizes,
                            "instances": v.instances,
                            "execution_providers": v.execution_providers,
                        })
                    })
                    .chain(state.failed.iter().map(|(version, (reason, _))| json!({"version": version.to_string(), "state": "FAILED", "reason": reason})))
                    .collect();
                json!({"name": name, "versions": versions})
            })
            .collect();
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

/// Loads and unloads versions to match the repository.
pub struct ModelSync {
    pub store: ModelStore,
    pub registry: Arc<ModelRegistry>,
    pub options: SessionOptions,
    pub defaults: BatchingSettings,
    pub metrics: Arc<Metrics>,
    pub answerer: Arc<Answerer>,
    pub tracker: TaskTracker,
}

impl ModelSync {
    /// One pass: scan, load what is new, then unload what is no longer served.
    pub async fn sync(&self) {
        let (entries, broken) = match self.store.scan() {
            Ok(scan) => scan,
            Err(error) => {
                tracing::error!(%error, "Model repository scan failed");
                return;
            }
        };
        for (name, error) in &broken {
            tracing::error!(model = %name, %error, "Model configuration refused");
        }
        if let Ok(mut expected) = self.registry.expected.write() {
            *expected = entries
                .iter()
                .map(|e| e.name.clone())
                .chain(broken.iter().map(|(n, _)| n.clone()))
                .collect();
        }
        for entry in &entries {
            for &version in entry.served.iter().rev() {
                // Taken before reading, so a file still being written is retried once it changes.
                let stamp = file_stamp(&self.store.model_path(&entry.name, version));
                if self.registry.versions_of(&entry.name).contains(&version)
                    || self.registry.has_failed(&entry.name, version, stamp)
                {
                    continue;
                }
                self.load(entry, version, stamp).await;
            }
            // Unload only once a replacement serves, so the model never goes dark.
            for version in self.registry.versions_of(&entry.name) {
                let keep = entry.served.contains(&version)
                    || !entry
                        .served
                        .iter()
                        .any(|v| self.registry.versions_of(&entry.name).contains(v));
                if !keep {
                    self.unload(&entry.name, version);
                }
            }
        }
        let present: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let gone: Vec<(String, u64)> = self
            .registry
            .models
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| !present.contains(n.as_str()))
                    .flat_map(|(n, s)| s.versions.keys().map(move |v| (n.clone(), *v)))
                    .collect()
            })
            .unwrap_or_default();
        for (name, version) in gone {
            self.unload(&name, version);
        }
        self.registry.publish_names();
    }

    async fn load(&self, entry: &ModelEntry, version: u64, stamp: Option<FileStamp>) {
        let started = Instant::now();
        let name = entry.name.clone();
        let bytes = match self.store.read_version(&name, version) {
            Ok(bytes) => bytes,
            Err(error) => return self.refuse(&name, version, started, stamp, error.to_string()),
        };
        let instances = entry.config.instances.unwrap_or(1);
        let mut options = self.options.clone();
        if let Some(providers) = &entry.config.execution_providers {
            options.execution_providers = providers.clone();
            options.require_gpu &= providers.contains(&ExecutionProvider::Cuda);
        }
        let loaded = tokio::task::spawn_blocking({
            let options = options.clone();
            move || {
                (0..instances)
                    .map(|_| OrtBackend::load(&bytes, &options))
                    .collect::<Result<Vec<_>, _>>()
            }
        })
        .await;
        let backends = match loaded {
            Ok(Ok(backends)) => backends,
            Ok(Err(error)) => {
                return self.refuse(&name, version, started, stamp, error.to_string())
            }
            Err(error) => return self.refuse(&name, version, started, stamp, error.to_string()),
        };
        let signature = backends[0].signature().clone();
        let batchable = signature
            .inputs
            .iter()
            .chain(&signature.outputs)
            .all(|s| s.is_batched());
        let configured = entry
            .config
            .max_batch_size
            .unwrap_or(self.defaults.max_batch_size);
        if configured > 0 && !batchable && entry.config.max_batch_size.is_some() {
            tracing::warn!(model = %name, version, "max_batch_size ignored: not every input and output has a dynamic first dimension; running one job at a time");
        }
        let max_batch_size = if batchable { configured } else { 0 };
        let delay = Duration::from_millis(
            entry
                .config
                .max_queue_delay_ms
                .unwrap_or(self.defaults.max_queue_delay_ms),
        );
        let limits = BatchLimits::new(max_batch_size, delay, &entry.config.preferred_batch_sizes);
        let label: Arc<str> = Arc::from(version.to_string());
        let metrics = self.metrics.model(&name, &label);
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let boxed: Vec<Box<dyn Backend>> = backends
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .collect();
        let pool = match InstancePool::start(&name, boxed, idle_tx) {
            Ok(pool) => pool,
            Err(error) => return self.refuse(&name, version, started, stamp, error.to_string()),
        };
        let served = Arc::new(ServedVersion {
            model: Arc::from(name.as_str()),
            version,
            label,
            signature,
            limits: limits.clone(),
            instances,
            execution_providers: options.effective(),
            metrics,
            inbox,
        });
        // The batch task does not hold the inbox: unloading (dropping the registry's handle)
        // closes it, and the task runs what it already holds, then stops.
        let info = Arc::new(BatchInfo {
            model: served.model.clone(),
            label: served.label.clone(),
            metrics: served.metrics.clone(),
        });
        let make_task: MakeTask<ShapeKey, Chunk> = Arc::new(move |batch| {
            let info = info.clone();
            Box::new(move |backend: &mut dyn Backend| run_batch(backend, &info, batch))
        });
        self.tracker
            .spawn(batch_task(limits, inbox_rx, pool, idle_rx, make_task));
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.model_load(&name, &served.label, seconds, true);
        self.metrics.set_model_loaded(&name, &served.label, true);
        tracing::info!(model = %name, version, instances, max_batch_size, load_ms = (seconds * 1e3) as u64, providers = ?served.execution_providers, "Model version loaded");
        self.registry.insert(served);
    }

    fn refuse(
        &self,
        name: &str,
        version: u64,
        started: Instant,
        stamp: Option<FileStamp>,
        reason: String,
    ) {
        tracing::error!(model = %name, version, error = %reason, "Model version refused; older versions keep serving");
        self.metrics.model_load(
            name,
            &version.to_string(),
            started.elapsed().as_secs_f64(),
            false,
        );
        self.registry.mark_failed(name, version, reason, stamp);
    }

    fn unload(&self, name: &str, version: u64) {
        if self.registry.remove(name, version).is_some() {
            self.metrics
                .set_model_loaded(name, &version.to_string(), false);
            tracing::info!(model = %name, version, "Model version unloaded");
        }
    }
}
