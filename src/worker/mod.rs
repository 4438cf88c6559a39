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
mod session;
mod supervisor;
mod train;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Topology;
use crate::config::Settings;
use crate::jobs::inflight::Answerer;
use crate::jobs::registry::{BackendLoader, ModelRegistry, ModelSync, OrtLoader};
use crate::jobs::train::TrainContext;
use crate::repository::ModelStore;
use crate::runtime::{env, RuntimeError, SessionOptions};
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
}

impl StatusSource for WorkerStatus {
    fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err("broker not connected".into());
        }
        match self.registry.not_ready_reason() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
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
    env::init(settings.runtime.library())?;
    let options = SessionOptions {
        execution_providers: settings.runtime.execution_providers.clone(),
        require_gpu: settings.runtime.require_gpu,
        intra_threads: settings.runtime.intra_threads,
        cpus: settings.runtime.instance_cpus.clone(),
    };
    options.check()?;
    tracing::info!(providers = ?options.effective(), library = %env::resolve_library(settings.runtime.library()).display(), "ONNX Runtime ready");
    let metrics = Arc::new(Metrics::new(
        env!("CARGO_PKG_VERSION"),
        env::loaded_version().unwrap_or("unknown"),
    ));
    let topology = Topology::new(
        settings.broker.prefix.clone(),
        settings.broker.delivery_limit,
    );
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "infermq".into());
    let tracer = JobTracer::new(&settings.telemetry.otlp_endpoint, &host)?;
    let answerer = Arc::new(Answerer {
        commands: commands_tx,
        metrics: metrics.clone(),
        dead_letter_exchange: topology.dead_letter_exchange(),
        delivery_limit: settings.broker.delivery_limit,
        unsettled: AtomicI64::new(0),
        settled: Notify::new(),
        closing: tokio_util::task::TaskTracker::new(),
        tracer: tracer.clone(),
    });
    if !settings.repository.path.is_dir() {
        return Err(WorkerError::Repository {
            path: settings.repository.path.display().to_string(),
            message: "not a directory (set repository.path or --models)".into(),
        });
    }
    let data_limits = training_data_limits(&settings)?;
    let registry = Arc::new(ModelRegistry::default());
    let batch_tasks = TaskTracker::new();
    let sync = Arc::new(ModelSync {
        store: ModelStore::new(
            &settings.repository.path,
            settings.repository.models.clone(),
        ),
        registry: registry.clone(),
        options,
        defaults: settings.batching.clone(),
        metrics: metrics.clone(),
        tracker: batch_tasks.clone(),
        loader,
    });
    sync.sync().await;

    let status = Arc::new(WorkerStatus {
        connected: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        registry: registry.clone(),
    });
    let listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: settings.http.listen,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: settings.http.listen,
            source,
        })?;
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(crate::telemetry::serve(
        listener,
        HttpState {
            metrics: metrics.clone(),
            status: status.clone(),
        },
        http_stop.clone(),
    ));
    tracing::info!(%http_addr, "HTTP listening");

    let reload = Arc::new(Notify::new());
    // Polling stops as soon as shutdown begins: a stopping worker loads nothing new.
    let poll_stop = shutdown.child_token();
    let poll = tokio::spawn(poll_task(
        sync.clone(),
        reload.clone(),
        Duration::from_millis(settings.repository.poll_interval_ms),
        poll_stop.clone(),
    ));

    if let Some(started) = started {
        let _ = started.send(Worker {
            metrics: metrics.clone(),
            registry: registry.clone(),
            status: status.clone(),
            http_addr,
        });
    }

    let broker = session::BrokerContext {
        settings: settings.clone(),
        topology: topology.clone(),
        registry: registry.clone(),
        answerer: answerer.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        reload: reload.clone(),
        training: settings.training.enabled.then(|| {
            Arc::new(TrainContext {
                topology: topology.clone(),
                store: ModelStore::new(&settings.repository.path, vec![]),
                options: sync.options.clone(),
                metrics: metrics.clone(),
                answerer: answerer.clone(),
                concurrency: settings.training.concurrency.min(u16::MAX as usize) as u16,
                consumer_timeout_ms: settings.training.consumer_timeout_ms,
                max_message_bytes: settings.broker.max_message_bytes,
                data_limits: data_limits.clone(),
                budget: (&settings.training).into(),
                allowed_models: settings.training.allowed_models.clone(),
                allowed_users: settings.training.allowed_users.clone(),
                reload: reload.clone(),
            })
        }),
    };
    // Every stop is bounded: the graceful drain has `shutdown_timeout`; past it and a margin,
    // the broker side is dropped, which closes the connection, and the broker redelivers
    // whatever was not settled.
    {
        let stop_limit = settings.worker.shutdown_timeout() + Duration::from_secs(5);
        let broker_side = session::broker_task(
            Arc::new(broker),
            commands_rx,
            shutdown.clone(),
            batch_tasks.clone(),
        );
        tokio::pin!(broker_side);
        tokio::select! {
            () = &mut broker_side => {}
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(stop_limit).await;
            } => tracing::warn!(limit_ms = stop_limit.as_millis() as u64, "Stop took longer than allowed; closing the broker connection with jobs unsettled (they are redelivered)"),
        }
    }

    status.stopping.store(true, Ordering::Release);
    poll_stop.cancel();
    let _ = poll.await;
    registry.clear();
    batch_tasks.close();
    http_stop.cancel();
    let _ = http.await;
    // Spans still buffered are exported before the process ends (blocking: off the runtime).
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || tracer.shutdown()).await {
        tracing::warn!(%error, "Exporting the last spans failed");
    }
    tracing::info!("Worker stopped");
    Ok(())
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
