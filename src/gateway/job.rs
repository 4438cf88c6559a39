//! A generation job on the wire, from the producer's side (docs/PROTOCOL.md "Generation
//! jobs"): the body the gateway publishes ([`job_body`]) and the messages a worker answers,
//! read once into a typed value ([`Answer`], [`Failure`]). Pure: JSON in, bytes and values out.
//! The gateway's routes (Triton's generate extension, the OpenAI API) and batch files
//! (`infermq batch`) all build and read jobs here.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::policy;

/// The body of a job from a client's: `id` replaced by the producer's own (unique, so that a
/// cancel message reaches this job only, and answers are matched by it) and
/// `parameters.stream` set as the route decides. A streamed job without a `seed` gets one, so
/// that a run restarted after a redelivery repeats the text already relayed ([`Sequencer`]).
pub fn job_body(mut body: Map<String, Value>, id: &str, stream: bool, seed: u64) -> Vec<u8> {
    body.insert("id".into(), Value::String(id.to_string()));
    let parameters = body
        .entry("parameters")
        .or_insert_with(|| Value::Object(Map::new()));
    if parameters.is_null() {
        *parameters = Value::Object(Map::new());
    }
    // A `parameters` that is not an object is left for the worker to refuse, naming it.
    if let Value::Object(parameters) = parameters {
        parameters.insert("stream".into(), Value::Bool(stream));
        let seeded = parameters.get("seed").is_some_and(|s| !s.is_null());
        if stream && !seeded {
            parameters.insert("seed".into(), Value::from(seed));
        }
    }
    // A map of JSON values always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The answer's `id` put back as the client sent it (or removed when it sent none).
pub fn restore_id(body: &mut Map<String, Value>, client_id: Option<&str>) {
    match client_id {
        Some(id) => {
            body.insert("id".into(), Value::String(id.to_string()));
        }
        None => {
            body.remove("id");
        }
    }
}

/// One message of a generation job: the whole answer, or with `stream` one piece of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The message as published (relayed by the generate extension).
    pub body: Map<String, Value>,
    /// `text_output`: the piece, or the whole continuation.
    pub text: String,
    /// A streamed piece's place, from 0; `None` in a job's single answer.
    pub sequence: Option<u64>,
    /// Set on the last message only: `length`, `eos`, `stop`, `deadline` or `cancelled`.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Tokens a job read and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a job gave no (more) text: a worker's error result, or no answer at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: StatusCode,
    /// The contract's error code (`invalid_request`, …), or the gateway's own (`timeout`,
    /// `unknown_model`, `unavailable`).
    pub code: String,
    pub message: String,
    /// The worker's error result as published, when there is one.
    pub body: Option<Vec<u8>>,
}

impl Failure {
    /// A failure of the gateway's own (no error result from a worker).
    pub fn new(status: StatusCode, code: &str, message: String) -> Failure {
        Failure {
            status,
            code: code.to_string(),
            message,
            body: None,
        }
    }
}

impl Answer {
    /// The last message of its job.
    pub fn is_last(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// Reads one message; `error_code` is its `x-error-code` header. An error result, or a
    /// message that is not a generation answer, is a [`Failure`].
    pub fn read(data: &[u8], error_code: Option<&str>) -> Result<Answer, Failure> {
        let parsed = serde_json::from_slice::<Value>(data);
        if let Some(code) = error_code {
            let message = parsed
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("the worker answered {code}"));
            return Err(Failure {
                status: policy::status_for_code(code),
                code: code.to_string(),
                message,
                body: Some(data.to_vec()),
            });
        }
        let not_an_answer = |why: &str| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                format!("the worker's answer is not a generation answer: {why}"),
            )
        };
        let Ok(Value::Object(body)) = parsed else {
            return Err(not_an_answer("not a JSON object"));
        };
        let Some(text) = body.get("text_output").and_then(Value::as_str) else {
            return Err(not_an_answer("no text_output (is the model a decoder?)"));
        };
        let text = text.to_string();
        let sequence = body.get("sequence").and_then(Value::as_u64);
        let finish_reason = body
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        let usage = body.get("usage").and_then(|u| {
            Some(Usage {
                prompt_tokens: u.get("prompt_tokens")?.as_u64()?,
                completion_tokens: u.get("completion_tokens")?.as_u64()?,
            })
        });
        Ok(Answer {
            body,
            text,
            sequence,
            finish_reason,
            usage,
        })
    }
}

/// The messages of one streamed job, with the pieces a restarted stream repeats left out.
///
/// A job that goes back to its queue mid-stream (its worker stopped, a piece was not
/// confirmed) is generated again from the start and streams again from `sequence` 0. The
/// gateway gives every streamed job a seed, so the new run repeats the old one's text piece
/// for piece: the pieces already relayed are dropped and the stream goes on where it was.
#[derive(Debug, Default)]
pub struct Sequencer {
    next: u64,
}

impl Sequencer {
    /// Whether `answer` is new (relay it) or a repeat of a piece already relayed.
    pub fn admit(&mut self, answer: &Answer) -> bool {
        match answer.sequence {
            None => true,
            Some(sequence) if sequence < self.next => false,
            Some(sequence) => {
                self.next = sequence + 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_body_carries_the_producers_id_and_the_routes_stream() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let read = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).unwrap();
        let client = body(serde_json::json!({"id": "mine", "text_input": "In",
            "parameters": {"max_tokens": 3, "stream": false}}));
        assert_eq!(
            read(job_body(client.clone(), "gw-1", true, 42)),
            serde_json::json!({"id": "gw-1", "text_input": "In",
                "parameters": {"max_tokens": 3, "stream": true, "seed": 42}})
        );
        // Not streamed: no seed added; a client's seed is kept.
        assert_eq!(
            read(job_body(client, "gw-2", false, 42)),
            serde_json::json!({"id": "gw-2", "text_input": "In",
                "parameters": {"max_tokens": 3, "stream": false}})
        );
        let seeded = body(serde_json::json!({"text_input": "In", "parameters": {"seed": 7}}));
        assert_eq!(
            read(job_body(seeded, "gw-3", true, 42))["parameters"]["seed"],
            7
        );
        // No parameters, null parameters: made; a bad one is left for the worker to name.
        for parameters in [None, Some(Value::Null)] {
            let mut b = body(serde_json::json!({"text_input": "In"}));
            if let Some(p) = parameters {
                b.insert("parameters".into(), p);
            }
            assert_eq!(
                read(job_body(b, "gw-4", false, 1))["parameters"],
                serde_json::json!({"stream": false})
            );
        }
        let bad = body(serde_json::json!({"text_input": "In", "parameters": 3}));
        assert_eq!(read(job_body(bad, "gw-5", true, 1))["parameters"], 3);
    }

    #[test]
    fn the_clients_id_comes_back() {
        let mut answer = serde_json::json!({"id": "gw-1", "text_output": "x"})
            .as_object()
            .unwrap()
            .clone();
        restore_id(&mut answer, Some("mine"));
        assert_eq!(answer["id"], "mine");
        restore_id(&mut answer, None);
        assert!(!answer.contains_key("id"));
    }

    #[test]
    fn a_whole_answer_is_read() {
        let data = br#"{"finish_reason":"length","id":"g-1","model_name":"storyteller","model_version":"1","text_output":" unto","usage":{"completion_tokens":16,"prompt_tokens":4}}"#;
        let answer = Answer::read(data, None).unwrap();
        assert_eq!(answer.text, " unto");
        assert_eq!(answer.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            answer.usage,
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 16
            })
        );
        assert_eq!(answer.sequence, None);
        assert!(answer.is_last());
    }

    #[test]
    fn a_piece_is_not_the_last() {
        let data = br#"{"id":"g-2","model_name":"storyteller","model_version":"1","sequence":3,"text_output":"o"}"#;
        let answer = Answer::read(data, None).unwrap();
        assert_eq!(answer.sequence, Some(3));
        assert!(!answer.is_last());
        assert_eq!(answer.usage, None);
    }

    #[test]
    fn error_results_and_foreign_answers_are_failures() {
        let data = br#"{"id":"g-5","model_name":"storyteller","error":"text_input: expected a string","code":"invalid_request"}"#;
        let failure = Answer::read(data, Some("invalid_request")).unwrap_err();
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);
        assert_eq!(failure.code, "invalid_request");
        assert_eq!(failure.message, "text_input: expected a string");
        assert_eq!(failure.body.as_deref(), Some(&data[..]));
        let failure = Answer::read(b"{}", Some("unknown_model")).unwrap_err();
        assert_eq!(failure.status, StatusCode::NOT_FOUND);
        assert_eq!(failure.message, "the worker answered unknown_model");
        let failure = Answer::read(br#"{"outputs":[]}"#, None).unwrap_err();
        assert_eq!(failure.status, StatusCode::BAD_GATEWAY);
        assert!(
            failure.message.contains("no text_output"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_restarted_stream_is_relayed_once() {
        let piece = |sequence: u64| Answer {
            body: Map::new(),
            text: String::new(),
            sequence: Some(sequence),
            finish_reason: None,
            usage: None,
        };
        let mut sequencer = Sequencer::default();
        let came = [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5];
        let relayed: Vec<u64> = came
            .iter()
            .filter(|&&s| sequencer.admit(&piece(s)))
            .copied()
            .collect();
        assert_eq!(relayed, vec![0, 1, 2, 3, 4, 5]);
    }
}
