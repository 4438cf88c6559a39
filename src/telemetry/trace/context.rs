//! W3C Trace Context (`traceparent`, `tracestate`) in AMQP header tables: strict, bounded
//! parsing of what a producer sent, and writing the worker's context onto results and
//! progress messages. Pure: takes and returns header tables, never sees a channel.
//!
//! Invalid values are ignored (the job is served without a parent context), as the W3C
//! specification asks of a receiver: a malformed `traceparent` discards `tracestate` too, and
//! a malformed `tracestate` is dropped on its own.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header carrying the trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// Longest `traceparent` value read: the version-00 form is 55 bytes; later versions may append
/// fields, which are ignored.
const MAX_TRACEPARENT: usize = 256;
/// Longest `tracestate` value kept (the W3C minimum a vendor must propagate).
pub const MAX_TRACESTATE: usize = 512;
/// Most `tracestate` list members (W3C limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The sampled bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: who the parent of the worker's spans is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value. Versions other than `00` are read by their version-00
    /// prefix, as the specification asks; `ff`, upper-case hex, all-zero ids and anything
    /// malformed give `None`.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.as_bytes();
        if v.len() < 55 || v.len() > MAX_TRACEPARENT {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        // Version 00 has exactly four fields; a later version may add fields after a '-'.
        if (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the producer recorded (sampled) its side of the trace.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The version-00 header value. Only the sampled flag is kept: the other bits have no
    /// meaning in version 00 and must be written as zero.
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags & FLAG_SAMPLED
        )
    }
}

/// A job's trace context as it travels: the `traceparent` and the validated `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    /// Empty when the producer sent none or an invalid one.
    pub state: String,
}

impl TraceContext {
    /// The context a producer put in a message's headers; `None` when there is no valid
    /// `traceparent`. Header names match case-insensitively; two headers with the same name
    /// (in different cases) are ambiguous and ignored.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<TraceContext> {
        let headers = headers?;
        Self::from_values(
            header_str(headers, TRACEPARENT)?,
            header_str(headers, TRACESTATE),
        )
    }

    /// The context of a `traceparent` value and an optional `tracestate` value, wherever they
    /// came from (an HTTP request's headers, for instance); the same rules as
    /// [`TraceContext::from_headers`].
    pub fn from_values(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let parent = TraceParent::parse(traceparent)?;
        let state = tracestate
            .filter(|s| valid_tracestate(s))
            .map(|s| s.trim_matches([' ', '\t']).to_string())
            .unwrap_or_default();
        Some(TraceContext { parent, state })
    }

    /// Writes `traceparent` (and `tracestate` when there is one) into `headers`, replacing
    /// any value of the same name.
    pub fn inject(&self, headers: &mut FieldTable) {
        headers.insert(
            ShortString::from(TRACEPARENT),
            AMQPValue::LongString(LongString::from(self.parent.header_value())),
        );
        if !self.state.is_empty() {
            headers.insert(
                ShortString::from(TRACESTATE),
                AMQPValue::LongString(LongString::from(self.state.as_str())),
            );
        }
    }
}

/// The value of the one header named `name` (any case), as text; `None` when absent,
/// duplicated, not a string, not UTF-8, or longer than any valid value.
fn header_str<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    let bytes = match header_value(headers, name)? {
        AMQPValue::LongString(s) => s.as_bytes(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes(),
        _ => return None,
    };
    if bytes.len() > MAX_TRACEPARENT.max(MAX_TRACESTATE) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// The value of the one header named `name` (any case); `None` when absent or duplicated.
pub(super) fn header_value<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    let mut found = headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str().eq_ignore_ascii_case(name));
    let (_, value) = found.next()?;
    found.next().is_none().then_some(value)
}

/// A `tracestate` list: at most 32 `key=value` members, keys unique and well formed, values of
/// printable ASCII without `,` and `=`, the whole at most [`MAX_TRACESTATE`] bytes.
pub fn valid_tracestate(value: &str) -> bool {
    if value.len() > MAX_TRACESTATE {
        return false;
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue; // empty members are allowed and skipped
        }
        let Some((key, val)) = member.split_once('=') else {
            return false;
        };
        if !valid_key(key) || !valid_value(val) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
        if keys.len() > MAX_TRACESTATE_MEMBERS {
            return false;
        }
    }
    true
}

/// `lcalpha 0*255(lcalpha / DIGIT / "_" / "-"/ "*" / "/")`, or `tenant@system` with a tenant
/// of at most 241 and a system of at most 14 such characters.
fn valid_key(key: &str) -> bool {
    let part = |s: &str, max: usize, digit_first: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (digit_first && b[0].is_ascii_digit()))
            && b.iter().all(|&c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.split_once('@') {
        None => part(key, 256, false),
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII except `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
