//! A generation job published by the gateway, and its answers as they come: the I/O under the
//! generate extension's routes and the OpenAI-compatible ones.
//!
//! Each job gets the gateway's own unique id ([`super::replies::BrokerPools::job_id`]) as its
//! body `id` and correlation id, and its deadline as `x-deadline-ms` (the worker ends the job
//! with `finish_reason` `deadline` then, with the text so far); the gateway waits
//! [`GRACE`] longer for that last answer. A [`Generation`] dropped before its last answer —
//! the client left, the response was cut, the gateway gave up waiting — publishes a cancel
//! message for its job, so no worker keeps generating for nobody. A [`Generation`] holds its
//! request's place in `gateway.max_in_flight` until it is dropped.
//!
//! The job carries the API key's name (`x-infermq-tenant`), and its request's [`Meter`] is
//! given the tokens of its last answer (and charges them to the key's `tokens_per_minute`). A
//! generation dropped before its last answer hands its reply stream to a task that waits for
//! that answer (the worker ends a cancelled job with one, `finish_reason: cancelled` and its
//! usage), at most until the job's deadline and [`GRACE`], so a client that leaves a stream
//! early still pays for what was generated.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::job::{job_body, Answer, Failure, Sequencer};
use super::replies::{BrokerPools, CallError, ReplyStream};
use super::usage::Meter;
use super::Gateway;
use crate::broker::headers::{as_string, find, ERROR_CODE};
use crate::client::JobProperties;
use crate::protocol::ModelName;

/// How long after a job's deadline the gateway still waits for its last answer (the worker
/// answers `finish_reason: deadline` at the deadline).
pub const GRACE: Duration = Duration::from_secs(2);

/// What a route asks of a generation job.
pub struct JobRequest<'a> {
    pub model: &'a ModelName,
    pub version: Option<&'a str>,
    /// The job's body as the client gave it (its `id` is replaced).
    pub body: Map<String, Value>,
    pub stream: bool,
    pub timeout: Duration,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// The API key's name, stamped on the job.
    pub tenant: Option<&'a str>,
    /// The request's usage: given the job's tokens.
    pub meter: Meter,
}

/// A published generation job: its answers, in order, without the repeats of a restarted
/// stream ([`Sequencer`]).
pub struct Generation {
    /// The job's id on the wire (the gateway's, not the client's).
    id: String,
    /// `None` once handed to the task that waits for the last answer ([`Drop`]).
    replies: Option<ReplyStream>,
    sequencer: Sequencer,
    deadline: tokio::time::Instant,
    timeout: Duration,
    done: bool,
    meter: Meter,
    cancel: CancelOnDrop,
    _permit: OwnedSemaphorePermit,
}

impl Gateway {
    /// Publishes a generation job; the failure is why it could not be published.
    pub(super) async fn generate(
        self: &Arc<Self>,
        request: JobRequest<'_>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Generation, Failure> {
        let id = self.broker.job_id();
        let body = job_body(
            request.body,
            &id,
            request.stream,
            rand::random::<u32>().into(),
        );
        let properties = JobProperties::new()
            .deadline(SystemTime::now() + request.timeout)
            .model_version(request.version)
            .trace_context(request.traceparent, request.tracestate)
            .tenant(request.tenant);
        let queue = self.queue(request.model);
        self.metrics.published(request.model.as_str(), 1);
        let replies = self
            .broker
            .stream(&queue, &id, &body, properties, request.timeout)
            .await
            .map_err(|e| self.publish_failed(request.model, &e))?;
        Ok(Generation {
            cancel: CancelOnDrop {
                broker: self.broker.clone(),
                prefix: self.prefix.clone(),
                message: serde_json::json!({"id": id, "model": request.model.as_str()}).to_string(),
                armed: true,
            },
            id,
            replies: Some(replies),
            sequencer: Sequencer::default(),
            deadline: tokio::time::Instant::now() + request.timeout,
            timeout: request.timeout,
            done: false,
            meter: request.meter,
            _permit: permit,
        })
    }

    /// Why a job could not be published, as a [`Failure`] (the statuses of `/infer`).
    fn publish_failed(&self, model: &ModelName, e: &CallError) -> Failure {
        match e {
            CallError::Unroutable(_) => {
                self.queues.remove(&self.queue(model));
                Failure::new(
                    StatusCode::NOT_FOUND,
                    "unknown_model",
                    format!("unknown model {model:?}: no worker serves it (no queue)"),
                )
            }
            CallError::Timeout(_) => {
                Failure::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string())
            }
            _ => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

impl Generation {
    /// The job's id on the wire (the gateway's own).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next answer; `None` after the last (the one with a `finish_reason`, or a failure).
    pub async fn next(&mut self) -> Option<Result<Answer, Failure>> {
        if self.done {
            return None;
        }
        let replies = self.replies.as_mut()?;
        loop {
            let message = tokio::time::timeout_at(self.deadline + GRACE, replies.next());
            let delivery = match message.await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        CallError::ChannelLost.to_string(),
                    )));
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err(Failure::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        CallError::Timeout(self.timeout).to_string(),
                    )));
                }
            };
            let code = find(delivery.properties.headers().as_ref(), ERROR_CODE).and_then(as_string);
            let answer = Answer::read(&delivery.data, code.as_deref());
            match &answer {
                Ok(piece) if !self.sequencer.admit(piece) => continue,
                Ok(piece) if !piece.is_last() => {}
                // The job is over: nothing to cancel.
                _ => {
                    self.done = true;
                    self.cancel.armed = false;
                    if let Ok(Answer {
                        usage: Some(used), ..
                    }) = &answer
                    {
                        self.meter
                            .tokens(used.prompt_tokens, used.completion_tokens);
                    }
                }
            }
            return Some(answer);
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped outside a runtime (never in the gateway): nothing is metered.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut replies) = self.replies.take() else {
            return;
        };
        let meter = self.meter.clone();
        let until = self.deadline + GRACE;
        runtime.spawn(async move {
            while let Ok(Some(delivery)) = tokio::time::timeout_at(until, replies.next()).await {
                let code =
                    find(delivery.properties.headers().as_ref(), ERROR_CODE).and_then(as_string);
                match Answer::read(&delivery.data, code.as_deref()) {
                    Ok(answer) if answer.is_last() => {
                        if let Some(used) = answer.usage {
                            meter.tokens(used.prompt_tokens, used.completion_tokens);
                        }
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
}

/// Publishes a cancel message for its job when dropped while armed.
struct CancelOnDrop {
    broker: BrokerPools,
    prefix: String,
    message: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let broker = self.broker.clone();
        let prefix = std::mem::take(&mut self.prefix);
        let message = std::mem::take(&mut self.message);
        // Dropped outside a runtime (never in the gateway): the job runs to its end.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            match broker.cancel(&prefix, message.as_bytes()).await {
                Ok(()) => tracing::debug!(%message, "Generation job cancelled: its client left"),
                Err(error) => tracing::warn!(%error, %message, "Cannot cancel a generation job"),
            }
        });
    }
}

/// A `text/event-stream` response: the `first` events, then those `events` makes of each
/// later answer of `generation`, and of its end (`None`). The events are sent as they come;
/// the body holds the generation, so a client that leaves cancels the job.
pub fn event_stream<F>(generation: Generation, first: Bytes, events: F) -> Response
where
    F: FnMut(Option<Result<Answer, Failure>>) -> Bytes + Send + 'static,
{
    struct State<F> {
        generation: Generation,
        first: Option<Bytes>,
        events: F,
        ended: bool,
    }
    let state = State {
        generation,
        first: Some(first),
        events,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(first) = state.first.take() {
            return Some((Ok::<Bytes, Infallible>(first), state));
        }
        if state.ended {
            return None;
        }
        let next = state.generation.next().await;
        state.ended = next.is_none();
        let chunk = (state.events)(next);
        Some((Ok(chunk), state))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One server-sent event: `data: <json>` and a blank line.
pub fn sse_event(data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}
