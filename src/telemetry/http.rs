//! The worker's HTTP side: Prometheus scrape, liveness, readiness and the model list.
//!
//! Read-only and off the job path: handlers only render [`Metrics`] and ask a
//! [`StatusSource`] (implemented by the worker) for readiness and model metadata.
//! Routes: `GET /metrics`, `/healthz`, `/readyz`, `/v2/models`, `/v2/models/{name}`, and the
//! KServe v2 aliases `/v2/health/live`, `/v2/health/ready`. [`serve`] stops accepting when its
//! token is cancelled and returns once open requests are answered.

use super::metrics::Metrics;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the HTTP side asks of the running worker.
pub trait StatusSource: Send + Sync + 'static {
    /// `Ok` when the worker can take jobs (broker connected, every configured model loaded);
    /// `Err(reason)` is answered 503 with the reason as the body.
    /// `Ok` with a note shown under `ready` (refused models), or why it is not ready.
    fn readiness(&self) -> Result<Option<String>, String>;
    /// The body of `GET /v2/models`: an array of model objects with a `"name"` field, an
    /// object with such an array under `"models"`, or an object keyed by model name.
    fn models(&self) -> Value;
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<dyn StatusSource>,
}

/// The routes, for [`serve`] or for embedding in another server.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v2/health/live", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v2/health/ready", get(readyz))
        .route("/v2/models", get(models))
        .route("/v2/models/{name}", get(model))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then finishes open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.status.readiness() {
        Ok(note) => {
            let mut body = String::from("ready");
            if let Some(node) = state.metrics.broker_node.get() {
                body.push_str(&format!("\nbroker node: {node}"));
            }
            if let Some(note) = note {
                body.push_str(&format!("\n{note}"));
            }
            body.into_response()
        }
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn models(State(state): State<HttpState>) -> Json<Value> {
    Json(state.status.models())
}

async fn model(State(state): State<HttpState>, Path(name): Path<String>) -> Response {
    match find_model(state.status.models(), &name) {
        Some(found) => Json(found).into_response(),
        None => {
            let body = json!({ "error": format!("unknown model: {name}") });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// Picks one model out of the shapes [`StatusSource::models`] may return.
fn find_model(models: Value, name: &str) -> Option<Value> {
    let by_name = |list: Vec<Value>| {
        list.into_iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(name))
    };
    match models {
        Value::Array(list) => by_name(list),
        Value::Object(mut map) => match map.remove("models") {
            Some(Value::Array(list)) => by_name(list),
            // Not a list under "models": the object is keyed by model name.
            Some(other) => {
                map.insert("models".to_string(), other);
                map.remove(name)
            }
            None => map.remove(name),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
