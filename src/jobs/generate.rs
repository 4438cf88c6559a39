//! Generation jobs: a prompt for a decoder version, on its model's queue like any job, in the
//! shape of Triton's generate extension (docs/PROTOCOL.md "Generation"):
//! `{"id", "text_input", "parameters": {"max_tokens", "temperature", "top_p", "top_k", "seed",
//! "stop", "stream"}}`.
//!
//! The body is checked field by field (an unknown field is refused: a typo must not pass
//! silently), the prompt tokenized and checked against the context length, and the job handed
//! to its version's engine ([`crate::execution::generate`]). A relay task per job then carries
//! the engine's events to the job's reply queue: one answer, or with `stream` messages of the
//! text as it comes (each confirmed by the broker; pieces grouped while the previous message
//! waits for its confirm, [`super::pacing`]) and a last one with the finish reason and usage.
//! The job is acked once its last message is confirmed; a piece the broker did not keep sends
//! the job back to its queue, to be generated again from the start, and a piece returned
//! as unroutable (its reply queue is gone) dead-letters it.

use std::sync::Arc;
use std::time::Instant;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cancel::{CancelBoard, OnBoard};
use super::error::JobError;
use super::inflight::InFlight;
use super::kind::JobTasks;
use super::pacing::StreamPacer;
use crate::broker::headers::JobHeaders;
use crate::broker::publisher::Streamed;
use crate::execution::generate::sampling::SamplingParams;
use crate::execution::generate::{Event, Finished, GenerationJob, Generator};
use crate::protocol::ErrorCode;
use crate::serving::ServedVersion;

/// Stop strings a job may give, and bytes in each.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;

/// A generation job's body, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub id: Option<String>,
    pub text_input: String,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
}

const FIELDS: [&str; 3] = ["id", "text_input", "parameters"];
const PARAMETERS: [&str; 7] = [
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
];

/// Reads a generation body; the error names the field (`parameters.top_p: ...`). `id` is read
/// first, so that even a refused job is answered under its id where it has one.
pub fn parse_request(body: &[u8]) -> Result<GenerateRequest, (Option<String>, String)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| (None, format!("body: not valid JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err((None, "body: expected a JSON object".into()));
    };
    let id = match object.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err((None, "id: expected a string".into())),
    };
    let fail = |message: String| (id.clone(), message);
    if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let hint = if object.contains_key("inputs") {
            ": this model generates text; send text_input (docs/PROTOCOL.md \"Generation\")"
        } else {
            ""
        };
        return Err(fail(format!(
            "unknown field {}{hint}; expected id, text_input, parameters",
            quoted(key)
        )));
    }
    let text_input = match object.get("text_input") {
        Some(Value::String(text)) => text.clone(),
        Some(_) => return Err(fail("text_input: expected a string".into())),
        None => return Err(fail("text_input: missing (the prompt, a string)".into())),
    };
    let empty = Map::new();
    let parameters = match object.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Err(fail("parameters: expected an object".into())),
    };
    if let Some(key) = parameters
        .keys()
        .find(|k| !PARAMETERS.contains(&k.as_str()))
    {
        return Err(fail(format!(
            "parameters: unknown field {}; expected one of {}",
            quoted(key),
            PARAMETERS.join(", ")
        )));
    }
    let p = |key: &str| parameters.get(key).filter(|v| !v.is_null());
    let integer = |key: &str, min: u64| -> Result<Option<u64>, (Option<String>, String)> {
        match p(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().filter(|&n| n >= min) {
                Some(n) => Ok(Some(n)),
                None => Err(fail(format!(
                    "parameters.{key}: expected an integer ≥ {min}"
                ))),
            },
        }
    };
    let number = |key: &str, default: f64, ok: &dyn Fn(f64) -> bool, expected: &str| match p(key) {
        None => Ok(default),
        Some(v) => match v.as_f64().filter(|&x| x.is_finite() && ok(x)) {
            Some(x) => Ok(x),
            None => Err(fail(format!("parameters.{key}: expected {expected}"))),
        },
    };
    let max_tokens = integer("max_tokens", 1)?.map(|n| n.min(usize::MAX as u64) as usize);
    let temperature = number(
        "temperature",
        0.0,
        &|x| (0.0..=100.0).contains(&x),
        "a number from 0 (greedy) to 100",
    )?;
    let top_p = number(
        "top_p",
        1.0,
        &|x| x > 0.0 && x <= 1.0,
        "a number above 0, at most 1",
    )?;
    let top_k = integer("top_k", 0)?.unwrap_or(0).min(u32::MAX as u64) as usize;
    let seed = integer("seed", 0)?;
    let stop = match p("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut stop = Vec::with_capacity(items.len().min(MAX_STOP_STRINGS));
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => stop.push(s.clone()),
                    _ => return Err(fail(format!("parameters.stop[{i}]: expected a string"))),
                }
            }
            stop
        }
        Some(_) => {
            return Err(fail(
                "parameters.stop: expected a string or a list of strings".into(),
            ))
        }
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(fail(format!(
            "parameters.stop: {} strings, at most {MAX_STOP_STRINGS}",
            stop.len()
        )));
    }
    if let Some(i) = stop
        .iter()
        .position(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(fail(format!(
            "parameters.stop[{i}]: expected 1 to {MAX_STOP_BYTES} bytes"
        )));
    }
    let stream = match p("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(fail("parameters.stream: expected true or false".into())),
    };
    Ok(GenerateRequest {
        id,
        text_input,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        seed,
        stop,
        stream,
    })
}

/// A key as producers wrote it, cut to 64 bytes for the error.
fn quoted(key: &str) -> String {
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", &key[..end])
}

/// What every answer of a job carries.
struct Answering {
    id: Option<String>,
    model: Arc<str>,
    version: Arc<str>,
    stream: bool,
    stream_interval: std::time::Duration,
}

impl Answering {
    fn body(&self, text: &str, sequence: Option<u64>, end: Option<&Finished>) -> Vec<u8> {
        let mut body = Map::new();
        if let Some(id) = &self.id {
            body.insert("id".into(), json!(id));
        }
        body.insert("model_name".into(), json!(self.model.as_ref()));
        body.insert("model_version".into(), json!(self.version.as_ref()));
        if let Some(sequence) = sequence {
            body.insert("sequence".into(), json!(sequence));
        }
        body.insert("text_output".into(), json!(text));
        if let Some(end) = end {
            body.insert("finish_reason".into(), json!(end.reason.as_str()));
            body.insert(
                "usage".into(),
                json!({"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens}),
            );
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

/// Takes a job of a decoder version: checks it, hands it to the engine, and relays its text
/// from a task of `tasks` (told to stop when the consumer ends: the job goes back to its queue).
pub fn accept(
    served: Arc<ServedVersion>,
    generator: Arc<Generator>,
    board: &Arc<CancelBoard>,
    job: InFlight,
    headers: JobHeaders,
    message_id: Option<String>,
    tasks: &JobTasks,
) {
    let received = job.received();
    let mut request = match parse_request(job.body()) {
        Ok(request) => request,
        Err((id, message)) => {
            let id = id.or(message_id);
            return job.fail(JobError::invalid(message), id.as_deref());
        }
    };
    let id = request.id.clone().or(message_id);
    // A prompt that could not fit the context even of the longest tokens is refused before it
    // is tokenized, so no job costs more than its context's worth of work.
    let most = generator.prompt_bytes_limit();
    if request.text_input.len() > most {
        let message = format!(
            "text_input: {} bytes cannot fit the context length of {} tokens (at most {most} bytes)",
            request.text_input.len(),
            generator.spec.context_length
        );
        return job.fail(JobError::invalid(message), id.as_deref());
    }
    let board = board.clone();
    tasks.spawn(move |stop| async move {
        // Tokenizing takes up to milliseconds: not on the consumer's thread.
        let text = std::mem::take(&mut request.text_input);
        let tokenizer = generator.tokenizer.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            tokenizer
                .encode(text.as_str(), true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        })
        .await;
        let prompt = match encoded {
            Ok(Ok(prompt)) => prompt,
            Ok(Err(e)) => {
                return job.fail(JobError::invalid(format!("text_input: {e}")), id.as_deref())
            }
            Err(e) => {
                return job.fail(
                    JobError::internal(format!("tokenizing: {e}")),
                    id.as_deref(),
                )
            }
        };
        let max_tokens = match max_tokens(&request, &prompt, &generator) {
            Ok(n) => n,
            Err(message) => return job.fail(JobError::invalid(message), id.as_deref()),
        };
        let cancel = CancellationToken::new();
        let on_board = id
            .as_deref()
            .map(|id| board.register(id, &served.model, cancel.clone()));
        let (events, receiver) = mpsc::unbounded_channel();
        let engine_job = GenerationJob {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: request.temperature,
                top_k: request.top_k,
                top_p: request.top_p,
                seed: request.seed,
            },
            stop: std::mem::take(&mut request.stop),
            deadline: headers.deadline,
            cancel,
            events,
            received,
        };
        if !generator.submit(engine_job) {
            let error = JobError::stopped("the model version was unloaded before the job started");
            return job.fail(error, id.as_deref());
        }
        let answering = Answering {
            id,
            model: served.model.clone(),
            version: served.label.clone(),
            stream: request.stream,
            stream_interval: generator.spec.budgets.stream_interval,
        };
        relay(job, answering, receiver, stop, on_board).await
    });
}

/// The job's `max_tokens`: as asked, if its prompt leaves room for them, else the model's
/// default cut to the room left; the error names both fields.
fn max_tokens(
    request: &GenerateRequest,
    prompt: &[u32],
    generator: &Generator,
) -> Result<usize, String> {
    let context = generator.spec.context_length;
    if prompt.is_empty() {
        return Err("text_input: the prompt has no tokens".into());
    }
    let room = context.saturating_sub(prompt.len());
    match request.max_tokens {
        Some(n) if n > room => Err(format!(
            "text_input and parameters.max_tokens: a prompt of {} tokens and max_tokens {n} exceed the context length of {context} tokens",
            prompt.len()
        )),
        Some(n) => Ok(n),
        None if room == 0 => Err(format!(
            "text_input: a prompt of {} tokens leaves no room in the context length of {context} tokens",
            prompt.len()
        )),
        None => Ok(generator.spec.budgets.max_tokens.min(room)),
    }
}

/// Carries one job's events to its reply queue until its end. Streamed text goes through a
/// [`StreamPacer`]: the first piece at once, later ones grouped while the job's last message
/// waits for its confirm or `stream_interval` has not passed.
async fn relay(
    job: InFlight,
    answering: Answering,
    mut events: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
    _on_board: Option<OnBoard>,
) {
    let id = answering.id.clone();
    let mut sequence = 0u64;
    // Holds the text not sent yet: all of it for a job that is not streamed.
    let mut pacer = StreamPacer::new(answering.stream_interval);
    let mut in_flight: Option<oneshot::Receiver<Streamed>> = None;
    loop {
        let due = answering
            .stream
            .then(|| pacer.due(Instant::now()))
            .flatten();
        let event = tokio::select! {
            event = events.recv() => event,
            () = stop.cancelled() => {
                // The engine sees the closed channel and drops the row at its next step.
                drop(events);
                let error = JobError::stopped("the worker stopped consuming before the generation ended");
                return job.fail(error, id.as_deref());
            }
            outcome = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                match outcome.unwrap_or(Streamed::NotKept) {
                    Streamed::Kept => pacer.confirmed(),
                    // A piece refused ends the job now, not once it is generated.
                    refused => return fail_stream(job, refused, id.as_deref()),
                }
                send_held(&job, &answering, &mut pacer, &mut sequence, &mut in_flight);
                continue;
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                send_held(&job, &answering, &mut pacer, &mut sequence, &mut in_flight);
                continue;
            }
        };
        match event {
            Some(Event::Piece(piece)) => {
                pacer.push(&piece);
                if answering.stream {
                    send_held(&job, &answering, &mut pacer, &mut sequence, &mut in_flight);
                }
            }
            Some(Event::Done(end)) => {
                if let Some(confirm) = in_flight.take() {
                    let outcome = confirm.await.unwrap_or(Streamed::NotKept);
                    if outcome != Streamed::Kept {
                        return fail_stream(job, outcome, id.as_deref());
                    }
                }
                let mut last = pacer.finish();
                last.push_str(&end.piece);
                let (body, headers) = if answering.stream {
                    let body = answering.body(&last, Some(sequence), Some(&end));
                    (body, sequence_header(sequence))
                } else {
                    let body = answering.body(&last, None, Some(&end));
                    (body, FieldTable::default())
                };
                let job = job.generated(end.prompt_tokens, end.completion_tokens);
                return job.answer(body, "application/json", headers);
            }
            Some(Event::Failed(message)) => {
                return job.fail(JobError::internal(message), id.as_deref());
            }
            None => {
                let error = JobError::stopped("the model version's engine stopped");
                return job.fail(error, id.as_deref());
            }
        }
    }
}

/// Publishes the text `pacer` holds, if it may go now, as the stream's next message.
fn send_held(
    job: &InFlight,
    answering: &Answering,
    pacer: &mut StreamPacer,
    sequence: &mut u64,
    in_flight: &mut Option<oneshot::Receiver<Streamed>>,
) {
    if let Some(text) = pacer.take(Instant::now()) {
        let body = answering.body(&text, Some(*sequence), None);
        *in_flight = Some(job.stream(body, sequence_header(*sequence)));
        *sequence += 1;
    }
}

/// Ends a streamed job one of whose pieces the broker did not keep: a piece returned as
/// unroutable means nobody reads the reply queue any more, and the job is kept in the
/// dead-letter queue (as an answer returned as unroutable would be); a piece not confirmed
/// sends the job back to be generated again.
fn fail_stream(job: InFlight, outcome: Streamed, id: Option<&str>) {
    let error = match outcome {
        Streamed::Returned => JobError::dead_letter(
            ErrorCode::InvalidRequest,
            "reply_to: the reply queue of a streamed job is gone (a streamed message was returned as unroutable)",
        ),
        _ => JobError::internal(
            "a streamed message was not confirmed by the broker; the job is generated again",
        ),
    };
    job.fail(error, id)
}

/// `x-sequence`: a streamed message's place, for consumers that read headers only.
fn sequence_header(sequence: u64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-sequence"),
        AMQPValue::LongLongInt(sequence as i64),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(body: &str) -> String {
        parse_request(body.as_bytes()).unwrap_err().1
    }

    #[test]
    fn the_example_of_the_protocol_parses() {
        let body = r#"{"id": "g-1", "text_input": "Once upon a time", "parameters": {"max_tokens": 64,
            "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n\n"], "stream": false}}"#;
        let r = parse_request(body.as_bytes()).unwrap();
        assert_eq!(r.id.as_deref(), Some("g-1"));
        assert_eq!(r.max_tokens, Some(64));
        assert_eq!(
            (r.temperature, r.top_p, r.top_k, r.seed),
            (0.7, 0.9, 40, Some(7))
        );
        assert_eq!(r.stop, vec!["\n\n".to_string()]);
        let plain = parse_request(br#"{"text_input": "x"}"#).unwrap();
        assert_eq!(
            (
                plain.temperature,
                plain.top_p,
                plain.max_tokens,
                plain.stream
            ),
            (0.0, 1.0, None, false)
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            error_of(r#"{"text_input": 3}"#),
            "text_input: expected a string"
        );
        assert_eq!(
            error_of(r#"{"id": "a"}"#),
            "text_input: missing (the prompt, a string)"
        );
        assert!(
            error_of(r#"{"text_input": "x", "parameters": {"temprature": 1}}"#)
                .starts_with("parameters: unknown field \"temprature\"")
        );
        assert!(error_of(r#"{"text_input": "x", "prompt": "y"}"#)
            .starts_with("unknown field \"prompt\""));
        assert!(error_of(r#"{"inputs": []}"#).contains("this model generates text"));
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"max_tokens": 0}}"#),
            "parameters.max_tokens: expected an integer ≥ 1"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"max_tokens": 2.5}}"#),
            "parameters.max_tokens: expected an integer ≥ 1"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"top_p": 0}}"#),
            "parameters.top_p: expected a number above 0, at most 1"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"temperature": -1}}"#),
            "parameters.temperature: expected a number from 0 (greedy) to 100"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"seed": -7}}"#),
            "parameters.seed: expected an integer ≥ 0"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"stop": [""]}}"#),
            "parameters.stop[0]: expected 1 to 256 bytes"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"stop": [1]}}"#),
            "parameters.stop[0]: expected a string"
        );
        assert_eq!(
            error_of(r#"{"text_input": "x", "parameters": {"stream": "yes"}}"#),
            "parameters.stream: expected true or false"
        );
        let many = format!(
            r#"{{"text_input": "x", "parameters": {{"stop": {:?}}}}}"#,
            vec!["a"; 17]
        );
        assert_eq!(error_of(&many), "parameters.stop: 17 strings, at most 16");
        // The id is kept for the error answer.
        let (id, _) = parse_request(br#"{"id": "g-9", "text_input": 1}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("g-9"));
    }
}
