//! The KServe v2 REST routes of the gateway. Each handler reads and checks the request's own
//! fields ([`super::policy`]), asks the broker or the fleet ([`Gateway`]), and turns the answer
//! into an HTTP response; bodies of inference requests and results are relayed as they are.
//! Every route but health, readiness and `/metrics` is behind the key check
//! ([`super::auth::authenticate`]), whose [`Access`] says which models the request may use
//! (403 for the others) and meters it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lapin::message::Delivery;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{self, Access};
use super::metrics::Endpoint;
use super::policy::{self, Admission};
use super::{generate, v1};
use super::{Gateway, TIMEOUT_HEADER};
use crate::broker::headers::{as_string, find, BINARY_HEADER, ERROR_CODE};
use crate::protocol::ModelName;

/// The path of a model route: `/v2/models/{model}[/versions/{version}]…`.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    pub model: String,
    pub version: Option<String>,
}

/// Every route of the gateway: health, readiness and metrics open, the others behind the key
/// check.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.settings.max_body_bytes;
    let open = Router::new()
        .route("/v2/health/live", get(live))
        .route("/healthz", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics));
    let guarded = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v1/completions", post(v1::completions))
        .route("/v1/chat/completions", post(v1::chat_completions))
        .route("/v1/models", get(v1::models))
        .route("/v1/models/{model}", get(v1::model))
        .route("/v2/models/{model}/generate", post(generate::generate))
        .route(
            "/v2/models/{model}/versions/{version}/generate",
            post(generate::generate),
        )
        .route(
            "/v2/models/{model}/generate_stream",
            post(generate::generate_stream),
        )
        .route(
            "/v2/models/{model}/versions/{version}/generate_stream",
            post(generate::generate_stream),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            auth::authenticate,
        ));
    open.merge(guarded)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// A KServe error body: `{"error": message}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error that asks the client to come back: 429 and 503 carry `Retry-After`.
pub(super) fn retry_later(status: StatusCode, message: &str, seconds: u64) -> Response {
    let mut response = error(status, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// An answer from a worker, relayed: its status from `x-error-code`, its body and framing as
/// published.
pub fn relay(delivery: Delivery) -> Response {
    let properties = &delivery.properties;
    let found = |name: &str| find(properties.headers().as_ref(), name).and_then(as_string);
    let status = found(ERROR_CODE)
        .map(|code| policy::status_for_code(&code))
        .unwrap_or(StatusCode::OK);
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_else(|| "application/json".to_string());
    let mut response = Response::new(Body::from(delivery.data));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(len) = found(BINARY_HEADER).and_then(|l| l.parse::<u64>().ok()) {
        headers.insert(BINARY_HEADER, HeaderValue::from(len));
    }
    response
}

async fn live() -> &'static str {
    "live"
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.readiness().await {
        Ok(()) => "ready".into_response(),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, &reason),
    }
}

async fn server_metadata() -> Response {
    let body = json!({
        "name": "infermq",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    });
    axum::Json(body).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let body = gw.render_metrics();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

/// Times and counts a handler's answer; `known` says whether the model's queue exists (only
/// then is its name a label).
pub(super) async fn counted<F>(
    gw: &Gateway,
    model: &str,
    endpoint: Endpoint,
    handler: F,
) -> Response
where
    F: std::future::Future<Output = (bool, Response)>,
{
    let started = Instant::now();
    let gauge = gw.metrics.in_flight();
    gauge.inc();
    let (known, response) = handler.await;
    gauge.dec();
    let label = if known { model } else { "" };
    gw.metrics.answered(
        label,
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Checks the path's model and version (a 400), and that the key may use the model (a 403);
/// the model is metered.
pub(super) fn check_path(path: &ModelPath, access: &Access) -> Result<ModelName, Refusal> {
    let bad = |message: String| Refusal::new(false, StatusCode::BAD_REQUEST, message);
    let model = policy::check_model(&path.model).map_err(bad)?;
    if let Some(v) = &path.version {
        policy::check_version(v).map_err(bad)?;
    }
    access.meter.model(model.as_str());
    access.allows(model.as_str()).map_err(Refusal::forbidden)?;
    Ok(model)
}

/// A request refused by the gateway itself; `known` says whether the model's queue exists
/// (then its name is a metrics label).
pub struct Refusal {
    known: bool,
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl Refusal {
    pub(super) fn new(known: bool, status: StatusCode, message: String) -> Refusal {
        Refusal {
            known,
            status,
            message,
            retry_after: None,
        }
    }

    /// A model the request's key may not use.
    pub(super) fn forbidden(message: String) -> Refusal {
        Refusal::new(false, StatusCode::FORBIDDEN, message)
    }

    pub(super) fn retry(mut self, seconds: u64) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }

    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }

    /// `Retry-After`, in seconds, when the client should come back.
    pub(super) fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Whether the model's queue exists (then its name is a metrics label).
    pub(super) fn known(&self) -> bool {
        self.known
    }

    pub(super) fn answer(self) -> (bool, Response) {
        if self.status == StatusCode::FORBIDDEN {
            return (self.known, auth::forbidden(false, self.message));
        }
        let response = match self.retry_after {
            Some(seconds) => retry_later(self.status, &self.message, seconds),
            None => error(self.status, &self.message),
        };
        (self.known, response)
    }
}

/// Looks up the model's queue and refuses what admission refuses.
pub(super) async fn admit(gw: &Gateway, model: &ModelName, max_depth: u32) -> Result<(), Refusal> {
    let state = gw.queue_state(model).await.map_err(|e| {
        Refusal::new(false, StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry(1)
    })?;
    let retry = policy::retry_after(gw.queue_check());
    match policy::admit(state, max_depth) {
        Admission::Admit => Ok(()),
        Admission::UnknownModel => Err(Refusal::new(
            false,
            StatusCode::NOT_FOUND,
            format!("unknown model {model:?}: no worker serves it (no queue)"),
        )),
        Admission::NoConsumer => Err(Refusal::new(
            true,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model {model:?}: no worker consumes its queue"),
        )
        .retry(retry)),
        Admission::TooDeep { ready } => Err(Refusal::new(
            true,
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "model {model:?}: {ready} jobs wait in its queue (gateway.max_queue_depth = {max_depth})"
            ),
        )
        .retry(retry)),
    }
}

async fn metadata(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(path): Path<ModelPath>,
) -> Response {
    let model = path.model.clone();
    counted(&gw, &model, Endpoint::Metadata, async {
        let model = match check_path(&path, &access) {
            Ok(model) => model,
            Err(refusal) => return refusal.answer(),
        };
        if let Err(refusal) = admit(&gw, &model, 0).await {
            return refusal.answer();
        }
        (true, gw.metadata(&model, path.version.as_deref()).await)
    })
    .await
}

async fn model_ready(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(path): Path<ModelPath>,
) -> Response {
    let model = path.model.clone();
    counted(&gw, &model, Endpoint::Ready, async {
        let model = match check_path(&path, &access) {
            Ok(model) => model,
            Err(refusal) => return refusal.answer(),
        };
        if let Err(refusal) = admit(&gw, &model, 0).await {
            return refusal.answer();
        }
        let Some(version) = path.version.as_deref() else {
            return (true, StatusCode::OK.into_response());
        };
        // A version is ready when a worker serves it: its metadata says so.
        let answer = gw.metadata(&model, Some(version)).await;
        let status = answer.status();
        if status == StatusCode::OK {
            (true, StatusCode::OK.into_response())
        } else {
            (true, answer)
        }
    })
    .await
}

async fn infer(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(path): Path<ModelPath>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = path.model.clone();
    counted(&gw, &model, Endpoint::Infer, async {
        let _permit = match take_place(&gw) {
            Ok(permit) => permit,
            Err(refusal) => return refusal.answer(),
        };
        let model = match check_path(&path, &access) {
            Ok(model) => model,
            Err(refusal) => return refusal.answer(),
        };
        let body = match read_body(&gw, body) {
            Ok(body) => body,
            Err(refusal) => return refusal.answer(),
        };
        let request = InferRequest::read(&gw, query.as_deref(), &headers, &body, &access);
        let request = match request {
            Ok(request) => request,
            Err(message) => return (false, error(StatusCode::BAD_REQUEST, &message)),
        };
        if let Err(refusal) = admit(&gw, &model, gw.settings.max_queue_depth).await {
            return refusal.answer();
        }
        let version = path.version.as_deref();
        let rows = policy::request_rows(&body, request.header_len);
        let response = Gateway::infer(&gw, &model, version, request, body).await;
        if response.status() == StatusCode::OK {
            access.meter.rows(rows);
        }
        (true, response)
    })
    .await
}

/// A place among the requests in flight (`gateway.max_in_flight`), held until the answer is
/// sent; none left is a 429.
pub(super) fn take_place(gw: &Arc<Gateway>) -> Result<OwnedSemaphorePermit, Refusal> {
    gw.in_flight.clone().try_acquire_owned().map_err(|_| {
        let message = format!(
            "{} requests in flight (gateway.max_in_flight)",
            gw.settings.max_in_flight
        );
        Refusal::new(false, StatusCode::TOO_MANY_REQUESTS, message).retry(1)
    })
}

/// The request's body, or why it could not be read (413 above `gateway.max_body_bytes`).
pub(super) fn read_body(
    gw: &Gateway,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| {
        let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "body: larger than gateway.max_body_bytes = {}",
                gw.settings.max_body_bytes
            )
        } else {
            format!("body: {}", policy::echo(&rejection.body_text()))
        };
        Refusal::new(false, rejection.status(), message)
    })
}

/// The request's timeout: the `timeout_ms` query parameter, else the `Infermq-Timeout-Ms`
/// header, else `gateway.timeout_ms`.
pub(super) fn request_timeout(
    gw: &Gateway,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Duration, String> {
    let header = headers
        .get(TIMEOUT_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let query_timeout = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "timeout_ms")
            .map(|(_, v)| v)
    });
    policy::timeout(
        query_timeout,
        header,
        gw.default_timeout(),
        gw.max_timeout(),
    )
}

/// A W3C trace header of the request worth copying onto its job.
pub(super) fn trace_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| policy::trace_header(v.as_bytes()))
}

/// What an inference request carries besides its body.
pub struct InferRequest<'a> {
    pub timeout: std::time::Duration,
    pub header_len: Option<usize>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// The API key's name, stamped on the job (`x-infermq-tenant`).
    pub tenant: Option<&'a str>,
}

impl<'a> InferRequest<'a> {
    fn read(
        gw: &Gateway,
        query: Option<&str>,
        headers: &'a HeaderMap,
        body: &[u8],
        access: &'a Access,
    ) -> Result<InferRequest<'a>, String> {
        let timeout = request_timeout(gw, query, headers)?;
        let binary = headers
            .get(BINARY_HEADER)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let header_len = policy::binary_header_len(binary, body.len())?;
        Ok(InferRequest {
            timeout,
            header_len,
            traceparent: trace_header(headers, "traceparent"),
            tracestate: trace_header(headers, "tracestate"),
            tenant: access.stamp(),
        })
    }
}
