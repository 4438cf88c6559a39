//! The parts of the wire contract the load generator speaks: queue names and arguments, job
//! properties, and the few fields it reads back from a result.
//!
//! Written from PROTOCOL.md alone (not from the worker's code), so a run also checks that the
//! contract is enough to drive the fleet.

use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Deserialize;

use super::stats::Outcome;

/// The header that frames a v2 binary body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The header that carries an error result's code.
pub const ERROR_CODE: &str = "x-error-code";

/// `<prefix>.predict.<model>`.
pub fn model_queue(prefix: &str, model: &str) -> String {
    format!("{prefix}.predict.{model}")
}

/// `<prefix>.predict.<model>.echo`: the echo ceiling's queue, never one a worker serves.
pub fn echo_queue(prefix: &str, model: &str) -> String {
    format!("{}.echo", model_queue(prefix, model))
}

/// `<prefix>.results`: where results go when a job has no `reply_to`.
pub fn results_queue(prefix: &str) -> String {
    format!("{prefix}.results")
}

/// The arguments of every job queue: quorum, delivery limit 5, dead-lettered to `<prefix>.dlx`.
pub fn job_queue_arguments(prefix: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{prefix}.dlx").into()),
    );
    args
}

/// Declares a job queue idempotently, with the same arguments the worker uses.
pub async fn declare_job_queue(channel: &Channel, queue: &str, prefix: &str) -> lapin::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            job_queue_arguments(prefix),
        )
        .await
        .map(drop)
}

/// Properties of job `index`: persistent, replies to `reply_to`, correlation id = index.
pub fn job_properties(
    index: u64,
    reply_to: &str,
    binary_header_len: Option<usize>,
) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_reply_to(reply_to.into())
        .with_correlation_id(ShortString::from(index.to_string()));
    match binary_header_len {
        None => props.with_content_type("application/json".into()),
        Some(len) => {
            let mut headers = FieldTable::default();
            headers.insert(
                HEADER_LENGTH.into(),
                AMQPValue::LongLongInt(i64::try_from(len).unwrap_or(i64::MAX)),
            );
            props
                .with_content_type("application/octet-stream".into())
                .with_headers(headers)
        }
    }
}

#[derive(Deserialize)]
struct ResultHead {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    parameters: Option<ResultParameters>,
}

#[derive(Deserialize)]
struct ResultParameters {
    #[serde(default)]
    batch_size: Option<f64>,
}

/// Reads a result: job index from `correlation_id`, error code from `x-error-code` (else the
/// body's `code`), and `parameters.batch_size`. A body that is not JSON only loses the batch size.
pub fn decode_result(props: &BasicProperties, body: &[u8], at: Instant) -> Outcome {
    let index = props
        .correlation_id()
        .as_ref()
        .and_then(|id| id.as_str().parse::<u64>().ok());
    let headers = props.headers().as_ref();
    let header_code = headers
        .and_then(|h| header(h, ERROR_CODE))
        .and_then(value_string);
    let json_len = headers
        .and_then(|h| header(h, HEADER_LENGTH))
        .and_then(value_usize)
        .map_or(body.len(), |n| n.min(body.len()));
    let head = serde_json::from_slice::<ResultHead>(&body[..json_len]).ok();
    let (body_code, batch_size) = match head {
        Some(head) => (head.code, head.parameters.and_then(|p| p.batch_size)),
        None => (None, None),
    };
    let error_code = header_code.or(body_code);
    Outcome {
        index,
        at,
        batch_size: if error_code.is_none() {
            batch_size
        } else {
            None
        },
        error_code,
    }
}

/// A header by name, matched case-insensitively.
pub fn header<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn value_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

fn value_usize(value: &AMQPValue) -> Option<usize> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        other => value_string(other)?.trim().parse().ok()?,
    };
    usize::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(correlation: &str, headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default()
            .with_correlation_id(correlation.into())
            .with_headers(table)
    }

    #[test]
    fn success_result_gives_index_and_batch_size() {
        let at = Instant::now();
        let body = br#"{"id":"7","model_name":"iris","outputs":[{"name":"p","shape":[1,3],"datatype":"FP32","data":[0.1,0.2,0.7]}],"parameters":{"batch_size":17,"queue_ms":1.9}}"#;
        let o = decode_result(&props("7", &[]), body, at);
        assert_eq!(
            o,
            Outcome {
                index: Some(7),
                at,
                error_code: None,
                batch_size: Some(17.0)
            }
        );
    }

    #[test]
    fn error_code_comes_from_header_else_body() {
        let at = Instant::now();
        let body =
            br#"{"id":"3","model_name":"iris","error":"no such model","code":"unknown_model"}"#;
        let h = [(ERROR_CODE, AMQPValue::LongString("too_large".into()))];
        assert_eq!(
            decode_result(&props("3", &h), body, at)
                .error_code
                .as_deref(),
            Some("too_large")
        );
        assert_eq!(
            decode_result(&props("3", &[]), body, at)
                .error_code
                .as_deref(),
            Some("unknown_model")
        );
        let upper = [("X-Error-Code", AMQPValue::ShortString("internal".into()))];
        assert_eq!(
            decode_result(&props("3", &upper), b"not json", at)
                .error_code
                .as_deref(),
            Some("internal")
        );
    }

    #[test]
    fn binary_result_is_parsed_up_to_the_header_length() {
        let at = Instant::now();
        let head = br#"{"id":"1","outputs":[{"name":"p","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}],"parameters":{"batch_size":2}}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        let h = [(
            "Inference-Header-Content-Length",
            AMQPValue::LongUInt(head.len() as u32),
        )];
        let o = decode_result(&props("1", &h), &body, at);
        assert_eq!(o.batch_size, Some(2.0));
        assert_eq!(o.error_code, None);
    }

    #[test]
    fn garbage_is_an_outcome_without_index() {
        let o = decode_result(&props("job-x", &[]), b"\xff\x00", Instant::now());
        assert_eq!((o.index, o.error_code, o.batch_size), (None, None, None));
    }

    #[test]
    fn job_queue_arguments_follow_the_contract() {
        let args = job_queue_arguments("pfx");
        assert_eq!(
            header(&args, "x-queue-type")
                .and_then(value_string)
                .as_deref(),
            Some("quorum")
        );
        assert_eq!(
            header(&args, "x-delivery-limit").and_then(value_usize),
            Some(5)
        );
        assert_eq!(
            header(&args, "x-dead-letter-exchange")
                .and_then(value_string)
                .as_deref(),
            Some("pfx.dlx")
        );
        assert_eq!(model_queue("pfx", "iris"), "pfx.predict.iris");
        assert_eq!(echo_queue("pfx", "iris"), "pfx.predict.iris.echo");
    }

    #[test]
    fn binary_jobs_carry_the_header_length() {
        let p = job_properties(9, "amq.gen-x", Some(120));
        let h = p.headers().as_ref().unwrap();
        assert_eq!(header(h, HEADER_LENGTH).and_then(value_usize), Some(120));
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("9"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert!(job_properties(9, "r", None).headers().is_none());
    }
}
