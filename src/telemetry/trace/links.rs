//! Span links in AMQP headers: one job that carries the work of several traced requests (the
//! gateway's gathered jobs) names each request's context in `x-trace-links`, and the worker's
//! `receive` span links to each, as OpenTelemetry's messaging conventions ask of a batch.
//! Pure: reads and writes header tables.
//!
//! The value is an AMQP array; each element is a table with `traceparent` (and optionally
//! `tracestate`), read by the rules of [`TraceContext::from_headers`], or a bare `traceparent`
//! string. Invalid elements are skipped; elements after the first [`MAX_LINKS`] are ignored.
//! Like the other trace headers, nothing here ever causes an error result.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::context::{header_value, TraceContext};

/// The header naming the contexts a job's `receive` span links to.
pub const TRACE_LINKS: &str = "x-trace-links";

/// Most links read from one job (and recorded on one span): the gateway never gathers more
/// requests than this into one job.
pub const MAX_LINKS: usize = 256;

/// Bytes of `x-trace-links` [`inject_links`] writes at most with `tracestate`s: a link that
/// would pass it is written as its bare `traceparent` (60 bytes), so the header stays well
/// inside the worker's 64 KiB of headers (at most 256 × 60 bytes past this).
const LINKS_BYTES: usize = 16 * 1024;

/// The contexts named by `x-trace-links`, at most [`MAX_LINKS`], invalid ones skipped. Empty
/// when the header is absent, duplicated or not an array.
pub fn links_from_headers(headers: Option<&FieldTable>) -> Vec<TraceContext> {
    let Some(AMQPValue::FieldArray(array)) = headers.and_then(|h| header_value(h, TRACE_LINKS))
    else {
        return Vec::new();
    };
    array
        .as_slice()
        .iter()
        .take(MAX_LINKS)
        .filter_map(|element| match element {
            AMQPValue::FieldTable(table) => TraceContext::from_headers(Some(table)),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
                .ok()
                .and_then(|s| TraceContext::from_values(s, None)),
            AMQPValue::ShortString(s) => TraceContext::from_values(s.as_str(), None),
            _ => None,
        })
        .collect()
}

/// Writes `x-trace-links` naming `links` (each a table of `traceparent` and, when it has one,
/// `tracestate`); writes nothing when `links` is empty.
pub fn inject_links(links: &[TraceContext], headers: &mut FieldTable) {
    if links.is_empty() {
        return;
    }
    let mut array = FieldArray::default();
    let mut bytes = 0;
    for link in links.iter().take(MAX_LINKS) {
        let traceparent = link.parent.header_value();
        // A table: its length, `traceparent` and `tracestate` keys and long strings.
        let table_bytes = 5 + 17 + traceparent.len() + 16 + link.state.len();
        if link.state.is_empty() || bytes + table_bytes > LINKS_BYTES {
            bytes += 5 + traceparent.len();
            array.push(link_string(&traceparent));
        } else {
            bytes += table_bytes;
            let mut table = FieldTable::default();
            link.inject(&mut table);
            array.push(AMQPValue::FieldTable(table));
        }
    }
    headers.insert(ShortString::from(TRACE_LINKS), AMQPValue::FieldArray(array));
}

/// A link element written as a bare `traceparent` string (what a producer may send).
pub fn link_string(traceparent: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(traceparent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::context::TRACEPARENT;

    const A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const B: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn context(tp: &str, state: Option<&str>) -> TraceContext {
        TraceContext::from_values(tp, state).expect("valid")
    }

    fn with(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(TRACE_LINKS), value);
        headers
    }

    #[test]
    fn written_links_read_back_with_their_state() {
        let links = vec![context(A, Some("rojo=1")), context(B, None)];
        let mut headers = FieldTable::default();
        inject_links(&links, &mut headers);
        assert_eq!(links_from_headers(Some(&headers)), links);
        let mut none = FieldTable::default();
        inject_links(&[], &mut none);
        assert!(none.inner().is_empty(), "no links, no header");
    }

    #[test]
    fn many_long_states_fit_the_headers_budget() {
        let state = format!("a={},b={}", "v".repeat(250), "w".repeat(240));
        let links: Vec<TraceContext> = (0..MAX_LINKS + 10)
            .map(|_| context(A, Some(&state)))
            .collect();
        let mut headers = FieldTable::default();
        inject_links(&links, &mut headers);
        let (size, _) = crate::broker::headers::table_size(&headers);
        assert!(size <= LINKS_BYTES + MAX_LINKS * 60 + 64, "{size} bytes");
        let read = links_from_headers(Some(&headers));
        assert_eq!(read.len(), MAX_LINKS);
        assert_eq!(read[0].state, state, "states are kept while they fit");
        assert!(read.iter().all(|l| l.parent == read[0].parent));
        assert_eq!(read[MAX_LINKS - 1].state, "", "then written without");
    }

    #[test]
    fn bare_strings_are_links_and_invalid_elements_are_skipped() {
        let mut bad_table = FieldTable::default();
        bad_table.insert(ShortString::from(TRACEPARENT), link_string("00-zz"));
        let mut array = FieldArray::default();
        array.push(link_string(A));
        array.push(AMQPValue::LongLongInt(7));
        array.push(AMQPValue::FieldTable(bad_table));
        array.push(link_string(&"0".repeat(1 << 16)));
        array.push(AMQPValue::ShortString(ShortString::from(B)));
        let read = links_from_headers(Some(&with(AMQPValue::FieldArray(array))));
        assert_eq!(read, vec![context(A, None), context(B, None)]);
    }

    #[test]
    fn anything_but_an_array_is_no_links() {
        for value in [
            link_string(A),
            AMQPValue::Boolean(true),
            AMQPValue::FieldTable(FieldTable::default()),
        ] {
            assert!(links_from_headers(Some(&with(value))).is_empty());
        }
        assert!(links_from_headers(None).is_empty());
        let mut twice = with(AMQPValue::FieldArray(FieldArray::default()));
        let mut array = FieldArray::default();
        array.push(link_string(A));
        twice.insert(
            ShortString::from("X-Trace-Links"),
            AMQPValue::FieldArray(array),
        );
        assert!(links_from_headers(Some(&twice)).is_empty(), "duplicated");
    }

    #[test]
    fn at_most_max_links_are_read() {
        let mut array = FieldArray::default();
        for _ in 0..MAX_LINKS + 5 {
            array.push(link_string(A));
        }
        let read = links_from_headers(Some(&with(AMQPValue::FieldArray(array))));
        assert_eq!(read.len(), MAX_LINKS);
    }
}
