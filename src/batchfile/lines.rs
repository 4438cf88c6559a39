//! The lines of a batch file and of its output, apart from I/O: an input line read into a
//! request or a refusal ([`read_line`]), a `custom_id` seen twice ([`FirstUse`]), the output
//! lines ([`refusal_line`], [`response_line`]), and what an existing output file already
//! answers ([`Resume`]).
//!
//! Each output line's `id` is `batch_req_<n>`, `n` the input line's number (from 1): a line
//! refused on its own (`error` set: not JSON, a missing field, a `custom_id` used before) is
//! known by that number, a request (`response` set, whatever its status) by its `custom_id`.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::gateway::openai::Kind;

/// `error.code` of a line that is not a request.
pub const INVALID_LINE: &str = "invalid_line";
/// `error.code` of a line whose `custom_id` an earlier line has.
pub const DUPLICATE_CUSTOM_ID: &str = "duplicate_custom_id";

/// One input line, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Nothing but white space: no request, no answer.
    Blank,
    /// Not a request; the message names the field.
    Bad {
        custom_id: Option<String>,
        message: String,
    },
    Request {
        custom_id: String,
        kind: Kind,
        body: Map<String, Value>,
    },
}

/// Reads an input line: `{"custom_id", "method": "POST", "url", "body"}`.
pub fn read_line(text: &str) -> Line {
    if text.trim().is_empty() {
        return Line::Blank;
    }
    let bad = |custom_id: Option<String>, message: String| Line::Bad { custom_id, message };
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return bad(None, "expected a JSON object".into()),
        Err(e) => return bad(None, format!("not valid JSON ({e})")),
    };
    let custom_id = match object.get("custom_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(_) => return bad(None, "custom_id: expected a non-empty string".into()),
        None => return bad(None, "custom_id: missing".into()),
    };
    let named = Some(custom_id.clone());
    if let Some(key) = object
        .keys()
        .find(|k| !["custom_id", "method", "url", "body"].contains(&k.as_str()))
    {
        let message = format!("unknown field {key:?}; expected custom_id, method, url, body");
        return bad(named, message);
    }
    match object.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        _ => return bad(named, "method: expected \"POST\"".into()),
    }
    let kind = match object.get("url").and_then(Value::as_str) {
        Some("/v1/completions") => Kind::Completion,
        Some("/v1/chat/completions") => Kind::Chat,
        _ => {
            let message = "url: expected \"/v1/chat/completions\" or \"/v1/completions\"";
            return bad(named, message.into());
        }
    };
    match object.get("body") {
        Some(Value::Object(body)) => Line::Request {
            custom_id,
            kind,
            body: body.clone(),
        },
        _ => bad(named, "body: expected the request, a JSON object".into()),
    }
}

/// The line that first used each `custom_id`.
#[derive(Debug, Default)]
pub struct FirstUse {
    lines: HashMap<String, u64>,
}

impl FirstUse {
    /// `None` when line `n` is the first with `custom_id`, else the earlier line's number.
    pub fn see(&mut self, custom_id: &str, n: u64) -> Option<u64> {
        match self.lines.get(custom_id) {
            Some(&first) if first != n => Some(first),
            Some(_) => None,
            None => {
                self.lines.insert(custom_id.to_string(), n);
                None
            }
        }
    }
}

/// The output `id` of input line `n`.
pub fn line_id(n: u64) -> String {
    format!("batch_req_{n}")
}

/// An output line for an input line that is not a request.
pub fn refusal_line(n: u64, custom_id: Option<&str>, code: &str, message: &str) -> String {
    json!({"id": line_id(n), "custom_id": custom_id, "response": null,
        "error": {"code": code, "message": format!("line {n}: {message}")}})
    .to_string()
}

/// An output line for a request: the HTTP status the API would have answered, the job's id
/// (none for a request refused before a job was made) and the API's body.
pub fn response_line(
    n: u64,
    custom_id: &str,
    status: u16,
    request_id: Option<&str>,
    body: Value,
) -> String {
    json!({"id": line_id(n), "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": null})
    .to_string()
}

/// What an existing output file holds: the requests answered (by `custom_id`) and the lines
/// refused (by number).
#[derive(Debug, Default)]
pub struct Resume {
    answered: HashSet<String>,
    refused: HashSet<u64>,
    /// Bytes of whole lines: a last line without its newline was cut by a crash, and is
    /// dropped (its request is asked again).
    pub whole_bytes: usize,
}

impl Resume {
    pub fn read(output: &[u8]) -> Resume {
        let whole_bytes = output
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let mut resume = Resume {
            whole_bytes,
            ..Resume::default()
        };
        for line in output[..whole_bytes].split(|&b| b == b'\n') {
            let Ok(value) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if value.get("response").is_some_and(Value::is_object) {
                if let Some(id) = value.get("custom_id").and_then(Value::as_str) {
                    resume.answered.insert(id.to_string());
                }
                continue;
            }
            let number = value
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| id.strip_prefix("batch_req_"))
                .and_then(|n| n.parse().ok());
            if let Some(n) = number {
                resume.refused.insert(n);
            }
        }
        resume
    }

    pub fn answered(&self, custom_id: &str) -> bool {
        self.answered.contains(custom_id)
    }

    pub fn refused(&self, n: u64) -> bool {
        self.refused.contains(&n)
    }

    /// Output lines already there.
    pub fn len(&self) -> usize {
        self.answered.len() + self.refused.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_requests_or_say_why_not() {
        let ok = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}"#;
        assert_eq!(
            read_line(ok),
            Line::Request {
                custom_id: "a".into(),
                kind: Kind::Chat,
                body: json!({"model": "m"}).as_object().unwrap().clone()
            }
        );
        assert_eq!(read_line("  \t"), Line::Blank);
        let cases = [
            (
                "{",
                None,
                "not valid JSON (EOF while parsing an object at line 1 column 1)",
            ),
            ("[1]", None, "expected a JSON object"),
            (r#"{"method": "POST"}"#, None, "custom_id: missing"),
            (
                r#"{"custom_id": 7}"#,
                None,
                "custom_id: expected a non-empty string",
            ),
            (
                r#"{"custom_id": "b", "method": "GET", "url": "/v1/completions", "body": {}}"#,
                Some("b"),
                "method: expected \"POST\"",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}}"#,
                Some("b"),
                "url: expected \"/v1/chat/completions\" or \"/v1/completions\"",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/completions"}"#,
                Some("b"),
                "body: expected the request, a JSON object",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {}, "x": 1}"#,
                Some("b"),
                "unknown field \"x\"; expected custom_id, method, url, body",
            ),
        ];
        for (text, id, message) in cases {
            assert_eq!(
                read_line(text),
                Line::Bad {
                    custom_id: id.map(str::to_string),
                    message: message.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn a_custom_id_belongs_to_its_first_line() {
        let mut first = FirstUse::default();
        assert_eq!(first.see("a", 1), None);
        assert_eq!(first.see("b", 2), None);
        assert_eq!(first.see("a", 3), Some(1));
        // Seen again on a rerun from the start: still the first.
        assert_eq!(first.see("a", 1), None);
    }

    #[test]
    fn an_output_file_says_what_is_done_and_a_cut_line_is_not() {
        let answered = response_line(1, "a", 200, Some("j-1"), json!({"x": 1}));
        let failed = response_line(2, "b", 400, None, json!({"error": {}}));
        let bad = refusal_line(3, None, INVALID_LINE, "not valid JSON");
        let dup = refusal_line(
            5,
            Some("a"),
            DUPLICATE_CUSTOM_ID,
            "custom_id \"a\" is line 1's",
        );
        let cut = &response_line(4, "c", 200, Some("j-4"), json!({}))[..20];
        let output = format!("{answered}\n{failed}\n{bad}\n{dup}\n{cut}");
        let resume = Resume::read(output.as_bytes());
        assert!(resume.answered("a") && resume.answered("b"));
        assert!(!resume.answered("c"));
        assert!(resume.refused(3) && resume.refused(5) && !resume.refused(1));
        assert_eq!(resume.whole_bytes, output.len() - cut.len());
        assert_eq!(resume.len(), 4);
        assert_eq!(
            serde_json::from_str::<Value>(&dup).unwrap(),
            json!({"id": "batch_req_5", "custom_id": "a", "response": null,
                "error": {"code": "duplicate_custom_id", "message": "line 5: custom_id \"a\" is line 1's"}})
        );
        assert!(Resume::read(b"").is_empty());
    }
}
