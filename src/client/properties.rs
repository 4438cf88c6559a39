//! A job's AMQP properties, as the contract (`docs/PROTOCOL.md`) asks of any producer, written
//! in one place: the client, the gateway and the load generator (`tools/`) all build them here.
//!
//! Every job is persistent (`delivery_mode` 2); its content type follows its framing (JSON, or
//! the binary extension with the `inference-header-content-length` header); `reply_to`,
//! `correlation_id` and `user_id` when the producer gives them; and the contract's headers:
//! `x-deadline-ms`, `x-model-version`, the W3C trace context (`traceparent`, `tracestate`, or
//! the span links of a gathered job), a metadata request's `x-infermq-request` and the
//! tenant a job is for (`x-infermq-tenant`). A job without any header carries no header table.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::broker::headers::{BINARY_HEADER, DEADLINE_MS, MODEL_VERSION, TENANT};
use crate::protocol::metadata::{METADATA_REQUEST, REQUEST_HEADER};
use crate::telemetry::trace::context::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::telemetry::trace::links::inject_links;

/// The builder of a job's properties: [`JobProperties::new`], the setters the job needs, then
/// [`JobProperties::build`].
#[derive(Debug, Clone, Default)]
pub struct JobProperties {
    binary_header_len: Option<usize>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    headers: FieldTable,
}

impl JobProperties {
    /// A persistent job with a JSON body and no header yet.
    pub fn new() -> JobProperties {
        JobProperties::default()
    }

    /// The body's framing: `Some(n)` is the binary extension whose JSON part is `n` bytes
    /// (`application/octet-stream` and the `inference-header-content-length` header), `None`
    /// is JSON (`application/json`).
    pub fn binary_header_len(mut self, header_len: Option<usize>) -> JobProperties {
        self.binary_header_len = header_len;
        self
    }

    /// The queue the result goes to.
    pub fn reply_to(mut self, queue: &str) -> JobProperties {
        self.reply_to = Some(queue.to_owned());
        self
    }

    /// The id the result carries back.
    pub fn correlation_id(mut self, id: &str) -> JobProperties {
        self.correlation_id = Some(id.to_owned());
        self
    }

    /// The `user_id` property (RabbitMQ checks it against the connection's user).
    pub fn user_id(mut self, user: Option<&str>) -> JobProperties {
        self.user_id = user.map(str::to_owned);
        self
    }

    /// `x-deadline-ms`: the deadline in unix epoch milliseconds (0 for a time before the epoch).
    pub fn deadline(mut self, at: SystemTime) -> JobProperties {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.headers
            .insert(DEADLINE_MS.into(), AMQPValue::LongLongInt(ms));
        self
    }

    /// `x-model-version`, when a version is asked for.
    pub fn model_version(self, version: Option<&str>) -> JobProperties {
        match version {
            Some(version) => self.text_header(MODEL_VERSION, version),
            None => self,
        }
    }

    /// The caller's W3C trace context, relayed as it came: `traceparent` and `tracestate`.
    pub fn trace_context(
        mut self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> JobProperties {
        if let Some(value) = traceparent {
            self = self.text_header(TRACEPARENT, value);
        }
        if let Some(value) = tracestate {
            self = self.text_header(TRACESTATE, value);
        }
        self
    }

    /// A span link to each traced request a gathered job carries (none: no header).
    pub fn trace_links(mut self, links: &[TraceContext]) -> JobProperties {
        inject_links(links, &mut self.headers);
        self
    }

    /// `x-infermq-tenant`: who the job is for (an API key's name), counted per tenant by the
    /// workers; informative, never checked.
    pub fn tenant(self, tenant: Option<&str>) -> JobProperties {
        match tenant {
            Some(tenant) => self.text_header(TENANT, tenant),
            None => self,
        }
    }

    /// A metadata request (`x-infermq-request: metadata`) instead of a prediction.
    pub fn metadata_request(self) -> JobProperties {
        self.text_header(REQUEST_HEADER, METADATA_REQUEST)
    }

    /// Other headers of the producer's own; the contract's headers set by this builder win.
    pub fn headers(mut self, headers: FieldTable) -> JobProperties {
        for (name, value) in headers.inner() {
            if !self.headers.contains_key(name.as_str()) {
                self.headers.insert(name.clone(), value.clone());
            }
        }
        self
    }

    /// The properties to publish with.
    pub fn build(self) -> BasicProperties {
        let mut headers = self.headers;
        if let Some(len) = self.binary_header_len {
            headers.insert(
                BINARY_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(len).unwrap_or(i64::MAX)),
            );
        }
        let content_type = crate::protocol::content_type(self.binary_header_len.is_some());
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(content_type));
        if let Some(queue) = self.reply_to {
            properties = properties.with_reply_to(queue.into());
        }
        if let Some(id) = self.correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        if let Some(user) = self.user_id {
            properties = properties.with_user_id(user.into());
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        properties
    }

    fn text_header(mut self, name: &str, value: &str) -> JobProperties {
        self.headers
            .insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::headers::{as_i128, as_string, find, JobHeaders};

    fn header(p: &BasicProperties, name: &str) -> Option<String> {
        find(p.headers().as_ref(), name).and_then(as_string)
    }

    #[test]
    fn a_json_job_is_persistent_and_carries_no_header_table() {
        let p = JobProperties::new()
            .reply_to("amq.gen-x")
            .correlation_id("9")
            .build();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(p.reply_to().as_ref().map(|q| q.as_str()), Some("amq.gen-x"));
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("9"));
        assert!(p.headers().is_none());
        assert!(p.user_id().is_none());
    }

    #[test]
    fn a_binary_job_carries_its_header_length() {
        let p = JobProperties::new().binary_header_len(Some(120)).build();
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/octet-stream")
        );
        let len = find(p.headers().as_ref(), BINARY_HEADER).and_then(as_i128);
        assert_eq!(len, Some(120));
    }

    /// What the builder writes, the worker reads back (`JobHeaders`).
    #[test]
    fn the_worker_reads_what_the_builder_writes() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let p = JobProperties::new()
            .deadline(at)
            .model_version(Some("3"))
            .binary_header_len(Some(64))
            .build();
        let read = JobHeaders::read(&p).unwrap();
        assert_eq!(read.deadline, Some(at));
        assert_eq!(read.model_version.as_deref(), Some("3"));
        assert_eq!(read.binary_header_len, Some(64));
    }

    #[test]
    fn trace_context_metadata_and_own_headers() {
        let mut own = FieldTable::default();
        own.insert("x-tenant".into(), AMQPValue::LongString("acme".into()));
        own.insert(BINARY_HEADER.into(), AMQPValue::LongLongInt(1));
        let p = JobProperties::new()
            .trace_context(Some("00-abc-def-01"), Some("k=v"))
            .metadata_request()
            .headers(own)
            .binary_header_len(Some(7))
            .user_id(Some("alice"))
            .build();
        assert_eq!(header(&p, "traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(header(&p, "tracestate").as_deref(), Some("k=v"));
        assert_eq!(header(&p, REQUEST_HEADER).as_deref(), Some("metadata"));
        assert_eq!(header(&p, "x-tenant").as_deref(), Some("acme"));
        assert_eq!(header(&p, BINARY_HEADER).as_deref(), Some("7"));
        assert_eq!(p.user_id().as_ref().map(|u| u.as_str()), Some("alice"));
        let none = JobProperties::new()
            .model_version(None)
            .trace_context(None, None)
            .trace_links(&[])
            .build();
        assert!(none.headers().is_none());
    }
}
