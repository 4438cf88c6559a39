//! Server-sent events: the bytes of a `text/event-stream` body in, as they arrive, whole
//! events out. Pure (no I/O), so that an HTTP frame may end anywhere, even inside a line or a
//! UTF-8 character, and the tests need no server.
//!
//! The rules of the WHATWG `EventSource` parser that a stream of JSON chunks needs: a line ends
//! with LF, CRLF or CR; a blank line ends an event; the `data` lines of an event are joined by
//! LF; one space after a field's colon is dropped; a line that begins with a colon is a comment;
//! `event` names the event and `id`, `retry` and unknown fields are ignored; an event without a
//! `data` line is not dispatched, and neither is a last one that no blank line ended (the stream
//! was cut).

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event` field; empty when the event has none (the default type, `message`).
    pub name: String,
    pub data: String,
}

/// Cuts a stream into events; feed it the body's bytes in order.
#[derive(Debug, Default)]
pub struct EventReader {
    /// The line read so far, not yet ended.
    line: Vec<u8>,
    /// The last byte fed ended a line with CR: an LF first thing now is that line's CRLF.
    after_cr: bool,
    name: String,
    data: String,
    has_data: bool,
}

impl EventReader {
    /// Reads `bytes`, appending to `events` every event they end.
    pub fn feed(&mut self, mut bytes: &[u8], events: &mut Vec<Event>) {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            self.end_line(events);
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let line = &self.line;
        if line.is_empty() {
            if self.has_data {
                events.push(Event {
                    name: std::mem::take(&mut self.name),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.name.clear();
            self.data.clear();
            self.has_data = false;
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &[][..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(&String::from_utf8_lossy(value));
                    self.has_data = true;
                }
                b"event" => self.name = String::from_utf8_lossy(value).into_owned(),
                _ => {}
            }
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    /// The events of `stream`, read whole and cut in two at every byte.
    fn read(stream: &[u8]) -> Vec<Event> {
        let mut whole = Vec::new();
        EventReader::default().feed(stream, &mut whole);
        for cut in 0..=stream.len() {
            let mut events = Vec::new();
            let mut reader = EventReader::default();
            reader.feed(&stream[..cut], &mut events);
            reader.feed(&[], &mut events);
            reader.feed(&stream[cut..], &mut events);
            assert_eq!(events, whole, "cut at byte {cut}");
        }
        let mut events = Vec::new();
        let mut reader = EventReader::default();
        for b in stream {
            reader.feed(std::slice::from_ref(b), &mut events);
        }
        assert_eq!(events, whole, "a byte at a time");
        whole
    }

    #[test]
    fn cases() {
        let cases: &[(&str, &[u8], Vec<Event>)] = &[
            (
                "the gateway's chunks",
                b"data: {\"a\":1}\n\ndata: [DONE]\n\n",
                vec![event("", "{\"a\":1}"), event("", "[DONE]")],
            ),
            (
                "CRLF and CR line ends",
                b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\n",
                vec![event("", "a"), event("", "b"), event("", "c")],
            ),
            (
                "data lines joined, one space dropped, no space kept",
                b"data: one\ndata:two\ndata:  three\n\n",
                vec![event("", "one\ntwo\n three")],
            ),
            (
                "a named event, comments and other fields",
                b": keep-alive\nevent: error\nid: 7\nretry: 10\ndata: {}\n\n",
                vec![event("error", "{}")],
            ),
            (
                "an empty data line is an event; no data line is none",
                b"data\n\nevent: x\n\n\n\ndata:\n\n",
                vec![event("", ""), event("", "")],
            ),
            (
                "a name does not outlive its event",
                b"event: error\ndata: 1\n\ndata: 2\n\n",
                vec![event("error", "1"), event("", "2")],
            ),
            (
                "an event that no blank line ends is dropped",
                b"data: 1\n\ndata: 2\n",
                vec![event("", "1")],
            ),
            (
                "UTF-8 whole across any cut",
                "data: «Dieu» dit\n\n".as_bytes(),
                vec![event("", "«Dieu» dit")],
            ),
        ];
        for (name, stream, expected) in cases {
            assert_eq!(&read(stream), expected, "{name}");
        }
    }
}
