//! The gateway's decisions, apart from I/O: which HTTP status a worker's answer becomes, whether
//! a request is admitted to its model's queue, and how the request's own fields (model name,
//! timeout, binary header, trace context, rows for the usage) are read. Every refusal names the field and echoes at
//! most [`MAX_ECHO`] bytes of what came.

use std::time::Duration;

use axum::http::StatusCode;

use crate::protocol::{ErrorCode, ModelName};

/// Longest piece of a client's input quoted back in an error.
pub const MAX_ECHO: usize = 128;
/// Longest `traceparent` / `tracestate` copied onto a job (W3C allows 512 for tracestate).
pub const MAX_TRACE: usize = 512;

/// The HTTP status of a worker's error result, from its `x-error-code` header (a code the
/// contract does not name is a 500).
pub fn status_for_code(code: &str) -> StatusCode {
    match ErrorCode::parse(code) {
        Some(ErrorCode::InvalidRequest) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::UnknownModel | ErrorCode::UnknownVersion) => StatusCode::NOT_FOUND,
        Some(ErrorCode::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(ErrorCode::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
        Some(ErrorCode::Internal) | None => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a passive declare of a model's queue said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// No queue: no worker has ever served the model (or the broker lost it).
    Missing,
    Present {
        ready: u32,
        consumers: u32,
    },
}

/// Whether a request may be published to its model's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// 404: no such model.
    UnknownModel,
    /// 503: the queue exists, no worker consumes it.
    NoConsumer,
    /// 429: more than `max_queue_depth` jobs wait already.
    TooDeep {
        ready: u32,
    },
}

/// Admission of a request given its queue's state; `max_depth` 0 means no bound.
pub fn admit(state: QueueState, max_depth: u32) -> Admission {
    match state {
        QueueState::Missing => Admission::UnknownModel,
        QueueState::Present { consumers: 0, .. } => Admission::NoConsumer,
        QueueState::Present { ready, .. } if max_depth > 0 && ready > max_depth => {
            Admission::TooDeep { ready }
        }
        QueueState::Present { .. } => Admission::Admit,
    }
}

/// `s` cut to at most [`MAX_ECHO`] bytes on a character boundary, for error messages.
pub fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return s.to_string();
    }
    format!("{}…", crate::protocol::text::prefix(s, MAX_ECHO))
}

/// A model name from the path, by the one rule ([`ModelName`]).
pub fn check_model(name: &str) -> Result<ModelName, String> {
    ModelName::parse(name).map_err(|e| format!("model name {e}"))
}

/// A version from the path: decimal digits, as the workers' repositories number them.
pub fn check_version(version: &str) -> Result<(), String> {
    if !version.is_empty() && version.len() <= 20 && version.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "model version {:?}: expected a decimal number",
            echo(version)
        ))
    }
}

/// The request's timeout: the `timeout_ms` query parameter, else the `Infermq-Timeout-Ms`
/// header, else `default`; a value of 0 or above `max` is refused.
pub fn timeout(
    query: Option<&str>,
    header: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let (field, raw) = match (query, header) {
        (Some(q), _) => ("timeout_ms (query)", q),
        (None, Some(h)) => ("Infermq-Timeout-Ms (header)", h),
        (None, None) => return Ok(default),
    };
    let ms: u64 = raw.trim().parse().map_err(|_| {
        format!(
            "{field}: expected milliseconds as a whole number, got {:?}",
            echo(raw)
        )
    })?;
    let wanted = Duration::from_millis(ms);
    if ms == 0 || wanted > max {
        return Err(format!(
            "{field}: {ms} is outside [1, {}] (gateway.max_timeout_ms)",
            max.as_millis()
        ));
    }
    Ok(wanted)
}

/// The binary extension's `Inference-Header-Content-Length`: the JSON header's length, which
/// must fit in the body.
pub fn binary_header_len(value: Option<&str>, body_len: usize) -> Result<Option<usize>, String> {
    let Some(raw) = value else {
        return Ok(None);
    };
    let len: usize = raw.trim().parse().map_err(|_| {
        format!(
            "Inference-Header-Content-Length: expected a byte count, got {:?}",
            echo(raw)
        )
    })?;
    if len > body_len {
        return Err(format!(
            "Inference-Header-Content-Length: {len} exceeds the body's {body_len} bytes"
        ));
    }
    Ok(Some(len))
}

/// A W3C trace header worth copying: printable ASCII, at most [`MAX_TRACE`] bytes. Anything
/// else is dropped (tracing is best effort; a bad header never fails a request).
pub fn trace_header(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > MAX_TRACE {
        return None;
    }
    if !value.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// Rows of an inference request for its usage: dimension 0 of its first input (1 for a scalar
/// input), read from the JSON (a binary body's JSON part); 0 when the body does not say.
pub fn request_rows(body: &[u8], header_len: Option<usize>) -> u64 {
    #[derive(serde::Deserialize)]
    struct Head {
        inputs: Vec<Input>,
    }
    #[derive(serde::Deserialize)]
    struct Input {
        shape: Vec<u64>,
    }
    let json = match header_len {
        Some(n) => body.get(..n).unwrap_or(body),
        None => body,
    };
    serde_json::from_slice::<Head>(json)
        .ok()
        .and_then(|head| head.inputs.into_iter().next())
        .map(|input| input.shape.first().copied().unwrap_or(1))
        .unwrap_or(0)
}

/// `Retry-After` seconds for a 429: one queue check period, at least one second.
pub fn retry_after(queue_check: Duration) -> u64 {
    queue_check.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_the_documented_statuses() {
        let cases = [
            ("invalid_request", 400),
            ("unknown_model", 404),
            ("unknown_version", 404),
            ("too_large", 413),
            ("deadline_exceeded", 504),
            ("internal", 500),
            ("something_new", 500),
        ];
        for (code, status) in cases {
            assert_eq!(status_for_code(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn rows_are_the_first_inputs_dimension_0() {
        let json = br#"{"id":"a","inputs":[{"name":"input","shape":[3,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12]},{"name":"b","shape":[9]}]}"#;
        assert_eq!(request_rows(json, None), 3);
        let scalar = br#"{"inputs":[{"name":"sr","shape":[],"datatype":"FP32","data":[1]}]}"#;
        assert_eq!(request_rows(scalar, None), 1);
        let binary = br#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = binary.to_vec();
        body.extend_from_slice(&[0u8; 8]);
        assert_eq!(request_rows(&body, Some(binary.len())), 2);
        assert_eq!(request_rows(b"not json", None), 0);
        assert_eq!(request_rows(b"{}", None), 0);
    }

    #[test]
    fn admission_table() {
        let present = |ready, consumers| QueueState::Present { ready, consumers };
        let cases = [
            (QueueState::Missing, 10, Admission::UnknownModel),
            (present(0, 0), 10, Admission::NoConsumer),
            (present(5, 0), 10, Admission::NoConsumer),
            (present(10, 1), 10, Admission::Admit),
            (present(11, 2), 10, Admission::TooDeep { ready: 11 }),
            (present(1_000_000, 1), 0, Admission::Admit),
        ];
        for (state, max, expected) in cases {
            assert_eq!(admit(state, max), expected, "{state:?} max {max}");
        }
    }

    #[test]
    fn model_names_follow_the_repository_rule() {
        for ok in ["iris", "iris-docs", "m_1.v2"] {
            assert!(check_model(ok).is_ok(), "{ok}");
        }
        let longest = "a".repeat(ModelName::MAX_LEN);
        assert_eq!(
            check_model(&longest).map(|m| m.len()),
            Ok(ModelName::MAX_LEN)
        );
        let long = "a".repeat(ModelName::MAX_LEN + 1);
        for bad in ["", ".hidden", "a/b", "a b", "é", long.as_str()] {
            let err = check_model(bad).unwrap_err();
            assert!(err.starts_with("model name"), "{err}");
            assert!(err.len() < 400, "echo is bounded: {}", err.len());
        }
        assert!(check_version("12").is_ok());
        for bad in ["", "v1", "-1", "1.0", "123456789012345678901"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_come_from_the_query_then_the_header_then_the_default() {
        let d = Duration::from_secs(30);
        let max = Duration::from_secs(60);
        assert_eq!(timeout(None, None, d, max), Ok(d));
        assert_eq!(
            timeout(Some("250"), Some("999"), d, max),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            timeout(None, Some(" 999 "), d, max),
            Ok(Duration::from_millis(999))
        );
        let err = timeout(Some("soon"), None, d, max).unwrap_err();
        assert!(
            err.contains("timeout_ms (query)") && err.contains("\"soon\""),
            "{err}"
        );
        let err = timeout(None, Some("0"), d, max).unwrap_err();
        assert!(err.contains("Infermq-Timeout-Ms"), "{err}");
        assert!(timeout(Some("60001"), None, d, max).is_err());
        let huge = "9".repeat(5000);
        assert!(timeout(Some(&huge), None, d, max).unwrap_err().len() < 400);
    }

    #[test]
    fn binary_header_must_fit_in_the_body() {
        assert_eq!(binary_header_len(None, 10), Ok(None));
        assert_eq!(binary_header_len(Some("10"), 10), Ok(Some(10)));
        assert!(binary_header_len(Some("11"), 10)
            .unwrap_err()
            .contains("exceeds the body's 10 bytes"));
        assert!(binary_header_len(Some("-1"), 10).is_err());
        assert!(binary_header_len(Some("x"), 10)
            .unwrap_err()
            .starts_with("Inference-Header-Content-Length"));
    }

    #[test]
    fn trace_headers_are_copied_only_when_printable_and_bounded() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_header(tp), std::str::from_utf8(tp).ok());
        assert_eq!(trace_header(b""), None);
        assert_eq!(trace_header(b"a\nb"), None);
        assert_eq!(trace_header(&[b'a'; MAX_TRACE + 1]), None);
    }

    #[test]
    fn echo_cuts_on_a_char_boundary() {
        let s = "é".repeat(200);
        let e = echo(&s);
        assert!(e.len() <= MAX_ECHO + "…".len());
        assert!(e.ends_with('…'));
    }
}
