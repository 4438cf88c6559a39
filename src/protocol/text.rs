//! Producer text inside messages, bounded: an error names what a producer sent, but never echoes
//! more than a few hundred bytes of it, so no answer, header or log line grows with a hostile
//! field (a 200 KB datatype name, a 1 MB model name).
//!
//! [`quoted`] is for one producer value inside a message; [`bounded`] is the last word on a whole
//! message before it becomes an error result's `error` and its `x-error` header.

use std::fmt::Write as _;

/// Bytes of one producer value quoted in a message.
pub const MAX_QUOTED: usize = 128;

/// Bytes of a whole error message (the `error` field and the `x-error` header).
pub const MAX_MESSAGE: usize = 1024;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` quoted (escaped like a Rust string), cut after [`MAX_QUOTED`] bytes with its full length
/// noted: `"abc"`, or `"aaaa…" (204800 bytes)`.
pub fn quoted(s: &str) -> String {
    let cut = prefix(s, MAX_QUOTED);
    let mut out = String::with_capacity(cut.len() + 24);
    out.push('"');
    for c in cut.chars() {
        let _ = write!(out, "{}", c.escape_debug());
    }
    if cut.len() < s.len() {
        let _ = write!(out, "…\" ({} bytes)", s.len());
    } else {
        out.push('"');
    }
    out
}

/// `s` cut after [`MAX_QUOTED`] bytes, ending in `…` when cut (numbers and JSON text, which
/// need no quotes).
pub fn clipped(s: &str) -> String {
    let cut = prefix(s, MAX_QUOTED);
    if cut.len() < s.len() {
        format!("{cut}… ({} bytes)", s.len())
    } else {
        cut.to_string()
    }
}

/// `message`, cut to at most [`MAX_MESSAGE`] bytes on a character boundary (ending in `…`).
pub fn bounded(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE {
        let keep = prefix(&message, MAX_MESSAGE - '…'.len_utf8()).len();
        message.truncate(keep);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quoted("FP33"), r#""FP33""#);
        assert_eq!(quoted("a\"b\n"), r#""a\"b\n""#);
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary_with_their_length() {
        let long = "é".repeat(100_000);
        let q = quoted(&long);
        assert!(q.len() < MAX_QUOTED + 32, "{}", q.len());
        assert!(q.ends_with("…\" (200000 bytes)"), "{q}");
    }

    #[test]
    fn messages_never_exceed_the_bound() {
        for n in [0, 1, 1023, 1024, 1025, 5000] {
            let m = bounded("ü".repeat(n));
            assert!(m.len() <= MAX_MESSAGE, "{n}: {}", m.len());
        }
        assert_eq!(bounded("short"), "short");
    }
}
