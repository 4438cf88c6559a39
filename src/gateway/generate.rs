//! Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` answers a
//! generation job (docs/PROTOCOL.md "Generation jobs": the body is the job's) with the worker's
//! answer, and `/generate_stream` with its pieces as server-sent events (`data: {json}`), as
//! they come. The route decides `parameters.stream`; the client's `id` is echoed, while on the
//! wire the job carries the gateway's own ([`super::generation`]). Admission is `/infer`'s:
//! the key's models (403), `gateway.max_in_flight` and `gateway.max_queue_depth` (429), a
//! missing queue (404).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::auth::Access;
use super::generation::{event_stream, sse_event, JobRequest};
use super::http::{
    admit, check_path, counted, error, read_body, request_timeout, take_place, trace_header,
    ModelPath,
};
use super::job::{restore_id, Failure};
use super::metrics::Endpoint;
use super::Gateway;
use crate::protocol::{encode_error, ErrorCode};

pub async fn generate(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(path): Path<ModelPath>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = path.model.clone();
    counted(&gw, &model, Endpoint::Generate, async {
        let request = Asked {
            path: &path,
            query: query.as_deref(),
            headers: &headers,
            access: &access,
        };
        serve(&gw, request, body, false).await
    })
    .await
}

pub async fn generate_stream(
    State(gw): State<Arc<Gateway>>,
    Extension(access): Extension<Access>,
    Path(path): Path<ModelPath>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = path.model.clone();
    counted(&gw, &model, Endpoint::GenerateStream, async {
        let request = Asked {
            path: &path,
            query: query.as_deref(),
            headers: &headers,
            access: &access,
        };
        serve(&gw, request, body, true).await
    })
    .await
}

/// What a generate request brings besides its body.
struct Asked<'a> {
    path: &'a ModelPath,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    access: &'a Access,
}

/// Answers one generate request; `(known, response)` as [`counted`] takes them.
async fn serve(
    gw: &Arc<Gateway>,
    asked: Asked<'_>,
    body: Result<Bytes, BytesRejection>,
    stream: bool,
) -> (bool, Response) {
    let Asked {
        path,
        query,
        headers,
        access,
    } = asked;
    let permit = match take_place(gw) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.answer(),
    };
    let model = match check_path(path, access) {
        Ok(model) => model,
        Err(refusal) => return refusal.answer(),
    };
    let body = match read_body(gw, body) {
        Ok(body) => body,
        Err(refusal) => return refusal.answer(),
    };
    let timeout = match request_timeout(gw, query, headers) {
        Ok(timeout) => timeout,
        Err(message) => return (false, error(StatusCode::BAD_REQUEST, &message)),
    };
    // Only the body's shape and `id` are read here; the worker checks every field.
    let (body, client_id) = match job_fields(&body) {
        Ok(read) => read,
        Err((id, message)) => {
            let answer = encode_error(
                id.as_deref(),
                model.as_str(),
                ErrorCode::InvalidRequest,
                &message,
            );
            return (false, json(StatusCode::BAD_REQUEST, answer));
        }
    };
    if let Err(refusal) = admit(gw, &model, gw.settings.max_queue_depth).await {
        return refusal.answer();
    }
    let request = JobRequest {
        model: &model,
        version: path.version.as_deref(),
        body,
        stream,
        timeout,
        traceparent: trace_header(headers, "traceparent"),
        tracestate: trace_header(headers, "tracestate"),
        tenant: access.stamp(),
        meter: access.meter.clone(),
    };
    let mut generation = match gw.generate(request, permit).await {
        Ok(generation) => generation,
        Err(failure) => return (true, failed(failure, client_id.as_deref())),
    };
    // The first answer decides the status: an error result is answered as such, not as a
    // stream that fails at once.
    let first = match generation.next().await {
        Some(Ok(answer)) => answer,
        Some(Err(failure)) => return (true, failed(failure, client_id.as_deref())),
        None => {
            return (
                true,
                error(StatusCode::BAD_GATEWAY, "the job ended unanswered"),
            )
        }
    };
    let relayed = move |mut body: Map<String, Value>| {
        restore_id(&mut body, client_id.as_deref());
        serde_json::to_vec(&body).unwrap_or_default()
    };
    if !stream {
        return (true, json(StatusCode::OK, relayed(first.body)));
    }
    let first = sse_event(&relayed(first.body.clone()));
    let response = event_stream(generation, first, move |next| match next {
        Some(Ok(answer)) => sse_event(&relayed(answer.body)),
        // Mid-stream, the status is sent: the failure is the stream's last event.
        Some(Err(failure)) => sse_event(
            &serde_json::json!({"error": failure.message})
                .to_string()
                .into_bytes(),
        ),
        None => Bytes::new(),
    });
    (true, response)
}

/// A body refused before publishing: the client's `id` where it has one, and why.
type Refused = (Option<String>, String);

/// The job body as a JSON object, and the client's `id`; the refusal names the field, as the
/// worker's would.
fn job_fields(body: &[u8]) -> Result<(Map<String, Value>, Option<String>), Refused> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| (None, format!("body: not valid JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err((None, "body: expected a JSON object".into()));
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err((None, "id: expected a string".into())),
    };
    Ok((object, id))
}

/// A failure as the extension answers it: the worker's error result (its `id` the client's),
/// or the gateway's `{"error": message}`.
fn failed(failure: Failure, client_id: Option<&str>) -> Response {
    let worker_answer = failure
        .body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(b).ok());
    match worker_answer {
        Some(mut body) => {
            restore_id(&mut body, client_id);
            json(
                failure.status,
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
        None => error(failure.status, &failure.message),
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::job_fields;

    #[test]
    fn the_body_is_an_object_with_a_string_id() {
        let (body, id) = job_fields(br#"{"id":"a","text_input":"In"}"#).unwrap();
        assert_eq!(id.as_deref(), Some("a"));
        assert_eq!(body["text_input"], "In");
        assert_eq!(job_fields(br#"{"text_input":"In"}"#).unwrap().1, None);
        let refused = |b: &[u8]| job_fields(b).unwrap_err().1;
        assert_eq!(refused(b"[1]"), "body: expected a JSON object");
        assert_eq!(refused(br#"{"id":3}"#), "id: expected a string");
        assert!(refused(b"{").starts_with("body: not valid JSON"));
    }
}
