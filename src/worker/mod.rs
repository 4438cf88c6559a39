//! The worker: wires configuration, ONNX Runtime, the model repository, RabbitMQ, batching,
//! telemetry and shutdown together.
//!
//! # Delivery guarantees and shutdown
//! A job is acked only after its answer (result, error result, or dead-letter copy) is confirmed
//! by the broker, so a crash or a lost connection at any point leaves it in its queue to be
//! delivered again (at-least-once; results carry the job's `id` to make duplicates harmless).
//!
//! On SIGTERM/SIGINT the worker stops consuming (prefetched jobs that had not started are
//! returned to their queue), runs and answers what it holds, waits for the broker's confirms,
//! acks, and closes — all within `worker.shutdown_timeout_ms`. What is still unsettled at the
//! deadline is left to the broker, which redelivers it when the connection closes.
//!
//! On a lost connection the worker reconnects with capped exponential backoff and jitter,
//! declares the topology again and resumes; `/readyz` answers 503 meanwhile.

mod consumer;
mod kinds;
mod session;
mod supervisor;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Command, Topology};
use crate::config::Settings;
use crate::jobs::answerer::Answerer;
use crate::repository::ModelStore;
use crate::runtime::{env, RuntimeError, SessionOptions};
use crate::serving::{BackendLoader, DeviceMemoryCollector, ModelRegistry, ModelSync, OrtLoader};
use crate::telemetry::trace::JobTracer;
use crate::telemetry::{HttpState, Metrics, StatusSource};
use crate::training::DataLimits;

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Environment(#[from] env::EnvironmentError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("telemetry.otlp_endpoint: {0}")]
    Trace(#[from] crate::telemetry::trace::TraceError),
    #[error("cannot listen on http.listen = {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("model repository {path}: {message}")]
    Repository { path: String, message: String },
    #[error("training.data_dir = {path}: {source}")]
    TrainingDataDir {
        path: String,
        source: std::io::Error,
    },
}

/// What `/readyz` and `/v2/models` report.
pub struct WorkerStatus {
    pub connected: AtomicBool,
    pub stopping: AtomicBool,
    pub registry: Arc<ModelRegistry>,
    /// `worker.strict_readiness`: a refused model makes the worker unready.
    pub strict_readiness: bool,
}

impl StatusSource for WorkerStatus {
    fn readiness(&self) -> Result<Option<String>, String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err("broker not connected".into());
        }
        self.registry.readiness(self.strict_readiness)
    }

    fn models(&self) -> serde_json::Value {
        self.registry.status_json()
    }
}

/// A started worker's handles, for tests and the CLI.
pub struct Worker {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<ModelRegistry>,
    pub status: Arc<WorkerStatus>,
    pub http_addr: SocketAddr,
}

/// Starts the worker and runs it until `shutdown` is cancelled, then stops gracefully.
/// `started` receives the handles once models are loaded and HTTP is listening.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Worker>>,
) -> Result<(), WorkerError> {
    run_with(settings, Arc::new(OrtLoader), shutdown, started).await
}

/// [`run`] with the backends made by `loader` (a fake one in tests).
pub async fn run_with(
    settings: Settings,
    loader: Arc<dyn BackendLoader>,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Worker>>,
) -> Result<(), WorkerError> {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let parts = start(&settings, loader, commands_tx).await?;
    let http = Http::start(&settings, &parts).await?;
    // Polling stops as soon as shutdown begins: a stopping worker loads nothing new.
    let poll_stop = shutdown.child_token();
    let poll = tokio::spawn(poll_task(
        parts.sync.clone(),
        parts.reload.clone(),
        Duration::from_millis(settings.repository.poll_interval_ms),
        poll_stop.clone(),
    ));
    if let Some(started) = started {
        let _ = started.send(Worker {
            metrics: parts.metrics.clone(),
            registry: parts.registry.clone(),
            status: parts.status.clone(),
            http_addr: http.addr,
        });
    }
    broker_side(&settings, &parts, commands_rx, &shutdown).await;
    parts.status.stopping.store(true, Ordering::Release);
    poll_stop.cancel();
    let _ = poll.await;
    parts.registry.clear();
    parts.batch_tasks.close();
    http.stop().await;
    // Spans still buffered are exported before the process ends (blocking: off the runtime).
    let tracer = parts.tracer;
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || tracer.shutdown()).await {
        tracing::warn!(%error, "Exporting the last spans failed");
    }
    tracing::info!("Worker stopped");
    Ok(())
}

/// What a started worker is made of, shared by its HTTP side, its repository polling and its
/// broker side.
struct Parts {
    metrics: Arc<Metrics>,
    topology: Topology,
    tracer: JobTracer,
    answerer: Arc<Answerer>,
    data_limits: DataLimits,
    registry: Arc<ModelRegistry>,
    batch_tasks: TaskTracker,
    sync: Arc<ModelSync>,
    status: Arc<WorkerStatus>,
    /// Wakes the repository sync at once (a version announced or written).
    reload: Arc<Notify>,
}

/// Checks the runtime and the repository, and loads the models.
async fn start(
    settings: &Settings,
    loader: Arc<dyn BackendLoader>,
    commands: mpsc::UnboundedSender<Command>,
) -> Result<Parts, WorkerError> {
    let options = session_options(settings)?;
    let metrics = Arc::new(Metrics::new(
        env!("CARGO_PKG_VERSION"),
        env::loaded_version().unwrap_or("unknown"),
    ));
    metrics.tenants.set_cap(settings.worker.max_tenants);
    let broker = &settings.broker;
    let topology = Topology::new(broker.prefix.clone(), broker.delivery_limit);
    let tracer = JobTracer::new(&settings.telemetry.otlp_endpoint, &hostname())?;
    let answerer = Arc::new(Answerer::new(
        commands,
        metrics.clone(),
        topology.dead_letter_exchange(),
        broker.delivery_limit,
        tracer.clone(),
    ));
    let repository = &settings.repository;
    if !repository.path.is_dir() {
        return Err(WorkerError::Repository {
            path: repository.path.display().to_string(),
            message: "not a directory (set repository.path or --models)".into(),
        });
    }
    let data_limits = training_data_limits(settings)?;
    let registry = Arc::new(ModelRegistry::default());
    metrics
        .registry()
        .register(Box::new(DeviceMemoryCollector::new(Arc::downgrade(
            &registry,
        ))))
        .expect("infermq_model_device_memory_bytes is registered once");
    let batch_tasks = TaskTracker::new();
    let sync = Arc::new(ModelSync {
        store: ModelStore::new(&repository.path, repository.models.clone()),
        registry: registry.clone(),
        options,
        defaults: settings.batching.clone(),
        metrics: metrics.clone(),
        tracker: batch_tasks.clone(),
        loader,
        memory: memory_limit(settings),
    });
    sync.sync().await;
    let status = Arc::new(WorkerStatus {
        connected: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        registry: registry.clone(),
        strict_readiness: settings.worker.strict_readiness,
    });
    Ok(Parts {
        metrics,
        topology,
        tracer,
        answerer,
        data_limits,
        registry,
        batch_tasks,
        sync,
        status,
        reload: Arc::new(Notify::new()),
    })
}

/// ONNX Runtime loaded, and the session options of `runtime.*` checked.
fn session_options(settings: &Settings) -> Result<SessionOptions, WorkerError> {
    let runtime = &settings.runtime;
    env::init(runtime.library())?;
    let options = SessionOptions {
        execution_providers: runtime.execution_providers.clone(),
        require_gpu: runtime.require_gpu,
        intra_threads: runtime.intra_threads,
        cpus: runtime.instance_cpus.clone(),
        cuda: runtime.cuda.clone(),
    };
    options.check()?;
    tracing::info!(providers = ?options.effective(), library = %env::resolve_library(runtime.library()).display(), "ONNX Runtime ready");
    Ok(options)
}

/// What model versions may use together (`runtime.memory_limit`, else the cgroup's, else the
/// machine's memory), logged once.
fn memory_limit(settings: &Settings) -> Option<crate::runtime::memory::MemoryLimit> {
    let limit = crate::runtime::memory::memory_limit(settings.runtime.memory_limit);
    match &limit {
        Some(limit) => tracing::info!(%limit, "Memory for model versions"),
        None => tracing::warn!(
            "No memory limit could be read (runtime.memory_limit, cgroup, /proc/meminfo): versions are loaded without memory admission"
        ),
    }
    limit
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "infermq".into())
}

/// The HTTP side (`/metrics`, `/healthz`, `/readyz`, `/v2/models`), listening.
struct Http {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
    stop: CancellationToken,
}

impl Http {
    async fn start(settings: &Settings, parts: &Parts) -> Result<Http, WorkerError> {
        let addr = settings.http.listen;
        let listen_error = |source| WorkerError::Listen { addr, source };
        let listener = (tokio::net::TcpListener::bind(addr).await).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let stop = CancellationToken::new();
        let state = HttpState {
            metrics: parts.metrics.clone(),
            status: parts.status.clone(),
        };
        let task = tokio::spawn(crate::telemetry::serve(listener, state, stop.clone()));
        tracing::info!(http_addr = %addr, "HTTP listening");
        Ok(Http { addr, task, stop })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Runs the broker side until `shutdown` and its graceful stop are done. Every stop is bounded:
/// the graceful drain has `shutdown_timeout`; past it and a margin, the broker side is dropped,
/// which closes the connection, and the broker redelivers whatever was not settled.
async fn broker_side(
    settings: &Settings,
    parts: &Parts,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
) {
    let kinds = kinds::register(settings, parts);
    let broker = session::BrokerContext {
        settings: settings.clone(),
        topology: parts.topology.clone(),
        registry: parts.registry.clone(),
        answerer: parts.answerer.clone(),
        metrics: parts.metrics.clone(),
        status: parts.status.clone(),
        reload: parts.reload.clone(),
        kinds,
    };
    let stop_limit = settings.worker.shutdown_timeout() + Duration::from_secs(5);
    let batch_tasks = parts.batch_tasks.clone();
    let run = session::broker_task(Arc::new(broker), commands, shutdown.clone(), batch_tasks);
    tokio::select! {
        () = run => {}
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(stop_limit).await;
        } => tracing::warn!(limit_ms = stop_limit.as_millis() as u64, "Stop took longer than allowed; closing the broker connection with jobs unsettled (they are redelivered)"),
    }
}

/// Resolves `training.data_dir` once; without it, `file://` training data is refused.
fn training_data_limits(settings: &Settings) -> Result<DataLimits, WorkerError> {
    let training = &settings.training;
    let dir = training.data_dir();
    if training.enabled && dir.is_none() {
        tracing::info!(
            "training.data_dir is not set: training jobs with file:// data are refused; set it to \
             the directory that holds training data"
        );
    }
    DataLimits::new(dir, training.max_data_bytes).map_err(|source| WorkerError::TrainingDataDir {
        path: training.data_dir.display().to_string(),
        source,
    })
}

/// Syncs the repository every `interval`, or at once when `reload` is notified.
async fn poll_task(
    sync: Arc<ModelSync>,
    reload: Arc<Notify>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = reload.notified() => {}
            () = stop.cancelled() => return,
        }
        sync.sync().await;
    }
}
