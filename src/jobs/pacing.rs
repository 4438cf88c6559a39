//! When a streamed generation job's text goes out: the pure policy of its relay
//! (`jobs::generate`), apart from the channel and the clock (it is given `now`).
//!
//! Every stream message costs a publish, a broker confirm and a delivery to the consumer,
//! whatever its length; a decoder makes a token in a millisecond or less. So pieces wait in the
//! pacer and go out together:
//! - the first piece goes at once (time to first token is never delayed);
//! - while the job's last message is not confirmed, new pieces wait: a broker that confirms
//!   slowly gets fewer, longer messages, and a job never has more than one message in flight;
//! - with `stream_interval` (`[generate] stream_interval_ms`), a message goes no sooner than
//!   that after the job's previous one.
//!
//! The text is only grouped: the messages joined are the pieces joined, in order.

use std::time::{Duration, Instant};

/// One streamed job's text not yet sent, and when the next message may go.
#[derive(Debug)]
pub struct StreamPacer {
    interval: Duration,
    held: String,
    last_sent: Option<Instant>,
    unconfirmed: bool,
}

impl StreamPacer {
    pub fn new(interval: Duration) -> StreamPacer {
        StreamPacer {
            interval,
            held: String::new(),
            last_sent: None,
            unconfirmed: false,
        }
    }

    /// A new piece of the job's text.
    pub fn push(&mut self, piece: &str) {
        self.held.push_str(piece);
    }

    /// When the held text may go, seen at `now`: `None` while there is none or the last
    /// message waits for its confirm; else `now` or the later instant the interval allows.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if self.held.is_empty() || self.unconfirmed {
            return None;
        }
        match self.last_sent {
            Some(last) if last + self.interval > now => Some(last + self.interval),
            _ => Some(now),
        }
    }

    /// The held text, if it may go at `now`; it is then in flight until [`Self::confirmed`].
    pub fn take(&mut self, now: Instant) -> Option<String> {
        if self.due(now)? > now {
            return None;
        }
        self.last_sent = Some(now);
        self.unconfirmed = true;
        Some(std::mem::take(&mut self.held))
    }

    /// The broker kept the message in flight.
    pub fn confirmed(&mut self) {
        self.unconfirmed = false;
    }

    /// Whether a message waits for its confirm.
    #[cfg(test)]
    pub fn in_flight(&self) -> bool {
        self.unconfirmed
    }

    /// What is held, for the job's last message.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_piece_goes_at_once_even_with_an_interval() {
        let start = Instant::now();
        let mut pacer = StreamPacer::new(ms(50));
        assert_eq!(pacer.take(start), None, "nothing held");
        pacer.push("In");
        assert_eq!(pacer.take(start).as_deref(), Some("In"));
        assert!(pacer.in_flight());
    }

    #[test]
    fn pieces_wait_for_the_confirm_then_go_together() {
        let start = Instant::now();
        let mut pacer = StreamPacer::new(Duration::ZERO);
        pacer.push("In");
        assert!(pacer.take(start).is_some());
        pacer.push(" the");
        pacer.push(" beginning");
        assert_eq!(pacer.due(start), None, "the first message is not confirmed");
        assert_eq!(pacer.take(start + ms(5)), None);
        pacer.confirmed();
        assert_eq!(pacer.take(start + ms(5)).as_deref(), Some(" the beginning"));
    }

    #[test]
    fn the_interval_spaces_messages() {
        let start = Instant::now();
        let mut pacer = StreamPacer::new(ms(50));
        pacer.push("a");
        pacer.take(start);
        pacer.confirmed();
        pacer.push("b");
        assert_eq!(pacer.due(start + ms(10)), Some(start + ms(50)));
        assert_eq!(pacer.take(start + ms(49)), None);
        pacer.push("c");
        assert_eq!(pacer.take(start + ms(50)).as_deref(), Some("bc"));
    }

    #[test]
    fn what_is_held_at_the_end_goes_with_the_last_message() {
        let start = Instant::now();
        let mut pacer = StreamPacer::new(ms(50));
        pacer.push("a");
        pacer.take(start);
        pacer.push("b");
        assert_eq!(pacer.finish(), "b");
        assert_eq!(pacer.finish(), "");
    }

    proptest! {
        /// Whatever the pieces, confirms and clock, the messages joined (the last being what is
        /// held at the end) are the pieces joined, no message is empty, at most one is
        /// unconfirmed, and after the first, messages are `interval` apart at least.
        #[test]
        fn messages_join_to_the_pieces_and_keep_the_interval(
            steps in proptest::collection::vec((".{0,3}", 0u64..40, any::<bool>()), 0..60),
            interval in 0u64..30,
        ) {
            let mut now = Instant::now();
            let mut pacer = StreamPacer::new(ms(interval));
            let mut pieces = String::new();
            let mut sent = Vec::<(Instant, String)>::new();
            for (piece, wait, confirm) in steps {
                now += ms(wait);
                pacer.push(&piece);
                pieces.push_str(&piece);
                if confirm {
                    pacer.confirmed();
                }
                let in_flight = pacer.in_flight();
                if let Some(text) = pacer.take(now) {
                    prop_assert!(!in_flight, "two messages in flight");
                    prop_assert!(!text.is_empty());
                    if let Some((last, _)) = sent.last() {
                        prop_assert!(now - *last >= ms(interval));
                    }
                    sent.push((now, text));
                }
            }
            let mut joined: String = sent.into_iter().map(|(_, t)| t).collect();
            joined.push_str(&pacer.finish());
            prop_assert_eq!(joined, pieces);
        }
    }
}
