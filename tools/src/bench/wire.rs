//! The parts of the wire contract the load generator speaks: queue names and arguments, job
//! properties, and the few fields it reads back from a result.
//!
//! Names (queues, headers) and queue arguments come from their one definition in the
//! library ([`infermq::client::model_queue`], [`infermq::broker::Topology`],
//! [`infermq::broker::headers`]); the tests below pin them to the
//! values PROTOCOL.md documents, and everything else the bench sends is written from
//! PROTOCOL.md alone, so a run also checks that the contract is enough to drive the fleet.

use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::Deserialize;

use super::stats::Outcome;
use infermq::broker::headers::{as_i128, as_string, find, BINARY_HEADER, ERROR_CODE};
use infermq::broker::Topology;
use infermq::client::JobProperties;

/// `<prefix>.predict.<model>.echo` from the model's queue: the echo ceiling's queue, never
/// one a worker serves.
pub fn echo_queue(model_queue: &str) -> String {
    format!("{model_queue}.echo")
}

/// The arguments of every job queue: quorum, delivery limit 5 (the default
/// `broker.delivery_limit`), dead-lettered to `<prefix>.dlx`.
pub fn job_queue_arguments(prefix: &str) -> FieldTable {
    Topology::new(prefix, 5).job_queue_arguments()
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

/// Properties of job `index`: persistent, replies to `reply_to`, correlation id = index
/// (the library's [`JobProperties`], as every producer writes them).
pub fn job_properties(
    index: u64,
    reply_to: &str,
    binary_header_len: Option<usize>,
) -> BasicProperties {
    JobProperties::new()
        .binary_header_len(binary_header_len)
        .reply_to(reply_to)
        .correlation_id(&index.to_string())
        .build()
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
    let header_code = find(headers, ERROR_CODE).and_then(value_string);
    let json_len = find(headers, BINARY_HEADER)
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

/// A text header value; a byte array (which some clients send for strings) is read as UTF-8.
fn value_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => as_string(value),
        _ => None,
    }
}

fn value_usize(value: &AMQPValue) -> Option<usize> {
    usize::try_from(as_i128(value)?).ok()
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
        let arg = |name| find(Some(&args), name);
        assert_eq!(
            arg("x-queue-type").and_then(value_string).as_deref(),
            Some("quorum")
        );
        assert_eq!(arg("x-delivery-limit").and_then(value_usize), Some(5));
        assert_eq!(
            arg("x-dead-letter-exchange")
                .and_then(value_string)
                .as_deref(),
            Some("pfx.dlx")
        );
        let queue = infermq::client::model_queue("pfx", "iris").unwrap();
        assert_eq!(queue, "pfx.predict.iris");
        assert_eq!(echo_queue(&queue), "pfx.predict.iris.echo");
    }

    #[test]
    fn binary_jobs_carry_the_header_length() {
        let p = job_properties(9, "amq.gen-x", Some(120));
        let h = p.headers().as_ref().unwrap();
        assert_eq!(
            find(Some(h), BINARY_HEADER).and_then(value_usize),
            Some(120)
        );
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("9"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert!(job_properties(9, "r", None).headers().is_none());
    }
}
