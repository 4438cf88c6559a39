//! `infermq gateway`: the KServe v2 REST front door onto the queues, so HTTP clients
//! (tritonclient, KServe's SDK, curl) reach the fleet unchanged.
//!
//! Beside the flow, on the producer's side: each inference request is published to its model's
//! queue `<prefix>.predict.<model>` exactly as the contract (`docs/PROTOCOL.md`) asks of any
//! producer — persistent, `mandatory`, confirmed — with the body relayed unchanged (the worker
//! decodes and validates it), and answered from the result that comes back over RabbitMQ's
//! direct reply-to ([`replies`]). Readiness and backpressure come from a passive declare of the
//! model's queue (does it exist, does a worker consume it, how deep is it), reused for
//! `gateway.queue_check_ms` ([`cache`]); metadata from a metadata request any worker of the
//! model answers. Decisions are pure ([`policy`]); routes in [`http`]; metrics in [`metrics`].
//! Compatible requests for one model are gathered into one job ([`gather`] decides which,
//! [`groups`] when, [`merge`] joins bodies and splits results, [`dispatch`] publishes and
//! answers each request).
//!
//! Shutdown: on SIGTERM the listener stops accepting, requests in flight are answered (their
//! results still arrive over the open channels), then the connections close — all within
//! `gateway.shutdown_timeout_ms`. A request cut at the deadline has still been published: its
//! job runs and its result is dropped by the broker (direct reply-to has no queue to keep it).

mod cache;
pub(crate) mod chat;
mod dispatch;
mod gather;
mod generate;
mod generation;
mod groups;
mod http;
pub(crate) mod job;
mod merge;
mod metrics;
pub(crate) mod openai;
mod policy;
mod replies;
mod v1;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::broker::topology::predict_queue;
use crate::client::JobProperties;
use crate::config::{GatewaySettings, RepositorySettings, Settings};
use crate::protocol::ModelName;
use cache::{Lookup, TtlCache};
use dispatch::Waiter;
use gather::{GatherKey, ModelInfo};
use groups::Gathering;
use http::{error, relay, InferRequest};
use metrics::GatewayMetrics;
use policy::QueueState;
use replies::{BrokerPools, CallError};

/// The HTTP header that sets a request's timeout (the `timeout_ms` query parameter wins).
pub const TIMEOUT_HEADER: &str = "infermq-timeout-ms";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on gateway.listen = {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("broker pools: {0}")]
    Pool(String),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Everything the handlers share.
pub struct Gateway {
    pub settings: GatewaySettings,
    prefix: String,
    pub broker: BrokerPools,
    queues: TtlCache<QueueState>,
    metadata: TtlCache<Bytes>,
    pub metrics: Arc<GatewayMetrics>,
    in_flight: Arc<Semaphore>,
    stopping: AtomicBool,
    /// What the fleet's metadata says of each model version, for gathering (`None`: not known).
    models: TtlCache<Option<Arc<ModelInfo>>>,
    gathering: Mutex<Gathering<GatherKey, Waiter>>,
    /// Bytes of inputs a gathered job may carry: under `broker.max_message_bytes`.
    gather_bytes: usize,
    /// Where chat templates and the `/v1/models` list come from (the workers' repository).
    repository: RepositorySettings,
    /// Each model's chat template, or why it has none (for `metadata_cache_ms`).
    templates: TtlCache<Arc<Result<Arc<chat::ChatTemplate>, String>>>,
}

impl Gateway {
    pub fn new(settings: &Settings) -> Result<Gateway, GatewayError> {
        let gw = &settings.gateway;
        let broker = BrokerPools::new(
            &settings.broker.url,
            &settings.broker.tls,
            gw.connections,
            gw.channels,
        )
        .map_err(GatewayError::Pool)?;
        Ok(Gateway {
            settings: gw.clone(),
            prefix: settings.broker.prefix.clone(),
            broker,
            queues: TtlCache::new(Duration::from_millis(gw.queue_check_ms)),
            metadata: TtlCache::new(Duration::from_millis(gw.metadata_cache_ms)),
            metrics: Arc::new(GatewayMetrics::new()),
            in_flight: Arc::new(Semaphore::new(gw.max_in_flight)),
            stopping: AtomicBool::new(false),
            models: TtlCache::new(Duration::from_millis(gw.metadata_cache_ms)),
            gathering: Mutex::new(Gathering::new(
                gw.gather_window,
                Duration::from_micros(gw.gather_delay_us),
            )),
            // Room for the JSON header (names and shapes) and the AMQP headers.
            gather_bytes: settings.broker.max_message_bytes.saturating_sub(64 << 10),
            repository: settings.repository.clone(),
            templates: TtlCache::new(Duration::from_millis(gw.metadata_cache_ms)),
        })
    }

    fn queue(&self, model: &ModelName) -> String {
        predict_queue(&self.prefix, model)
    }

    pub fn queue_check(&self) -> Duration {
        Duration::from_millis(self.settings.queue_check_ms)
    }

    fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }

    fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.max_timeout_ms)
    }

    /// The state of `model`'s queue, at most `queue_check_ms` old.
    pub async fn queue_state(&self, model: &ModelName) -> Result<QueueState, CallError> {
        let queue = self.queue(model);
        // Once a model's state is known, one request at a time checks it again when it
        // expires; the others go on with the state it had (one probe per model per
        // `queue_check_ms`, not one per request in flight).
        if let Lookup::Fresh(state) = self.queues.get_or_claim(&queue, Instant::now()) {
            return Ok(state);
        }
        let state = self.broker.probe(&queue).await?;
        self.queues.put(&queue, state, Instant::now());
        Ok(state)
    }

    /// `Ok` when the gateway takes requests: not stopping, and the broker is reachable.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        match tokio::time::timeout(Duration::from_secs(2), self.broker.connected()).await {
            Ok(true) => Ok(()),
            _ => Err("broker not connected".into()),
        }
    }

    pub fn render_metrics(&self) -> String {
        self.metrics
            .pool("connections", self.broker.connections.status());
        self.metrics
            .pool("channels", self.broker.reply_channels.status());
        self.metrics.render()
    }

    /// Answers an inference request: gathered with others into one job when it can be
    /// ([`dispatch`]), else as its own job.
    async fn infer(
        self: &Arc<Self>,
        model: &ModelName,
        version: Option<&str>,
        request: InferRequest<'_>,
        body: Bytes,
    ) -> Response {
        dispatch::infer(self, model, version, request, body).await
    }

    /// Publishes an inference request as its own job and answers with its result.
    async fn publish(
        &self,
        model: &ModelName,
        version: Option<&str>,
        request: InferRequest<'_>,
        body: &[u8],
    ) -> Response {
        let properties = JobProperties::new()
            .deadline(SystemTime::now() + request.timeout)
            .model_version(version)
            .binary_header_len(request.header_len)
            .trace_context(request.traceparent, request.tracestate);
        self.metrics.published(model.as_str(), 1);
        self.call(model, body, properties, request.timeout).await
    }

    /// A model's metadata as a worker serving it answers it (reused for `metadata_cache_ms`).
    async fn metadata(&self, model: &ModelName, version: Option<&str>) -> Response {
        let key = format!("{model}/{}", version.unwrap_or(""));
        let json = |body: Bytes| {
            let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
            (StatusCode::OK, headers, body).into_response()
        };
        if let Some(body) = self.metadata.get(&key, Instant::now()) {
            return json(body);
        }
        let timeout = self.default_timeout();
        let properties = JobProperties::new()
            .metadata_request()
            .model_version(version)
            .deadline(SystemTime::now() + timeout);
        let response = self.call(model, b"", properties, timeout).await;
        if response.status() != StatusCode::OK {
            return response;
        }
        let Ok(body) = axum::body::to_bytes(response.into_body(), 1 << 20).await else {
            return error(StatusCode::BAD_GATEWAY, "metadata answer larger than 1 MiB");
        };
        self.metadata.put(&key, body.clone(), Instant::now());
        json(body)
    }

    async fn call(
        &self,
        model: &ModelName,
        body: &[u8],
        properties: JobProperties,
        timeout: Duration,
    ) -> Response {
        let queue = self.queue(model);
        match self.broker.call(&queue, body, properties, timeout).await {
            Ok(delivery) => relay(delivery),
            Err(e) => self.call_failed(model, &e),
        }
    }

    /// The answer to a request whose job got no answer.
    fn call_failed(&self, model: &ModelName, e: &CallError) -> Response {
        match e {
            CallError::Unroutable(_) => {
                self.queues.remove(&self.queue(model));
                error(
                    StatusCode::NOT_FOUND,
                    &format!("unknown model {model:?}: no worker serves it (no queue)"),
                )
            }
            CallError::Timeout(_) => error(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
            _ => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, 1u64.into());
                response
            }
        }
    }
}

/// Runs the gateway until `shutdown` is cancelled; `started` receives the bound address.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), GatewayError> {
    let addr = settings.gateway.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen { addr, source })?;
    let gateway = Arc::new(Gateway::new(&settings)?);
    tracing::info!(addr = %local, prefix = %settings.broker.prefix, "Gateway listening");
    if let Some(started) = started {
        let _ = started.send(local);
    }
    serve(gateway, listener, shutdown).await
}

/// Serves `gateway` on `listener` until `shutdown` is cancelled, then answers the requests in
/// flight (within `gateway.shutdown_timeout_ms`) and closes the broker connections.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let stop = {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            gateway.stopping.store(true, Ordering::Release);
            tracing::info!("Gateway stopping: answering requests in flight");
        }
    };
    let server = axum::serve(listener, http::router(gateway.clone()))
        .with_graceful_shutdown(stop)
        .into_future();
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown.cancelled() => {
            let limit = Duration::from_millis(gateway.settings.shutdown_timeout_ms);
            match tokio::time::timeout(limit, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(in_flight = gateway.metrics.in_flight().get(), "Shutdown deadline passed with requests open");
                    Ok(())
                }
            }
        }
    };
    gateway.broker.close().await;
    tracing::info!("Gateway stopped");
    result.map_err(GatewayError::Serve)
}
