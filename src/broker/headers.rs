//! Reading the AMQP properties and headers the contract gives meaning to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::protocol::text::quoted;

/// The binary extension's header (matched case-insensitively): the length of the body's JSON
/// part, on a job or a result.
pub const BINARY_HEADER: &str = "inference-header-content-length";
/// A job's header: the model version to run (wins over the body's `parameters.model_version`).
pub const MODEL_VERSION: &str = "x-model-version";
/// A job's header: its deadline in unix epoch milliseconds.
pub const DEADLINE_MS: &str = "x-deadline-ms";
/// Set by quorum queues on a redelivery: how many times the broker delivered the message.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// An error result's (or dead-lettered job's) header: its [`crate::protocol::ErrorCode`].
pub const ERROR_CODE: &str = "x-error-code";
/// An error result's (or dead-lettered job's) header: the message, at most 1 KiB.
pub const ERROR: &str = "x-error";
/// The tenant a job is for (the gateway sets the API key's name): informative, never checked,
/// read once into the envelope for the per-tenant counters.
pub const TENANT: &str = "x-infermq-tenant";

/// A header by name, matched case-insensitively (`Inference-Header-Content-Length` works too).
pub fn find<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers?
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// An integer header value, whatever integer (or numeric string) type the producer used.
pub fn as_i128(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => *v as i128,
        AMQPValue::ShortShortUInt(v) => *v as i128,
        AMQPValue::ShortInt(v) => *v as i128,
        AMQPValue::ShortUInt(v) => *v as i128,
        AMQPValue::LongInt(v) => *v as i128,
        AMQPValue::LongUInt(v) => *v as i128,
        AMQPValue::LongLongInt(v) => *v as i128,
        AMQPValue::Timestamp(v) => *v as i128,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    })
}

/// A string header value (strings, or integers written as text).
pub fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => as_i128(other).map(|v| v.to_string()),
    }
}

/// A header value as a producer would write it (`"soon"`, `-1`), cut to a bounded length.
fn shown(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            quoted(&as_string(value).unwrap_or_default())
        }
        other => match as_i128(other) {
            Some(v) => v.to_string(),
            None => format!("a value of AMQP type {}", type_name(other)),
        },
    }
}

/// The AMQP field type of `value`, for messages (never its contents: a table may be large).
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "boolean",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "float",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "byte array",
        AMQPValue::Void => "void",
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => "string",
        _ => "integer",
    }
}

/// Largest encoded size of a delivery's header table the worker accepts: it must be able to
/// add `x-error` (≤ 1 KiB) to a copy and still fit RabbitMQ's default 128 KiB frame.
pub const MAX_HEADERS_BYTES: usize = 64 * 1024;

/// Deepest nesting of tables and arrays the worker accepts in a header table.
pub const MAX_HEADER_DEPTH: usize = 8;

/// The encoded size (bytes on the wire, approximately) and the nesting depth of `table`;
/// stops counting once past the limits, so a hostile table costs nothing more to measure.
pub fn table_size(table: &FieldTable) -> (usize, usize) {
    fn value(v: &AMQPValue, depth: usize, size: &mut usize, deepest: &mut usize) {
        *deepest = (*deepest).max(depth);
        if *size > MAX_HEADERS_BYTES || depth > MAX_HEADER_DEPTH {
            return;
        }
        *size += 1 + match v {
            AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
            AMQPValue::ShortString(s) => 1 + s.as_str().len(),
            AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
            AMQPValue::FieldTable(t) => {
                for (k, v) in t.inner() {
                    *size += 1 + k.as_str().len();
                    value(v, depth + 1, size, deepest);
                }
                4
            }
            AMQPValue::FieldArray(a) => {
                for v in a.as_slice() {
                    value(v, depth + 1, size, deepest);
                }
                4
            }
            _ => 8,
        };
    }
    let mut size = 4;
    let mut deepest = 0;
    for (k, v) in table.inner() {
        size += 1 + k.as_str().len();
        value(v, 1, &mut size, &mut deepest);
    }
    (size, deepest)
}

/// A header that is present but unreadable is the producer's error, named here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name}: {message}")]
pub struct HeaderError {
    pub name: &'static str,
    pub message: String,
}

/// The contract's headers and properties of one delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobHeaders {
    pub model_version: Option<String>,
    pub deadline: Option<SystemTime>,
    pub binary_header_len: Option<usize>,
    /// The `x-delivery-count` header as found (quorum queues set it on redeliveries; a
    /// producer may set anything: see [`super::envelope`], which trusts it only on
    /// redeliveries).
    pub delivery_count: u32,
}

impl JobHeaders {
    pub fn read(properties: &BasicProperties) -> Result<JobHeaders, HeaderError> {
        let headers = properties.headers().as_ref();
        if let Some(table) = headers {
            let (size, depth) = table_size(table);
            if size > MAX_HEADERS_BYTES || depth > MAX_HEADER_DEPTH {
                return Err(HeaderError {
                    name: "table",
                    message: format!(
                        "expected at most {MAX_HEADERS_BYTES} bytes of headers nested at most \
                         {MAX_HEADER_DEPTH} deep, got {}",
                        if depth > MAX_HEADER_DEPTH {
                            format!("tables nested more than {MAX_HEADER_DEPTH} deep")
                        } else {
                            format!("more than {MAX_HEADERS_BYTES} bytes")
                        }
                    ),
                });
            }
        }
        let model_version = find(headers, MODEL_VERSION)
            .map(|v| match as_string(v) {
                Some(s) => Ok(s),
                None => Err(HeaderError {
                    name: MODEL_VERSION,
                    message: format!("expected a string or integer, got {}", shown(v)),
                }),
            })
            .transpose()?;
        let header_deadline = find(headers, DEADLINE_MS)
            .map(|v| match as_i128(v) {
                // Past the end of time as this system counts it: no deadline.
                Some(ms) if ms >= 0 => Ok(u64::try_from(ms)
                    .ok()
                    .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))),
                _ => Err(HeaderError {
                    name: DEADLINE_MS,
                    message: format!("expected unix epoch milliseconds, got {}", shown(v)),
                }),
            })
            .transpose()?
            .flatten();
        let binary_header_len = find(headers, BINARY_HEADER)
            .map(|v| match as_i128(v) {
                Some(n) if n >= 0 && n <= usize::MAX as i128 => Ok(n as usize),
                _ => Err(HeaderError {
                    name: BINARY_HEADER,
                    message: format!("expected a non-negative byte count, got {}", shown(v)),
                }),
            })
            .transpose()?;
        let delivery_count = find(headers, DELIVERY_COUNT)
            .and_then(as_i128)
            .unwrap_or(0)
            .clamp(0, u32::MAX as i128) as u32;
        // `expiration` is a TTL in ms from publication; with `timestamp` (seconds) it is a
        // deadline. Any value past what SystemTime holds gives no deadline (the broker's TTL
        // still applies), never an overflow.
        let expiry = match (properties.expiration(), properties.timestamp()) {
            (Some(ttl), Some(ts)) => ttl.as_str().parse::<u64>().ok().and_then(|ttl| {
                UNIX_EPOCH
                    .checked_add(Duration::from_secs(*ts))?
                    .checked_add(Duration::from_millis(ttl))
            }),
            _ => None,
        };
        let deadline = match (header_deadline, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(JobHeaders {
            model_version,
            deadline,
            binary_header_len,
            delivery_count,
        })
    }

    /// True when the deadline has passed at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn props(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    /// The names as PROTOCOL.md documents them: every producer and consumer takes them from here.
    #[test]
    fn names_are_the_documented_ones() {
        let names = [
            BINARY_HEADER,
            MODEL_VERSION,
            DEADLINE_MS,
            DELIVERY_COUNT,
            ERROR_CODE,
            ERROR,
        ];
        assert_eq!(
            names,
            [
                "inference-header-content-length",
                "x-model-version",
                "x-deadline-ms",
                "x-delivery-count",
                "x-error-code",
                "x-error",
            ]
        );
    }

    #[test]
    fn reads_contract_headers_of_any_integer_type() {
        let h = JobHeaders::read(&props(&[
            ("x-model-version", AMQPValue::LongInt(3)),
            (
                "Inference-Header-Content-Length",
                AMQPValue::LongString(LongString::from("120")),
            ),
            ("x-deadline-ms", AMQPValue::LongLongInt(1_000)),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
        ]))
        .unwrap();
        assert_eq!(h.model_version.as_deref(), Some("3"));
        assert_eq!(h.binary_header_len, Some(120));
        assert_eq!(h.deadline, Some(UNIX_EPOCH + Duration::from_secs(1)));
        assert_eq!(h.delivery_count, 2);
        assert!(h.expired(SystemTime::now()));
    }

    #[test]
    fn bad_headers_are_named() {
        let err = JobHeaders::read(&props(&[(
            "x-deadline-ms",
            AMQPValue::LongString(LongString::from("soon")),
        )]))
        .unwrap_err();
        assert_eq!(err.name, "x-deadline-ms");
        assert_eq!(
            err.to_string(),
            r#"header x-deadline-ms: expected unix epoch milliseconds, got "soon""#
        );
        let err = JobHeaders::read(&props(&[(BINARY_HEADER, AMQPValue::LongInt(-1))])).unwrap_err();
        assert_eq!(err.name, BINARY_HEADER);
    }

    #[test]
    fn expiration_with_timestamp_is_a_deadline() {
        let p = BasicProperties::default()
            .with_timestamp(10)
            .with_expiration(ShortString::from("500"));
        let h = JobHeaders::read(&p).unwrap();
        assert_eq!(h.deadline, Some(UNIX_EPOCH + Duration::from_millis(10_500)));
        assert!(JobHeaders::read(&BasicProperties::default())
            .unwrap()
            .deadline
            .is_none());
    }

    #[test]
    fn timestamps_past_the_end_of_time_give_no_deadline() {
        let p = BasicProperties::default()
            .with_timestamp(u64::MAX)
            .with_expiration(ShortString::from("60000"));
        assert_eq!(JobHeaders::read(&p).unwrap().deadline, None);
        let p = props(&[("x-deadline-ms", AMQPValue::LongLongInt(i64::MAX))]);
        assert!(JobHeaders::read(&p).is_ok());
    }

    #[test]
    fn echoed_values_are_bounded() {
        let long = "v".repeat(200_000);
        let err = JobHeaders::read(&props(&[(
            "x-deadline-ms",
            AMQPValue::LongString(LongString::from(long.as_str())),
        )]))
        .unwrap_err();
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }

    #[test]
    fn deep_or_large_tables_are_refused() {
        let mut v = AMQPValue::Boolean(true);
        for _ in 0..50 {
            let mut t = FieldTable::default();
            t.insert(ShortString::from("a"), v);
            v = AMQPValue::FieldTable(t);
        }
        let err = JobHeaders::read(&props(&[("deep", v)])).unwrap_err();
        assert_eq!(err.name, "table");
        let big = AMQPValue::LongString(LongString::from("x".repeat(70_000).as_str()));
        assert!(JobHeaders::read(&props(&[("big", big)])).is_err());
        let fine = AMQPValue::LongString(LongString::from("x".repeat(1_000).as_str()));
        assert!(JobHeaders::read(&props(&[("fine", fine)])).is_ok());
    }
}
