//! The gateway path: each job one streamed request to the gateway's OpenAI-compatible API, as
//! the `openai` package sends it (`stream: true`, `stream_options: {"include_usage": true}`,
//! the prompt as `prompt`, or as one user message for chat), and the answer read as OpenAI's
//! chunks.
//!
//! `--concurrency` clients, each a task with its own keep-alive HTTP/1.1 connection (hyper's
//! connection API: no pool between client and socket), take the next job when their last one
//! ends: the closed loop of the queue path. A connection is opened again only when the gateway
//! closed it or a request on it failed; the report counts connections opened.
//!
//! A stream is read to its end, so that its connection can carry the next request: the chunks'
//! text (`choices[0].text`, or `choices[0].delta.content` for chat) stamps the first and last
//! piece, the chunk with a `finish_reason` is the last piece, the usage chunk gives the tokens,
//! and `data: [DONE]` ends it. Failures are the job's error, `code: detail`: `http-<status>`
//! (the gateway refused the request: its message), `not-sse` (a 200 that is no event stream),
//! `error-event` (`data: {"error": ...}` after the stream began), `not-json` and `bad-chunk` (a
//! chunk not in OpenAI's shape), `truncated` (no finish reason), `no-usage`, `no-text`,
//! `no-done` (no `[DONE]`), and `connect`, `http`, `body` for the transport. Nothing on a
//! connection for the idle timeout gives the whole run up: every client's job in flight is
//! unfinished, as on the queue path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sse::{Event, EventReader};
use crate::{wall, Cli, JobSpec, JobState, Outcome, Route};

/// At most this much of a refusal's body is read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where the requests go.
pub struct Target {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header: the URL's authority as given.
    host: String,
    /// The route under the URL's path, e.g. `/v1/completions`.
    path: String,
    route: Route,
}

impl Target {
    /// The route under `url` (`http://host[:port][/base]`).
    pub fn new(url: &str, route: Route) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--gateway: {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("--gateway: {other}:// is not supported, only http://"),
            None => bail!("--gateway: {url:?} has no scheme; expected http://host:port"),
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            bail!("--gateway: {url:?} has no host");
        };
        Ok(Target {
            address: format!("{host}:{}", uri.port_u16().unwrap_or(80)),
            host: authority.as_str().to_owned(),
            path: format!("{}{}", uri.path().trim_end_matches('/'), route.path()),
            route,
        })
    }
}

/// What every client shares.
struct Shared {
    target: Target,
    model: String,
    temperature: f64,
    authorization: Option<String>,
    specs: Vec<JobSpec>,
    /// The next job to take.
    next: AtomicUsize,
    connections: AtomicUsize,
    idle: Duration,
    /// Cancelled when a client waited `idle` for anything: the run gives up.
    give_up: CancellationToken,
}

/// Runs `specs` through the gateway, `--concurrency` clients at a time.
pub async fn run(
    cli: &Cli,
    target: Target,
    specs: &[JobSpec],
    idle: Duration,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared {
        target,
        model: cli.model.clone(),
        temperature: cli.temperature,
        authorization: cli.api_key.as_ref().map(|key| format!("Bearer {key}")),
        specs: specs.to_vec(),
        next: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        idle,
        give_up: CancellationToken::new(),
    });
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..cli.concurrency.max(1).min(specs.len()) {
        clients.spawn(client_task(Arc::clone(&shared)));
    }
    let mut states: Vec<JobState> = specs
        .iter()
        .map(|s| JobState {
            max_tokens: s.max_tokens,
            ..JobState::default()
        })
        .collect();
    while let Some(done) = clients.join_next().await {
        for (index, state) in done.context("a client task failed")? {
            states[index] = state;
        }
    }
    let gave_up = shared.give_up.is_cancelled();
    Ok(Outcome {
        wall: wall(&states, started, gave_up),
        states,
        stray: 0,
        connections: Some(shared.connections.load(Ordering::Relaxed)),
    })
}

/// One client: takes the next job, runs it on its connection, until no job is left or the
/// run gives up. Returns its jobs' measurements.
async fn client_task(shared: Arc<Shared>) -> Vec<(usize, JobState)> {
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    let mut measured = Vec::new();
    while !shared.give_up.is_cancelled() {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(spec) = shared.specs.get(index) else {
            break;
        };
        let mut state = JobState {
            max_tokens: spec.max_tokens,
            ..JobState::default()
        };
        shared.job(&mut connection, spec, &mut state).await;
        measured.push((index, state));
    }
    measured
}

impl Shared {
    /// `future`'s output, unless nothing came for the idle timeout (then the run gives up) or
    /// another client gave up: `None`.
    async fn within<T>(&self, future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = tokio::time::timeout(self.idle, future) => match out {
                Ok(out) => Some(out),
                Err(_) => {
                    if !self.give_up.is_cancelled() {
                        let idle_s = self.idle.as_secs_f64();
                        tracing::warn!(idle_s, "Nothing from the gateway; giving up");
                    }
                    self.give_up.cancel();
                    None
                }
            },
            () = self.give_up.cancelled() => None,
        }
    }

    /// A new connection to the gateway, ready for a request.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(&self.target.address)
            .await
            .map_err(|e| format!("connect: {}: {e}", self.target.address))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connect: TCP_NODELAY: {e}"))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("connect: handshake: {e}"))?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Gateway connection ended");
            }
        });
        Ok(sender)
    }

    fn request(&self, spec: &JobSpec) -> Request<Full<Bytes>> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": spec.max_tokens,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        match self.target.route {
            Route::Completions => body["prompt"] = json!(spec.prompt),
            Route::Chat => body["messages"] = json!([{"role": "user", "content": spec.prompt}]),
        }
        let mut request = Request::post(self.target.path.as_str())
            .header(header::HOST, self.target.host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.as_str());
        }
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a request from a parsed URI and fixed headers")
    }

    /// Runs one job on `connection` (opened, or opened again, as needed) into `state`; leaves
    /// it unsettled if the run gave up, and the connection closed if it cannot carry another.
    async fn job(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        spec: &JobSpec,
        state: &mut JobState,
    ) {
        let mut kept = connection.take();
        if let Some(sender) = &mut kept {
            match self.within(sender.ready()).await {
                None => return,
                Some(Ok(())) => {}
                Some(Err(_)) => kept = None, // the gateway closed it
            }
        }
        let mut sender = match kept {
            Some(sender) => sender,
            None => match self.within(self.connect()).await {
                None => return,
                Some(Err(error)) => return settle(state, error),
                Some(Ok(sender)) => sender,
            },
        };
        let request = self.request(spec);
        state.published = Some(Instant::now());
        let response = match self.within(sender.send_request(request)).await {
            None => return,
            Some(Err(error)) => return settle(state, format!("http: {error}")),
            Some(Ok(response)) => response,
        };
        let event_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let reusable = if response.status() == StatusCode::OK && event_stream {
            self.read_stream(response, state).await
        } else {
            self.read_refusal(response, state).await
        };
        if reusable {
            *connection = Some(sender);
        }
    }

    /// Reads a refusal's body (or a 200 that is no event stream) for its message. Whether the
    /// connection can carry another request.
    async fn read_refusal(&self, response: Response<Incoming>, state: &mut JobState) -> bool {
        let code = match response.status() {
            StatusCode::OK => "not-sse".to_owned(),
            status => format!("http-{}", status.as_u16()),
        };
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY);
        let (body, reusable) = match self.within(limited.collect()).await {
            None => return false,
            Some(Ok(body)) => (body.to_bytes(), true),
            Some(Err(_)) => (Bytes::new(), false),
        };
        // OpenAI's `{"error": {"message": ...}}`, KServe's `{"error": "..."}`, or the text.
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| match &v["error"] {
                Value::String(s) => Some(s.clone()),
                e => e["message"].as_str().map(str::to_owned),
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
        settle(state, format!("{code}: {message}"));
        reusable
    }

    /// Reads an event stream to its end into `state`. Whether the connection can carry another
    /// request.
    async fn read_stream(&self, response: Response<Incoming>, state: &mut JobState) -> bool {
        let mut body = response.into_body();
        let mut reader = EventReader::default();
        let mut events = Vec::new();
        let mut stream = Stream::default();
        loop {
            let frame = match self.within(body.frame()).await {
                None => return false,
                Some(None) => break,
                Some(Some(Err(error))) => {
                    settle(state, format!("body: {error}"));
                    return false;
                }
                Some(Some(Ok(frame))) => frame,
            };
            let at = Instant::now();
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            reader.feed(&data, &mut events);
            for event in events.drain(..) {
                stream.read(self.target.route, &event, at, state);
            }
        }
        let error = stream.error.or_else(|| {
            if state.finish_reason.is_none() {
                Some("truncated: the stream ended without a finish reason".to_owned())
            } else if state.completion_tokens.is_none() {
                Some("no-usage: no chunk carried usage.completion_tokens".to_owned())
            } else if state.first.is_none() {
                Some("no-text: no chunk carried text".to_owned())
            } else if !stream.done {
                Some("no-done: the stream ended without data: [DONE]".to_owned())
            } else {
                None
            }
        });
        state.error = error;
        state.done = true;
        true
    }
}

/// Settles a job as failed.
fn settle(state: &mut JobState, error: String) {
    state.error = Some(error);
    state.done = true;
}

/// What a stream told so far, beyond the job's measurements.
#[derive(Default)]
struct Stream {
    /// `data: [DONE]` came.
    done: bool,
    /// The first thing wrong with the stream, `code: detail`.
    error: Option<String>,
}

impl Stream {
    /// Takes one event that came at `at`.
    fn read(&mut self, route: Route, event: &Event, at: Instant, state: &mut JobState) {
        if self.done || self.error.is_some() {
            return;
        }
        if event.data == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: Value = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(_) if event.name == "error" => {
                return self.fail(format!("error-event: {}", event.data));
            }
            Err(e) => return self.fail(format!("not-json: {e}")),
        };
        if event.name == "error" || !chunk["error"].is_null() {
            let error = &chunk["error"];
            let message = error["message"].as_str().or(error.as_str());
            return self.fail(format!(
                "error-event: {}",
                message.map_or_else(|| event.data.clone(), str::to_owned)
            ));
        }
        let Some(choices) = chunk["choices"].as_array() else {
            return self.fail("bad-chunk: no choices array".to_owned());
        };
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            state.completion_tokens = usage["completion_tokens"].as_u64();
            state.prompt_tokens = usage["prompt_tokens"].as_u64();
        }
        let Some(choice) = choices.first() else {
            return;
        };
        let text = match route {
            Route::Completions => &choice["text"],
            Route::Chat => &choice["delta"]["content"],
        };
        if text.as_str().is_some_and(|t| !t.is_empty()) {
            state.pieces += 1;
            state.first.get_or_insert(at);
            state.last = Some(at);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            state.finish_reason = Some(reason.to_owned());
            state.last = Some(at);
        }
    }

    fn fail(&mut self, error: String) {
        self.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::new("http://127.0.0.1:8000", Route::Completions).unwrap();
        assert_eq!(
            (t.address.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8000", "127.0.0.1:8000", "/v1/completions")
        );
        let t = Target::new("http://gw.local/base/", Route::Chat).unwrap();
        assert_eq!(
            (t.address.as_str(), t.host.as_str(), t.path.as_str()),
            ("gw.local:80", "gw.local", "/base/v1/chat/completions")
        );
        for bad in ["https://gw:443", "gw:8000", "not a url"] {
            assert!(Target::new(bad, Route::Chat).is_err(), "{bad}");
        }
    }

    /// A stream's events read by [`Stream`], each a millisecond after the last.
    fn read(route: Route, events: &[&str]) -> (JobState, Stream, Instant) {
        let t0 = Instant::now();
        let mut state = JobState::default();
        let mut stream = Stream::default();
        for (i, data) in events.iter().enumerate() {
            let event = Event {
                name: String::new(),
                data: (*data).to_owned(),
            };
            stream.read(
                route,
                &event,
                t0 + Duration::from_millis(i as u64),
                &mut state,
            );
        }
        (state, stream, t0)
    }

    #[test]
    fn chat_stream_as_the_gateway_sends_it() {
        let (state, stream, t0) = read(
            Route::Chat,
            &[
                r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"object":"chat.completion.chunk","usage":null}"#,
                r#"{"choices":[{"delta":{"content":" the"},"finish_reason":null,"index":0}],"usage":null}"#,
                r#"{"choices":[{"delta":{"content":"n"},"finish_reason":null,"index":0}],"usage":null}"#,
                r#"{"choices":[{"delta":{},"finish_reason":"length","index":0}],"usage":null}"#,
                r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":22,"total_tokens":25}}"#,
                "[DONE]",
            ],
        );
        assert!(stream.done && stream.error.is_none());
        assert_eq!(state.pieces, 2);
        assert_eq!(state.first, Some(t0 + Duration::from_millis(1)));
        assert_eq!(state.last, Some(t0 + Duration::from_millis(3)));
        assert_eq!(state.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            (state.completion_tokens, state.prompt_tokens),
            (Some(3), Some(22))
        );
    }

    #[test]
    fn completion_stream_and_errors() {
        let (state, stream, t0) = read(
            Route::Completions,
            &[
                r#"{"choices":[{"text":" unto","finish_reason":null,"index":0}],"object":"text_completion"}"#,
                r#"{"choices":[{"text":"","finish_reason":"stop","index":0}]}"#,
            ],
        );
        assert!(!stream.done && stream.error.is_none());
        assert_eq!(
            (state.first, state.last),
            (Some(t0), Some(t0 + Duration::from_millis(1)))
        );
        assert_eq!(state.completion_tokens, None);

        let cases = [
            (
                r#"{"error":{"message":"timed out","type":"server_error"}}"#,
                "error-event: timed out",
            ),
            (r#"{"error":"channel lost"}"#, "error-event: channel lost"),
            ("{not json", "not-json"),
            (
                r#"{"object":"text_completion"}"#,
                "bad-chunk: no choices array",
            ),
        ];
        for (data, error) in cases {
            let (_, stream, _) = read(Route::Completions, &[data, "[DONE]"]);
            let got = stream.error.unwrap_or_default();
            assert!(got.starts_with(error), "{data}: {got}");
            assert!(!stream.done, "nothing counts after the error");
        }
    }
}
