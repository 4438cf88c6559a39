//! [`ModelSync`]: scans the repository and loads new versions (all their instances) before
//! unloading the versions they replace, so serving never pauses; refuses a broken version with an
//! error log and a metric while the old one keeps serving, and retries it once its file changes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::stamp::{version_stamp, FileStamp};
use super::{version_inputs, ModelRegistry, ServedVersion};
use crate::batching::{batch_task, BatchLimits, FailBatch, MakeTask, PadLimits};
use crate::config::BatchingSettings;
use crate::execution::batch::{run_batch, BatchFailure, BatchInfo, Chunk, ShapeKey};
use crate::protocol::ModelSignature;
use crate::repository::external::check_version;
use crate::repository::{ModelEntry, ModelStore};
use crate::runtime::arena::ArenaProbe;
use crate::runtime::memory::MemoryLimit;
use crate::runtime::version::instance_devices;
use crate::runtime::{
    affinity, first_of_its_session, load_version, Backend, InstancePool, RuntimeError,
    SessionOptions,
};

use super::decoder::{find_decoder, DecoderSpec};
use super::prepare::{self, Refusal};
use crate::execution::generate::Generator;
use crate::protocol::{DataType, TensorSpec};
use crate::telemetry::Metrics;

/// Makes the backends that run a model version: ONNX Runtime sessions in the worker
/// ([`OrtLoader`]), a fake in tests that run the whole worker without ONNX Runtime.
pub trait BackendLoader: Send + Sync + 'static {
    /// `instances` backends for the ONNX model file `model`, each with the model's signature.
    fn load(
        &self,
        model: &Path,
        options: &SessionOptions,
        instances: usize,
    ) -> Result<Vec<Box<dyn Backend>>, RuntimeError>;
}

/// Loads versions into ONNX Runtime sessions, on threads pinned like the instances will be.
/// [`ModelSync`] calls it only once the version's files were checked (its external data stays
/// inside the version directory: `check_version`), so each load checks them once.
pub struct OrtLoader;

impl BackendLoader for OrtLoader {
    fn load(
        &self,
        model: &Path,
        options: &SessionOptions,
        instances: usize,
    ) -> Result<Vec<Box<dyn Backend>>, RuntimeError> {
        // Threads ONNX Runtime starts with a session inherit the loader's CPUs.
        let backends = affinity::with_pinned(&options.cpus, || {
            load_version(model, options, &options.cuda, instances)
        })?;
        Ok(backends
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .collect())
    }
}

/// Loads and unloads versions to match the repository.
pub struct ModelSync {
    pub store: ModelStore,
    pub registry: Arc<ModelRegistry>,
    pub options: SessionOptions,
    pub defaults: BatchingSettings,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
    pub loader: Arc<dyn BackendLoader>,
    /// What versions may use together ([`crate::runtime::memory`]); `None`: no admission.
    pub memory: Option<MemoryLimit>,
}

/// A version made and warmed, not serving yet.
struct Loaded {
    backends: Vec<Box<dyn Backend>>,
    options: SessionOptions,
    signature: ModelSignature,
    limits: BatchLimits,
    /// Resident estimate ([`crate::serving::admission::VersionNeed::resident`]).
    memory: u64,
    /// Batch sizes warmed (empty: warm-up off).
    warmup: Vec<usize>,
    /// Why a made-up warm-up failed (the version serves all the same).
    warmup_error: Option<String>,
    /// The decoder found in the version's files: it is served for generation.
    decoder: Option<DecoderSpec>,
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
        // A model whose config.toml was refused is expected, and keeps serving what it had.
        let present: BTreeSet<&str> = entries
            .iter()
            .map(|e| e.name.as_str())
            .chain(broken.iter().map(|(n, _)| n.as_str()))
            .collect();
        let expected = entries
            .iter()
            .map(|e| (e.name.to_string(), None))
            .chain(broken.iter().map(|(n, e)| (n.clone(), Some(e.to_string()))))
            .collect();
        self.registry.set_expected(expected);
        for entry in &entries {
            self.sync_model(entry).await;
        }
        for (name, version) in self.registry.versions_outside(&present) {
            self.unload(&name, version);
        }
        self.registry.publish_names();
    }

    /// Loads the served versions of `entry` not loaded yet, then unloads the others.
    async fn sync_model(&self, entry: &ModelEntry) {
        for &version in entry.served.iter().rev() {
            if self.registry.versions_of(&entry.name).contains(&version) {
                continue;
            }
            // Taken before reading, so a version whose files (model and external data) were
            // still being written is retried once one of them changes.
            let stamp = version_stamp(&self.store.model_path(&entry.name, version));
            if self.registry.has_failed(&entry.name, version, &stamp) {
                continue;
            }
            self.load(entry, version, stamp).await;
        }
        // Unload only once a replacement serves, so the model never goes dark. Only versions
        // outside `served` are unloaded, so whether one of `served` is loaded cannot change.
        let loaded = self.registry.versions_of(&entry.name);
        if entry.served.iter().any(|v| loaded.contains(v)) {
            for version in loaded.into_iter().filter(|v| !entry.served.contains(v)) {
                self.unload(&entry.name, version);
            }
        }
    }

    /// Loads one version (admission, its instances, warm-up, batch task) and serves it; a
    /// version that cannot be loaded is refused with the reason.
    async fn load(&self, entry: &ModelEntry, version: u64, stamp: Option<FileStamp>) {
        let started = Instant::now();
        let name = entry.name.as_str();
        let served = match self.prepare(entry, version).await {
            Ok(loaded) => self.serve(entry, version, loaded).map_err(Refusal::from),
            Err(refusal) => Err(refusal),
        };
        let served = match served {
            Ok(served) => served,
            Err(refusal) => return self.refuse(name, version, started, stamp, refusal),
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.model_load(name, &served.label, seconds, true);
        self.metrics.set_model_loaded(name, &served.label, true);
        let instances = served.instances;
        let inline = entry.config.inline;
        let max_batch_size = served.limits.max_batch_size;
        let memory = served.memory;
        tracing::info!(model = %name, version, instances, inline, max_batch_size, memory, warmup = ?served.warmup, load_ms = (seconds * 1e3) as u64, providers = ?served.execution_providers, "Model version loaded");
        self.registry.insert(served);
    }

    /// Checks a version's files and that it fits, makes its instances' backends (off the
    /// runtime), checks again with its batch size known, and warms it up.
    async fn prepare(&self, entry: &ModelEntry, version: u64) -> Result<Loaded, Refusal> {
        let model = self.store.model_path(&entry.name, version);
        let instances = entry.config.instances.unwrap_or(1);
        let options = prepare::model_options(&self.options, &entry.config);
        let devices = instance_devices(&options, &options.cuda, instances);
        let sessions = devices.iter().collect::<BTreeSet<_>>().len();
        let name = entry.name.to_string();
        let limit = self.memory.clone();
        let in_use = self.registry.memory_in_use();
        let loader = self.loader.clone();
        let loaded = tokio::task::spawn_blocking({
            let options = options.clone();
            move || {
                let files = check_version(&model)?;
                let need = prepare::need(&files, sessions, instances, None);
                prepare::check_fits(&name, &need, limit.as_ref(), in_use)?;
                let backends = loader.load(&model, &options, instances);
                Ok::<_, Refusal>((files, backends.map_err(|e| e.to_string())?))
            }
        })
        .await;
        let (files, backends) = loaded.map_err(|e| e.to_string())??;
        if backends.is_empty() {
            return Err("no instance could be made".to_string().into());
        }
        let signature = backends[0].signature().clone();
        let version_dir = self.store.model_path(&entry.name, version);
        let version_dir = version_dir.parent().unwrap_or(Path::new("."));
        let decoder = find_decoder(version_dir, entry.config.generate.as_ref(), &signature)
            .map_err(|reason| Refusal {
                reason,
                in_use: None,
                kind: "decoder",
            })?;
        let limits = self.limits(entry, version, &signature);
        let need = prepare::need(&files, sessions, instances, Some((&signature, &limits)));
        let need = match &decoder {
            Some(spec) => need.with_kv_cache(spec.kv_bytes_admitted()),
            None => need,
        };
        prepare::check_fits(&entry.name, &need, self.memory.as_ref(), in_use)?;
        if let Some(decoder) = decoder {
            // A decoder's check is its engine's first run (a one-token prompt), at start.
            return Ok(Loaded {
                backends,
                options,
                signature,
                limits,
                memory: need.resident(),
                warmup: Vec::new(),
                warmup_error: None,
                decoder: Some(decoder),
            });
        }
        let names = backends[0].dim_names().cloned();
        let plan = prepare::warmup_plan(&entry.config, &limits, &signature, names.as_ref());
        let warmup = plan
            .as_ref()
            .map(prepare::WarmupPlan::rows)
            .unwrap_or_default();
        let described = entry.config.warmup.is_described();
        let warmed = tokio::task::spawn_blocking(move || {
            let mut backends = backends;
            let outcome = plan.and_then(|plan| prepare::warm_up(&mut backends, &plan));
            (backends, outcome)
        })
        .await;
        let (backends, outcome) = warmed.map_err(|e| e.to_string())?;
        // A warm-up the operator described must run: its failure refuses the version. One that
        // infermq made up may fail on a model every real job runs on (a minimum length, a value
        // that matters), so the version serves and the failure is reported.
        let warmup_error = match outcome {
            Ok(()) => None,
            Err(reason) if described => {
                return Err(Refusal {
                    reason,
                    in_use: None,
                    kind: "warmup",
                })
            }
            Err(reason) => {
                tracing::warn!(model = %entry.name, version, error = %reason, "Made-up warm-up failed; the version serves (a [[warmup]] table in config.toml describes inputs that work)");
                self.metrics
                    .warmup_failure(&entry.name, &version.to_string());
                Some(reason)
            }
        };
        Ok(Loaded {
            backends,
            options,
            signature,
            limits,
            memory: need.resident(),
            warmup,
            warmup_error,
            decoder: None,
        })
    }

    /// The batch limits of a version with `signature`: the model's, or the defaults; a model
    /// that cannot be batched runs one job at a time.
    fn limits(&self, entry: &ModelEntry, version: u64, signature: &ModelSignature) -> BatchLimits {
        let config = &entry.config;
        let batchable = signature
            .inputs
            .iter()
            .chain(&signature.outputs)
            .all(|s| s.is_batched());
        let configured = config
            .max_batch_size
            .unwrap_or(self.defaults.max_batch_size);
        if configured > 0 && !batchable && config.max_batch_size.is_some() {
            tracing::warn!(model = %entry.name, version, "max_batch_size ignored: not every input and output has a dynamic first dimension; running one job at a time");
        }
        let max_batch_size = if batchable { configured } else { 0 };
        let delay = config
            .max_queue_delay_ms
            .unwrap_or(self.defaults.max_queue_delay_ms);
        let delay = Duration::from_millis(delay);
        let padding = PadLimits::new(&config.length_buckets, config.max_batch_elements);
        BatchLimits::new(max_batch_size, delay, &config.preferred_batch_sizes).with_padding(padding)
    }

    /// Starts the instance pool and the batch task of a loaded version.
    fn serve(
        &self,
        entry: &ModelEntry,
        version: u64,
        loaded: Loaded,
    ) -> Result<Arc<ServedVersion>, String> {
        let name = entry.name.as_str();
        let Loaded {
            backends,
            options,
            signature,
            limits,
            memory,
            warmup,
            warmup_error,
            decoder,
        } = loaded;
        let model_path = self.store.model_path(name, version);
        if let Some(spec) = decoder {
            let served = self.serve_decoder(entry, version, backends, spec, &options, memory)?;
            return Ok(served);
        }
        let names = backends.first().and_then(|b| b.dim_names().cloned());
        let mut sessions = BTreeSet::new();
        let arenas: Vec<ArenaProbe> = backends
            .iter()
            .filter(|b| first_of_its_session(b.as_ref(), &mut sessions))
            .filter_map(|b| b.arena())
            .collect();
        let inputs = version_inputs(&entry.config, &model_path, &signature, names.as_ref())?;
        let label: Arc<str> = Arc::from(version.to_string());
        let metrics = self.metrics.model(name, &label);
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let panics = (self.metrics.clone(), name.to_string(), version.to_string());
        let on_panic: crate::runtime::instances::PanicHook =
            Arc::new(move |_, _: &str| panics.0.supervision.instance_restart(&panics.1, &panics.2));
        let pool = if entry.config.inline {
            InstancePool::inline(name, backends, idle_tx, on_panic)
        } else {
            InstancePool::start_with(name, backends, &options.cpus, idle_tx, on_panic)
                .map_err(|error| error.to_string())?
        };
        let served = Arc::new(ServedVersion {
            model: Arc::from(name),
            version,
            label,
            signature: inputs.signature,
            limits: limits.clone(),
            pad_plan: inputs.pad_plan.clone(),
            text: inputs.text,
            instances: entry.config.instances.unwrap_or(1),
            execution_providers: options.effective(),
            allowed_users: entry.config.allowed_users.clone(),
            memory,
            warmup,
            warmup_error,
            arenas,
            metrics,
            generator: None,
            inbox,
        });
        // The batch task does not hold the inbox: unloading (dropping the registry's handle)
        // closes it, and the task runs what it already holds, then stops.
        let info = Arc::new(BatchInfo {
            model: served.model.clone(),
            label: served.label.clone(),
            metrics: served.metrics.clone(),
            pad_plan: inputs.pad_plan,
        });
        let make_task: MakeTask<ShapeKey, Chunk> = Arc::new(move |batch| {
            let info = info.clone();
            Box::new(move |backend: &mut dyn Backend| run_batch(backend, &info, batch))
        });
        // A batch whose run panics fails each of its jobs as `internal`.
        let fail: FailBatch<ShapeKey, Chunk> = Arc::new(|item| {
            let job = item.payload.job.clone();
            Box::new(move |message: &str| job.fail(BatchFailure::Internal(message.to_string())))
        });
        self.tracker
            .spawn(batch_task(limits, inbox_rx, pool, idle_rx, make_task, fail));
        Ok(served)
    }

    /// Starts the generation engine of a decoder version on its first backend (a decoder runs
    /// one engine; its rows are its parallelism).
    fn serve_decoder(
        &self,
        entry: &ModelEntry,
        version: u64,
        backends: Vec<Box<dyn Backend>>,
        spec: DecoderSpec,
        options: &SessionOptions,
        memory: u64,
    ) -> Result<Arc<ServedVersion>, String> {
        let name = entry.name.as_str();
        if entry.config.instances.is_some_and(|n| n > 1) {
            tracing::warn!(model = %name, version, "instances ignored: a decoder runs one generation engine, which batches its jobs");
        }
        let model_path = self.store.model_path(name, version);
        let tokenizer_path = model_path.with_file_name("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| format!("decoder needs {}: {e}", tokenizer_path.display()))?;
        let label: Arc<str> = Arc::from(version.to_string());
        let metrics = self.metrics.model(name, &label);
        let backend = backends
            .into_iter()
            .next()
            .ok_or("no instance could be made")?;
        let generator = Generator::start(
            name,
            Arc::new(spec),
            Arc::new(tokenizer),
            backend,
            self.metrics.generation.version(name, &label),
        )?;
        // Nothing is batched: the inbox's receiver is dropped, so a chunk sent is refused.
        let (inbox, _) = mpsc::unbounded_channel();
        Ok(Arc::new(ServedVersion {
            model: Arc::from(name),
            version,
            label,
            signature: generation_signature(),
            limits: BatchLimits::new(0, Duration::ZERO, &[]),
            pad_plan: None,
            text: None,
            instances: 1,
            execution_providers: options.effective(),
            allowed_users: entry.config.allowed_users.clone(),
            memory,
            warmup: Vec::new(),
            warmup_error: None,
            arenas: Vec::new(),
            metrics,
            generator: Some(Arc::new(generator)),
            inbox,
        }))
    }

    fn refuse(
        &self,
        name: &str,
        version: u64,
        started: Instant,
        stamp: Option<FileStamp>,
        refusal: Refusal,
    ) {
        let reason = refusal.reason;
        let kind = refusal.kind;
        tracing::error!(model = %name, version, kind, error = %reason, "Model version refused; older versions keep serving");
        self.metrics.model_load(
            name,
            &version.to_string(),
            started.elapsed().as_secs_f64(),
            false,
        );
        self.registry
            .mark_failed(name, version, reason, stamp, refusal.in_use);
    }

    fn unload(&self, name: &str, version: u64) {
        if self.registry.remove(name, version).is_some() {
            // Its series go with it, so retired versions do not accumulate.
            self.metrics
                .remove_model_version(name, &version.to_string());
            tracing::info!(model = %name, version, "Model version unloaded");
        }
    }
}

/// What a decoder version shows producers: Triton's generate extension, a prompt in and text
/// out (the model's own inputs are the engine's business).
fn generation_signature() -> ModelSignature {
    let text = |name: &str| TensorSpec {
        name: name.into(),
        datatype: DataType::Bytes,
        shape: vec![1],
    };
    ModelSignature {
        inputs: vec![text("text_input")],
        outputs: vec![text("text_output")],
    }
}
