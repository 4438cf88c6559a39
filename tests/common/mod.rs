//! Test harness: a worker in this process (or as a child process) against the real RabbitMQ and
//! the real ONNX Runtime, with a random prefix so tests never share queues, and a client.
#![allow(dead_code)]

pub mod curl;
pub mod fleet;
pub mod gateway;
pub mod otlp;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::time::Duration;

use infermq::client::Client;
use infermq::config::Settings;
use infermq::serving::{BackendLoader, OrtLoader};
use infermq::worker::{self, Worker};
use lapin::options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn random_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A copy of the bundled models (only `names`), so a test may add or break versions.
pub fn model_repository(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in names {
        copy_dir(&root.join(name), &dir.path().join(name));
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Settings for a test worker: its prefix, its repository, an ephemeral HTTP port, CPU only.
pub fn settings(prefix: &str, models: &Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("INFERMQ__BROKER__URL".into(), amqp_url()),
        ("INFERMQ__BROKER__PREFIX".into(), prefix.into()),
        (
            "INFERMQ__REPOSITORY__PATH".into(),
            models.display().to_string(),
        ),
        ("INFERMQ__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ("INFERMQ__RUNTIME__EXECUTION_PROVIDERS".into(), "cpu".into()),
        (
            "INFERMQ__WORKER__SHUTDOWN_TIMEOUT_MS".into(),
            "20000".into(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_from(None, env).expect("test settings")
}

/// A worker running in this process.
pub struct TestWorker {
    pub prefix: String,
    pub handles: Worker,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), worker::WorkerError>>,
}

impl TestWorker {
    pub async fn start(settings: Settings) -> TestWorker {
        TestWorker::start_with(settings, std::sync::Arc::new(OrtLoader)).await
    }

    /// A worker whose model versions run on the backends `loader` makes (a fake in tests).
    pub async fn start_with(
        settings: Settings,
        loader: std::sync::Arc<dyn BackendLoader>,
    ) -> TestWorker {
        let worker = TestWorker::start_unready(settings, loader).await;
        worker.wait_ready().await;
        worker
    }

    /// [`TestWorker::start_with`] without waiting for `/readyz`: for tests in which a version
    /// is refused (the worker is then never ready).
    pub async fn start_unready(
        settings: Settings,
        loader: std::sync::Arc<dyn BackendLoader>,
    ) -> TestWorker {
        // Logs when asked for (RUST_LOG=infermq=debug), captured per test otherwise.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let prefix = settings.broker.prefix.clone();
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(worker::run_with(
            settings,
            loader,
            shutdown.clone(),
            Some(tx),
        ));
        let handles = rx.await.expect("worker failed to start");
        TestWorker {
            prefix,
            handles,
            shutdown,
            task,
        }
    }

    /// `/readyz`'s status and body once the body contains `needle` (bounded: the broker side
    /// connects after the models load, and says so first).
    pub async fn wait_for_readyz(&self, needle: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = http_get(self.handles.http_addr, "/readyz").await;
            if let Some(answer) = answer.as_ref().filter(|(_, body)| body.contains(needle)) {
                return answer.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never named {needle}; last: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/v2/models` entry of `model` version `version` once `wanted(entry)` holds
    /// (bounded: the repository is polled, so a change shows at the next scan).
    pub async fn wait_for_version(
        &self,
        model: &str,
        version: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let models = self.handles.status.registry.status_json();
            let entry = models.as_array().and_then(|list| {
                list.iter()
                    .filter(|m| m["name"] == model)
                    .flat_map(|m| m["versions"].as_array().cloned().unwrap_or_default())
                    .find(|v| v["version"] == version)
            });
            if let Some(entry) = entry.filter(|e| wanted(e)) {
                return entry;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{model} version {version} never reached the state wanted: {models:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls /readyz (bounded) until it answers 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(self.handles.http_addr, "/readyz")
                .await
                .map(|(status, _)| status)
                == Some(200)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until the rendered metrics contain `needle`: counters move when the
    /// broker confirms an ack, a moment after the client already has its answer.
    pub async fn wait_for_metric(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.handles.metrics.render();
            if text.contains(needle) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "metrics never showed {needle}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn queue(&self, model: &str) -> String {
        format!("{}.predict.{model}", self.prefix)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("worker task")
            .expect("worker result");
        cleanup(&self.prefix).await;
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A consumer of `queue` without acks (the broker forgets each message once delivered).
pub async fn consume(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

pub async fn client() -> Client {
    Client::connect(&amqp_url(), &Default::default())
        .await
        .expect("client connects")
}

/// Deletes a test prefix's queues and exchanges (best effort).
pub async fn cleanup(prefix: &str) {
    let Ok(connection) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    for model in [
        "iris",
        "mlp",
        "mixed",
        "scaler",
        "fixed",
        "trained",
        "regression",
        "fresh",
        "text",
        "storyteller",
        "genai",
    ] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    format!("{prefix}.predict.{model}").as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    for queue in ["train", "results", "dead"] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    format!("{prefix}.{queue}").as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    for exchange in ["dlx", "models", "cancel"] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(
                    format!("{prefix}.{exchange}").as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = connection.close(200, "cleanup".into()).await;
}

pub fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Ok when `python3 -c <imports>` runs, after installing `packages` with pip if it did not.
pub fn python_with(imports: &str, packages: &[&str]) -> Result<(), String> {
    let ok = |out: std::io::Result<std::process::Output>| out.is_ok_and(|o| o.status.success());
    if ok(std::process::Command::new("python3")
        .args(["-c", imports])
        .output())
    {
        return Ok(());
    }
    let install = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .output();
    match install {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}
