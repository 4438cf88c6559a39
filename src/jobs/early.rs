//! What an error result can still say about a job refused before (or while) its body was
//! decoded: the body's `id` and `model_name` from a second, lenient read of its JSON, and the
//! AMQP `message_id` (read by [`crate::broker::envelope`]) as the job's id when the body gives
//! none.
//!
//! Shared by prediction jobs (`predict.rs`, which use the `id`) and training jobs (`train.rs`,
//! which use both). Error path only: it reads the JSON once more.

use serde::{Deserialize, Deserializer};

/// The names a refused job still gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EarlyNames {
    /// The body's `id` when it is a string, else the `message_id`.
    pub id: Option<String>,
    /// The body's `model_name` when it is a string (training jobs).
    pub model_name: Option<String>,
}

#[derive(Default, Deserialize)]
struct Lenient {
    #[serde(default, deserialize_with = "string_only")]
    id: Option<String>,
    #[serde(default, deserialize_with = "string_only")]
    model_name: Option<String>,
}

/// A string value, or `None` for a value of any other type (which is then no reason to lose
/// the other field).
fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// Reads `id` and `model_name` from `body` (from its first `header_len` bytes, the JSON header,
/// for a binary body) whenever the JSON is syntactically valid; `message_id` names the job
/// when the body does not.
pub fn early_names(
    body: &[u8],
    header_len: Option<usize>,
    message_id: Option<String>,
) -> EarlyNames {
    let json = match header_len {
        Some(n) => body.get(..n),
        None => Some(body),
    };
    let read: Lenient = json
        .and_then(|j| serde_json::from_slice(j).ok())
        .unwrap_or_default();
    EarlyNames {
        id: read.id.or(message_id),
        model_name: read.model_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str, header_len: Option<usize>, message_id: Option<&str>) -> EarlyNames {
        early_names(body.as_bytes(), header_len, message_id.map(str::to_string))
    }

    fn named(id: Option<&str>, model_name: Option<&str>) -> EarlyNames {
        EarlyNames {
            id: id.map(str::to_string),
            model_name: model_name.map(str::to_string),
        }
    }

    #[test]
    fn reads_what_it_can_and_falls_back_to_message_id() {
        let cases = [
            // Valid JSON that fails full decoding: both names read; the body's id wins.
            (
                r#"{"id":"t1","model_name":"x","epoch":3}"#,
                None,
                Some("m"),
                named(Some("t1"), Some("x")),
            ),
            // A name of the wrong type is skipped alone.
            (
                r#"{"id":5,"model_name":"x"}"#,
                None,
                Some("m"),
                named(Some("m"), Some("x")),
            ),
            (
                r#"{"id":"t2","model_name":["x"]}"#,
                None,
                None,
                named(Some("t2"), None),
            ),
            // Invalid JSON: only message_id.
            (
                r#"{"id":"t3","model_name":"x","layers":[{"#,
                None,
                Some("m"),
                named(Some("m"), None),
            ),
            (r#"{"id":"t4","data":[NaN]}"#, None, None, named(None, None)),
            ("[1, 2]", None, Some("m"), named(Some("m"), None)),
            // Binary body: the JSON header only; a header length past the end reads nothing.
            (r#"{"id":"b1"}xyz"#, Some(11), None, named(Some("b1"), None)),
            (
                r#"{"id":"b2"}"#,
                Some(99),
                Some("m"),
                named(Some("m"), None),
            ),
        ];
        for (body, header_len, message_id, want) in cases {
            assert_eq!(names(body, header_len, message_id), want, "{body}");
        }
    }
}
