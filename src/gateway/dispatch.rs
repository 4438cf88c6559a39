//! The request path of gathering: each inference request is prepared ([`gather::prepare`]),
//! then either published as its own job as before, refused here as the worker would refuse it,
//! or handed to its key's group ([`super::groups::Gathering`]) and answered through a oneshot by the task that
//! publishes its group's job.
//!
//! A group's job is published by a spawned task, so that a client that leaves does not cancel
//! the others' job. When the job is answered, that task splits the result and answers every
//! request, then publishes what waited meanwhile. If the worker fails the job (an error result,
//! or a result that cannot be split), each request is sent again on its own, so no request
//! gets another's error. Each request waits at most its own timeout (504), whatever its group.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::sync::oneshot;

use super::cache::Lookup;
use super::gather::{self, Candidate, GatherKey, ModelInfo, Prepared, Solo};
use super::groups::{Arrival, Limits};
use super::http::{error, InferRequest};
use super::merge::{merge, row_ranges, split};
use super::replies::CallError;
use super::Gateway;
use crate::broker::headers::{BINARY_HEADER, ERROR_CODE};
use crate::client::JobProperties;
use crate::protocol::text::bounded;
use crate::protocol::{encode_error, EncodedBody, ErrorCode, ModelName};
use crate::telemetry::trace::{TraceContext, MAX_LINKS};

/// A request waiting in its group for a job to carry it.
pub struct Waiter {
    model: ModelName,
    version: Option<String>,
    candidate: Box<Candidate>,
    info: Arc<ModelInfo>,
    body: Bytes,
    header_len: Option<usize>,
    /// The request's `traceparent` and `tracestate`, as it sent them.
    trace: (Option<String>, Option<String>),
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Response>,
}

impl Waiter {
    /// The request as it came, with what is left of its timeout.
    fn alone(&self) -> InferRequest<'_> {
        InferRequest {
            timeout: self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now()),
            header_len: self.header_len,
            traceparent: self.trace.0.as_deref(),
            tracestate: self.trace.1.as_deref(),
            tenant: self.candidate.key.tenant.as_deref(),
        }
    }

    /// The request's trace context, when it sent a valid one: a span link of the group's job.
    fn link(&self) -> Option<TraceContext> {
        TraceContext::from_values(self.trace.0.as_deref()?, self.trace.1.as_deref())
    }
}

/// Answers an inference request: gathered with others when it can be, else as its own job.
pub async fn infer(
    gw: &Arc<Gateway>,
    model: &ModelName,
    version: Option<&str>,
    request: InferRequest<'_>,
    body: Bytes,
) -> Response {
    let (candidate, info) = match route(gw, model, version, &request, &body) {
        Route::Gather(candidate, info) => (candidate, info),
        Route::Solo(reason) => {
            gw.metrics.solo(model.as_str(), reason);
            return gw.publish(model, version, request, &body).await;
        }
        Route::Refuse(refusal) => return refusal,
    };
    let (reply, answer) = oneshot::channel();
    let timeout = request.timeout;
    let limits = Limits {
        max_rows: info.max_batch_size,
        max_bytes: gw.gather_bytes,
        max_requests: MAX_LINKS,
    };
    let key = candidate.key.clone();
    let rows = candidate.rows;
    let bytes = candidate.bytes;
    let waiter = Waiter {
        model: model.clone(),
        version: version.map(str::to_string),
        candidate,
        info,
        body,
        header_len: request.header_len,
        trace: (
            request.traceparent.map(str::to_string),
            request.tracestate.map(str::to_string),
        ),
        deadline: tokio::time::Instant::now() + timeout,
        reply,
    };
    let arrival = match gw.gathering.lock() {
        Ok(mut g) => g.arrive(&key, waiter, rows, bytes, limits, Instant::now()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "gathering state lost"),
    };
    match arrival {
        Arrival::Send(group) => {
            tokio::spawn(dispatch_task(gw.clone(), key, group));
        }
        Arrival::Wait => {}
        Arrival::Hold(until) => {
            let gw = gw.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                let group = gw.gathering.lock().ok().and_then(|mut g| g.release(&key));
                if let Some(group) = group {
                    dispatch_task(gw, key, group).await;
                }
            });
        }
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway lost the request's job",
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            &CallError::Timeout(timeout).to_string(),
        ),
    }
}

/// Where a request goes.
enum Route {
    Gather(Box<Candidate>, Arc<ModelInfo>),
    Solo(Solo),
    /// Refused here, as the worker would refuse it.
    Refuse(Response),
}

fn route(
    gw: &Arc<Gateway>,
    model: &ModelName,
    version: Option<&str>,
    request: &InferRequest<'_>,
    body: &[u8],
) -> Route {
    if gw.settings.gather_window == 0 {
        return Route::Solo(Solo::Off);
    }
    let traits = gather::Traits {
        model: model.as_str(),
        path_version: version,
        own_deadline: request.timeout < gw.default_timeout(),
        binary_header_len: request.header_len,
        tenant: request.tenant,
    };
    // Before the metadata: a request that goes alone anyway never asks the fleet for it.
    if let Some(reason) = traits.solo() {
        return Route::Solo(reason);
    }
    let Some(info) = model_info(gw, model, version) else {
        return Route::Solo(Solo::NoMetadata);
    };
    match gather::prepare(traits, body, &info, gw.gather_bytes) {
        Prepared::Gather(candidate) => Route::Gather(candidate, info),
        Prepared::Solo(reason) => Route::Solo(reason),
        Prepared::Refuse { id, error } => {
            let message = bounded(error.to_string());
            let body = encode_error(
                id.as_deref(),
                model.as_str(),
                ErrorCode::InvalidRequest,
                &message,
            );
            Route::Refuse(json(StatusCode::BAD_REQUEST, body))
        }
    }
}

/// The model version's metadata for gathering, when known. The first request that finds it
/// unknown (or expired) asks the fleet in the background and goes alone meanwhile.
fn model_info(
    gw: &Arc<Gateway>,
    model: &ModelName,
    version: Option<&str>,
) -> Option<Arc<ModelInfo>> {
    let key = format!("{model}/{}", version.unwrap_or(""));
    match gw.models.get_or_claim(&key, Instant::now()) {
        Lookup::Fresh(info) => return info,
        Lookup::Missing => gw.models.put(&key, None, Instant::now()),
        Lookup::Refresh => {}
    }
    let gw = gw.clone();
    let model = model.clone();
    let version = version.map(str::to_string);
    tokio::spawn(async move {
        let answer = gw.metadata(&model, version.as_deref()).await;
        let info = if answer.status() == StatusCode::OK {
            let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await;
            body.ok().and_then(|b| ModelInfo::parse(&b)).map(Arc::new)
        } else {
            None
        };
        gw.models.put(&key, info, Instant::now());
    });
    None
}

/// Publishes `group` as one job, answers its requests, then whatever waited meanwhile (boxed:
/// it spawns itself when more than one job may leave).
fn dispatch_task(
    gw: Arc<Gateway>,
    key: GatherKey,
    group: Vec<Waiter>,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(dispatch_loop(gw, key, group))
}

async fn dispatch_loop(gw: Arc<Gateway>, key: GatherKey, mut group: Vec<Waiter>) {
    loop {
        group.retain(|w| !w.reply.is_closed());
        send(&gw, &key, group).await;
        let mut next = match gw.gathering.lock() {
            Ok(mut g) => g.finished(&key),
            Err(_) => return,
        };
        let Some(first) = next.pop() else {
            return;
        };
        for other in next {
            tokio::spawn(dispatch_task(gw.clone(), key.clone(), other));
        }
        group = first;
    }
}

/// One job for `group`: its request as it came when alone, else the merged body.
async fn send(gw: &Arc<Gateway>, key: &GatherKey, mut group: Vec<Waiter>) {
    if group.len() <= 1 {
        if let Some(w) = group.pop() {
            gw.metrics.solo(w.model.as_str(), Solo::Alone);
            let response = gw
                .publish(&w.model, w.version.as_deref(), w.alone(), &w.body)
                .await;
            let _ = w.reply.send(response);
        }
        return;
    }
    let model = group[0].model.clone();
    let info = group[0].info.clone();
    let requests: Vec<_> = group.iter().map(|w| &w.candidate.request).collect();
    let Ok(merged) = merge(key, &info.signature, &requests) else {
        return retry(gw, group).await;
    };
    let deadline = group
        .iter()
        .map(|w| w.deadline)
        .max()
        .unwrap_or_else(tokio::time::Instant::now);
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let links: Vec<TraceContext> = group.iter().filter_map(Waiter::link).collect();
    let properties = properties(SystemTime::now() + timeout, key, &merged, &links);
    gw.metrics.published(model.as_str(), group.len());
    let queue = gw.queue(&model);
    let delivery = match gw
        .broker
        .call(&queue, &merged.body, properties, timeout)
        .await
    {
        Ok(delivery) => delivery,
        Err(e) => {
            for w in group {
                let _ = w.reply.send(gw.call_failed(&model, &e));
            }
            return;
        }
    };
    let failed = crate::broker::headers::find(delivery.properties.headers().as_ref(), ERROR_CODE);
    let header_len =
        crate::broker::headers::find(delivery.properties.headers().as_ref(), BINARY_HEADER)
            .and_then(crate::broker::headers::as_string)
            .and_then(|l| l.parse::<usize>().ok());
    let ranges = row_ranges(group.iter().map(|w| w.candidate.rows));
    let parts = match failed {
        Some(_) => None,
        None => split(&delivery.data, header_len, &requests, &ranges).ok(),
    };
    let Some(parts) = parts else {
        return retry(gw, group).await;
    };
    for (w, part) in group.into_iter().zip(parts) {
        let _ = w.reply.send(answer(part));
    }
}

/// Sends each request of a failed group again, on its own and all at once.
async fn retry(gw: &Arc<Gateway>, group: Vec<Waiter>) {
    let each = group.into_iter().map(|w| async move {
        gw.metrics.solo(w.model.as_str(), Solo::Retried);
        let response = gw
            .publish(&w.model, w.version.as_deref(), w.alone(), &w.body)
            .await;
        let _ = w.reply.send(response);
    });
    futures_util::future::join_all(each).await;
}

/// The merged job's properties: the group's latest deadline (each request still waits only
/// its own timeout), the version, binary framing, a span link to each traced request, and
/// the tenant the group's requests share.
fn properties(
    deadline: SystemTime,
    key: &GatherKey,
    merged: &EncodedBody,
    links: &[TraceContext],
) -> JobProperties {
    JobProperties::new()
        .deadline(deadline)
        .model_version(key.version.as_deref())
        .binary_header_len(merged.header_len)
        .trace_links(links)
        .tenant(key.tenant.as_deref())
}

/// A request's part of a merged result, framed as the worker frames a result.
fn answer(part: EncodedBody) -> Response {
    let mut response = Response::new(Body::from(part.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(part.content_type),
    );
    if let Some(len) = part.header_len {
        headers.insert(BINARY_HEADER, HeaderValue::from(len));
    }
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
