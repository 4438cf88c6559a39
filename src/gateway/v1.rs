//! The OpenAI-compatible routes: `POST /v1/completions`, `POST /v1/chat/completions` (one
//! generation job each, answered whole or, with `stream: true`, as `data: {chunk}` events
//! ending with `data: [DONE]`), `GET /v1/models` and `GET /v1/models/{model}`. Requests and
//! answers are translated in [`super::openai`], chat messages rendered in [`super::chat`], the
//! job published and read in [`super::generation`]; admission is `/infer`'s, after the key's
//! models (403; `/v1/models` lists only those). Every error is in the API's shape.
//!
//! `/v1/models` lists the models of `repository.path` (or `repository.models` when set) whose
//! fleet metadata has a `generate` object: the gateway asks each model's workers through its
//! queue, as for `/v2/models/{m}` (cached `gateway.metadata_cache_ms`); a model no worker
//! serves is not listed.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::{self, Access};
use super::chat::{self, ChatTemplate};
use super::generation::{event_stream, sse_event, Generation, JobRequest};
use super::http::{admit, read_body, request_timeout, take_place, trace_header, Refusal};
use super::job::{Answer, Failure};
use super::metrics::Endpoint;
use super::openai::{ApiError, Kind, Prompt, Reply, Request};
use super::policy;
use super::Gateway;
use crate::protocol::ModelName;

/// The header that carries a job's own finish reason (`deadline`, `cancelled`, …) beside the
/// API's `finish_reason`, in a whole answer.
pub const FINISH_REASON_HEADER: &str = "infermq-finish-reason";

pub async fn completions(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    timed(&gw, Endpoint::Completions, async {
        let asked = Asked {
            kind: Kind::Completion,
            query: query.as_deref(),
            headers: &headers,
            access: &access,
        };
        serve(&gw, asked, body).await
    })
    .await
}

pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    timed(&gw, Endpoint::ChatCompletions, async {
        let asked = Asked {
            kind: Kind::Chat,
            query: query.as_deref(),
            headers: &headers,
            access: &access,
        };
        serve(&gw, asked, body).await
    })
    .await
}

/// What a completion request brings besides its body.
struct Asked<'a> {
    kind: Kind,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    access: &'a Access,
}

/// Counts and times an answer, labelled with the model when its queue exists.
async fn timed<F>(gw: &Gateway, endpoint: Endpoint, handler: F) -> Response
where
    F: std::future::Future<Output = (Option<ModelName>, Response)>,
{
    let started = Instant::now();
    let gauge = gw.metrics.in_flight();
    gauge.inc();
    let (model, response) = handler.await;
    gauge.dec();
    let label = model.as_ref().map(ModelName::as_str).unwrap_or("");
    gw.metrics.answered(
        label,
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// An error answer in the API's shape (429 and 503 with `Retry-After`).
fn api_error(error: &ApiError, retry_after: Option<u64>) -> Response {
    let mut response = (error.status, axum::Json(error.body())).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A refusal of the gateway's own, in the API's shape.
fn refused(refusal: &Refusal) -> Response {
    let error = ApiError {
        status: refusal.status(),
        message: refusal.message().to_string(),
        param: (refusal.status() == StatusCode::NOT_FOUND).then(|| "model".to_string()),
        code: match refusal.status().as_u16() {
            404 => Some("model_not_found".into()),
            429 => Some("rate_limit_exceeded".into()),
            _ => None,
        },
    };
    api_error(&error, refusal.retry_after())
}

async fn serve(
    gw: &Arc<Gateway>,
    asked: Asked<'_>,
    body: Result<Bytes, BytesRejection>,
) -> (Option<ModelName>, Response) {
    let Asked {
        kind,
        query,
        headers,
        access,
    } = asked;
    let permit = match take_place(gw) {
        Ok(permit) => permit,
        Err(refusal) => return (None, refused(&refusal)),
    };
    let body = match read_body(gw, body) {
        Ok(body) => body,
        Err(refusal) => return (None, refused(&refusal)),
    };
    let request = match Request::parse(kind, &body) {
        Ok(request) => request,
        Err(error) => return (None, api_error(&error, None)),
    };
    let model = match policy::check_model(&request.model) {
        Ok(model) => model,
        Err(message) => return (None, api_error(&ApiError::invalid("model", message), None)),
    };
    access.meter.model(model.as_str());
    if let Err(message) = access.allows(model.as_str()) {
        return (None, auth::forbidden(true, message));
    }
    let timeout = match request_timeout(gw, query, headers) {
        Ok(timeout) => timeout,
        Err(message) => {
            let error = ApiError {
                status: StatusCode::BAD_REQUEST,
                message,
                param: None,
                code: None,
            };
            return (None, api_error(&error, None));
        }
    };
    if let Err(refusal) = admit(gw, &model, gw.settings.max_queue_depth).await {
        let label = refusal.known().then(|| model.clone());
        return (label, refused(&refusal));
    }
    let text = match &request.prompt {
        Prompt::Text(text) => text.clone(),
        Prompt::Messages(messages) => {
            let rendered = gw
                .chat_template(&model)
                .and_then(|template| template.render(messages));
            match rendered {
                Ok(text) => text,
                Err(why) => {
                    let error = ApiError::invalid("messages", why);
                    return (Some(model), api_error(&error, None));
                }
            }
        }
    };
    let job = JobRequest {
        model: &model,
        version: None,
        body: request.job(text),
        stream: request.stream,
        timeout,
        traceparent: trace_header(headers, "traceparent"),
        tracestate: trace_header(headers, "tracestate"),
        tenant: access.stamp(),
        meter: access.meter.clone(),
    };
    let mut generation = match gw.generate(job, permit).await {
        Ok(generation) => generation,
        Err(failure) => return (Some(model), failed(&failure, kind)),
    };
    let reply = Reply::new(kind, generation.id(), unix_now(), &request.model);
    let first = match generation.next().await {
        Some(Ok(answer)) => answer,
        Some(Err(failure)) => return (Some(model), failed(&failure, kind)),
        None => {
            let failure = Failure::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                "the job ended unanswered".into(),
            );
            return (Some(model), failed(&failure, kind));
        }
    };
    let response = if request.stream {
        stream(generation, first, reply, request.include_usage)
    } else {
        whole(generation, first, &reply, kind).await
    };
    (Some(model), response)
}

fn failed(failure: &Failure, kind: Kind) -> Response {
    let retry = matches!(failure.status.as_u16(), 503).then_some(1);
    api_error(&ApiError::from_failure(failure, kind), retry)
}

/// A job asked for whole: its one answer (a streamed job's pieces joined, should a worker
/// stream it anyway).
async fn whole(mut generation: Generation, first: Answer, reply: &Reply, kind: Kind) -> Response {
    let mut text = first.text.clone();
    let mut last = first;
    while !last.is_last() {
        match generation.next().await {
            Some(Ok(answer)) => {
                text.push_str(&answer.text);
                last = answer;
            }
            Some(Err(failure)) => return failed(&failure, kind),
            None => break,
        }
    }
    let finish = last.finish_reason.as_deref().unwrap_or("length");
    let mut response = axum::Json(reply.whole(&text, finish, last.usage)).into_response();
    if let Ok(value) = HeaderValue::from_str(finish) {
        response.headers_mut().insert(FINISH_REASON_HEADER, value);
    }
    response
}

/// A streamed job as the API streams: a chat's first chunk names the role; each piece is a
/// chunk; the last chunk has the finish reason (and with `include_usage` one more carries the
/// usage); then `data: [DONE]`.
fn stream(generation: Generation, first: Answer, reply: Reply, include_usage: bool) -> Response {
    let kind = reply.kind;
    let chunk = |value: Value| sse_event(value.to_string().as_bytes());
    let events = move |answer: &Answer, opening: bool| {
        let mut events = Vec::new();
        if opening && reply.kind == Kind::Chat {
            events.extend_from_slice(&chunk(reply.chunk(Some(""), true, None, include_usage)));
        }
        if !answer.text.is_empty() {
            let piece = reply.chunk(Some(&answer.text), false, None, include_usage);
            events.extend_from_slice(&chunk(piece));
        }
        if let Some(finish) = &answer.finish_reason {
            let text = (reply.kind == Kind::Completion).then_some("");
            let last = reply.chunk(text, false, Some(finish), include_usage);
            events.extend_from_slice(&chunk(last));
            if let (true, Some(used)) = (include_usage, answer.usage) {
                events.extend_from_slice(&chunk(reply.usage_chunk(used)));
            }
            events.extend_from_slice(b"data: [DONE]\n\n");
        }
        Bytes::from(events)
    };
    let opening = events(&first, true);
    event_stream(generation, opening, move |next| match next {
        Some(Ok(answer)) => events(&answer, false),
        // Mid-stream, the status is sent: the error is the stream's last event.
        Some(Err(failure)) => {
            let error = ApiError::from_failure(&failure, kind);
            let mut bytes = sse_event(error.body().to_string().as_bytes()).to_vec();
            bytes.extend_from_slice(b"data: [DONE]\n\n");
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`: the generating models of the repository that workers serve and the key
/// may use.
pub async fn models(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
) -> Response {
    timed(&gw, Endpoint::Models, async {
        let mut names = gw.repository_models();
        names.retain(|name| access.allows(name.as_str()).is_ok());
        let found = futures_util::future::join_all(names.iter().map(|name| gw.generating(name)));
        let data: Vec<Value> = found.await.into_iter().flatten().collect();
        (
            None,
            axum::Json(json!({"object": "list", "data": data})).into_response(),
        )
    })
    .await
}

/// `GET /v1/models/{model}`: one generating model, or 404 (403: one the key may not use).
pub async fn model(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Response {
    timed(&gw, Endpoint::Models, async {
        let Ok(model) = ModelName::parse(&name) else {
            let error = ApiError::invalid(
                "model",
                format!("model name {:?}: not a model name", policy::echo(&name)),
            );
            return (None, api_error(&error, None));
        };
        access.meter.model(model.as_str());
        if let Err(message) = access.allows(model.as_str()) {
            return (None, auth::forbidden(true, message));
        }
        match gw.generating(&model).await {
            Some(entry) => (Some(model), axum::Json(entry).into_response()),
            None => {
                let error = ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!(
                        "The model {:?} does not exist or does not generate text",
                        model.as_str()
                    ),
                    param: Some("model".into()),
                    code: Some("model_not_found".into()),
                };
                (None, api_error(&error, None))
            }
        }
    })
    .await
}

impl Gateway {
    /// The models named by `repository.models`, else the directories of `repository.path`
    /// whose names are model names (sorted).
    fn repository_models(&self) -> Vec<ModelName> {
        let mut names: Vec<ModelName> = if self.repository.models.is_empty() {
            std::fs::read_dir(&self.repository.path)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|entry| entry.path().is_dir())
                        .filter_map(|entry| ModelName::parse(entry.file_name().to_str()?).ok())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            let names = self.repository.models.iter();
            names
                .filter_map(|name| ModelName::parse(name).ok())
                .collect()
        };
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names
    }

    /// The `/v1/models` entry of `model` when workers serve it and its metadata has a
    /// `generate` object.
    async fn generating(&self, model: &ModelName) -> Option<Value> {
        let answer = self.metadata(model, None).await;
        if answer.status() != StatusCode::OK {
            return None;
        }
        let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .ok()?;
        let metadata: Value = serde_json::from_slice(&body).ok()?;
        metadata.get("generate")?;
        let created = std::fs::metadata(self.repository.path.join(model.as_str()))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(
            json!({"id": model.as_str(), "object": "model", "created": created,
            "owned_by": "infermq"}),
        )
    }

    /// `model`'s chat template from `repository.path`, compiled once per
    /// `gateway.metadata_cache_ms`.
    fn chat_template(&self, model: &ModelName) -> Result<Arc<ChatTemplate>, String> {
        let now = Instant::now();
        if let Some(found) = self.templates.get(model.as_str(), now) {
            return found.as_ref().clone();
        }
        let found = Arc::new(chat::find(&self.repository.path, model.as_str()).map(Arc::new));
        self.templates.put(model.as_str(), found.clone(), now);
        found.as_ref().clone()
    }
}
