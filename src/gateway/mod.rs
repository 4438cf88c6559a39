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
//! In front of every route but health, readiness and `/metrics`, the key check ([`auth`]):
//! API keys from `gateway.api_keys_file` ([`keys`]) with each key's models and limits
//! ([`quota`]), and each request's usage ([`usage`]: per-tenant counters and the usage log).
//! The keys file and the TLS files ([`tls`]: HTTPS with rustls) are read again when they change
//! ([`reload`]) or on SIGHUP. Without keys the gateway serves anyone, so it refuses to listen
//! on an address other than loopback unless `gateway.allow_anonymous` says so.
//!
//! Shutdown: on SIGTERM the listener stops accepting, requests in flight are answered (their
//! results still arrive over the open channels), then the connections close — all within
//! `gateway.shutdown_timeout_ms`. A request cut at the deadline has still been published: its
//! job runs and its result is dropped by the broker (direct reply-to has no queue to keep it).

mod auth;
mod cache;
pub(crate) mod chat;
mod dispatch;
mod gather;
mod generate;
mod generation;
mod groups;
mod http;
pub(crate) mod job;
mod keys;
mod merge;
mod metrics;
pub(crate) mod openai;
mod policy;
mod quota;
mod reload;
mod replies;
mod tls;
mod usage;
mod v1;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::topology::predict_queue;
use crate::client::JobProperties;
use crate::config::{GatewaySettings, RepositorySettings, Settings};
use crate::protocol::ModelName;
use auth::{KeyStore, Peer};
use cache::{Lookup, TtlCache};
use dispatch::Waiter;
use gather::{GatherKey, ModelInfo};
use groups::Gathering;
use http::{error, relay, InferRequest};
use metrics::GatewayMetrics;
use policy::QueueState;
use replies::{BrokerPools, CallError};
use tls::{TlsFiles, TlsListener};
use usage::{Usage, UsageLog};

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
    #[error("{0}")]
    Keys(String),
    #[error("{0}")]
    Tls(String),
    #[error("gateway.usage_log = {0}")]
    UsageLog(String),
    #[error("gateway.listen = {addr} is not a loopback address and gateway.api_keys_file is not set: anyone who reaches the port could run every model. Set gateway.api_keys_file (docs/GATEWAY.md#api-keys), or listen on 127.0.0.1, or set gateway.allow_anonymous = true when something in front authenticates")]
    Exposed { addr: SocketAddr },
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
    /// The API keys (none: every request anonymous).
    keys: Arc<KeyStore>,
    /// HTTPS: the certificate and key in use.
    tls: Option<Arc<TlsFiles>>,
    /// Where each request's usage is recorded.
    usage: Arc<Usage>,
    /// `gateway.client_address_header`, parsed.
    client_header: Option<HeaderName>,
    /// Notified to read the keys and TLS files again at once (SIGHUP).
    reload_now: Arc<Notify>,
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
        let metrics = Arc::new(GatewayMetrics::new());
        let keys = KeyStore::open(
            gw.api_keys_file().map(Into::into),
            gw.auth_failures_per_minute,
            metrics.clone(),
        )
        .map_err(GatewayError::Keys)?;
        let tls = gw
            .tls
            .enabled()
            .then(|| TlsFiles::open(&gw.tls, metrics.clone()).map(Arc::new))
            .transpose()
            .map_err(GatewayError::Tls)?;
        let log = gw
            .usage_log()
            .map(|path| UsageLog::open(path, gw.usage_log_max_bytes, gw.usage_log_files))
            .transpose()
            .map_err(GatewayError::UsageLog)?;
        Ok(Gateway {
            settings: gw.clone(),
            prefix: settings.broker.prefix.clone(),
            broker,
            queues: TtlCache::new(Duration::from_millis(gw.queue_check_ms)),
            metadata: TtlCache::new(Duration::from_millis(gw.metadata_cache_ms)),
            usage: Arc::new(Usage::new(metrics.clone(), log)),
            metrics,
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
            keys: Arc::new(keys),
            tls,
            client_header: gw.client_address_header.parse().ok(),
            reload_now: Arc::new(Notify::new()),
        })
    }

    /// Reads the keys and TLS files again now, changed or not (what SIGHUP does).
    pub fn reload_files(&self) {
        self.reload_now.notify_one();
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
            .trace_context(request.traceparent, request.tracestate)
            .tenant(request.tenant);
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

/// Refuses a gateway that would serve anyone on an address other than loopback: no keys, and
/// `gateway.allow_anonymous` not set.
pub fn check_exposure(settings: &GatewaySettings) -> Result<(), GatewayError> {
    let addr = settings.listen;
    if settings.api_keys_file().is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    if settings.allow_anonymous {
        tracing::warn!(%addr, "Gateway without API keys on an address other than loopback (gateway.allow_anonymous): anyone who reaches it may run every model");
        return Ok(());
    }
    Err(GatewayError::Exposed { addr })
}

/// Runs the gateway until `shutdown` is cancelled; `started` receives the bound address.
/// SIGHUP reads the keys and TLS files again.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), GatewayError> {
    check_exposure(&settings.gateway)?;
    let addr = settings.gateway.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen { addr, source })?;
    let gateway = Arc::new(Gateway::new(&settings)?);
    let scheme = if gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(addr = %local, scheme, prefix = %settings.broker.prefix, api_keys = gateway.keys.enabled(), "Gateway listening");
    if let Some(started) = started {
        let _ = started.send(local);
    }
    #[cfg(unix)]
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(GatewayError::Serve)?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hangups.recv() => match got {
                        Some(()) => {
                            tracing::info!("SIGHUP: reading the API keys and TLS files again");
                            gateway.reload_files();
                        }
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
    match gateway.tls.clone() {
        Some(files) => {
            let listener = TlsListener::new(listener, files).map_err(GatewayError::Serve)?;
            serve(gateway, listener, shutdown).await
        }
        None => serve(gateway, listener, shutdown).await,
    }
}

/// Serves `gateway` on `listener` (TCP, or TLS) until `shutdown` is cancelled, then answers the
/// requests in flight (within `gateway.shutdown_timeout_ms`), writes the usage log out and
/// closes the broker connections.
pub async fn serve<L>(
    gateway: Arc<Gateway>,
    listener: L,
    shutdown: CancellationToken,
) -> Result<(), GatewayError>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    Peer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let stop = {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            gateway.stopping.store(true, Ordering::Release);
            tracing::info!("Gateway stopping: answering requests in flight");
        }
    };
    tokio::spawn(reload_task(
        gateway.clone(),
        Duration::from_millis(gateway.settings.reload_poll_ms),
        shutdown.clone(),
    ));
    let app = http::router(gateway.clone()).into_make_service_with_connect_info::<Peer>();
    let server = axum::serve(listener, app)
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
    gateway.usage.close().await;
    gateway.broker.close().await;
    tracing::info!("Gateway stopped");
    result.map_err(GatewayError::Serve)
}

/// Checks the keys and the TLS files every `every`, and at once (forced) when
/// [`Gateway::reload_files`] asks, until `shutdown`.
async fn reload_task(gateway: Arc<Gateway>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = ticks.tick() => false,
            () = gateway.reload_now.notified() => true,
            () = shutdown.cancelled() => return,
        };
        // Reading a file blocks: not on the async threads.
        let keys = gateway.keys.clone();
        let tls = gateway.tls.clone();
        let _ = tokio::task::spawn_blocking(move || {
            keys.reload(force);
            if let Some(tls) = tls {
                tls.reload(force);
            }
        })
        .await;
    }
}
