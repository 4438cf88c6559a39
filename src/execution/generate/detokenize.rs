//! From tokens to text as they come: each new token adds the text it completes, never half a
//! UTF-8 character, and text that may be the start of a stop string is held back until it is
//! known not to be one. The pieces handed out, joined, are the job's whole output.
//!
//! Decoding is incremental the way text-generation-inference does it: the tokens since the
//! last piece are decoded with a few tokens before them (a tokenizer's decoding of a token can
//! depend on the one before: SentencePiece's leading space), and the new text is what the
//! longer decoding adds; a decoding that ends in U+FFFD is an incomplete character, and waits
//! for the next token.

use std::sync::Arc;

/// Tokens of the prompt decoded before the first generated one (for the context of its text).
const PROMPT_CONTEXT: usize = 5;

/// One job's text: the tokens decoded so far and what was handed out.
pub struct TextStream {
    tokenizer: Arc<tokenizers::Tokenizer>,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// The output decoded so far.
    text: String,
    /// Bytes of `text` handed out.
    sent: usize,
    stop: Vec<String>,
    longest_stop: usize,
}

/// What one token added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Text to hand out now (possibly empty).
    pub piece: String,
    /// A stop string was reached: the output ends before it.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(
        tokenizer: Arc<tokenizers::Tokenizer>,
        prompt: &[u32],
        stop: Vec<String>,
    ) -> TextStream {
        let context = &prompt[prompt.len().saturating_sub(PROMPT_CONTEXT)..];
        TextStream {
            tokenizer,
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
            text: String::new(),
            sent: 0,
            longest_stop: stop.iter().map(String::len).max().unwrap_or(0),
            stop,
        }
    }

    fn decode(&self, from: usize, to: usize) -> String {
        self.tokenizer
            .decode(&self.ids[from..to], true)
            .unwrap_or_default()
    }

    /// Adds generated token `id`.
    pub fn push(&mut self, id: u32) -> Added {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset);
        let full = self.decode(self.prefix_offset, self.ids.len());
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                self.text.push_str(new);
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
            }
        }
        self.take(false)
    }

    /// The rest at the end of the job (text held back, an incomplete character as U+FFFD),
    /// unless the end was a stop string.
    pub fn finish(&mut self) -> Added {
        if self.read_offset < self.ids.len() {
            let prefix = self.decode(self.prefix_offset, self.read_offset);
            let full = self.decode(self.prefix_offset, self.ids.len());
            if let Some(new) = full.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.prefix_offset = self.ids.len();
            self.read_offset = self.ids.len();
        }
        self.take(true)
    }

    /// Hands out what is safe: up to a stop string (and then nothing more), or up to the
    /// longest end of the text that could begin one (all of it at the end).
    fn take(&mut self, at_end: bool) -> Added {
        if !self.stop.is_empty() {
            let mut from = self.sent.saturating_sub(self.longest_stop);
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            let found = self
                .stop
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()))
                .min();
            if let Some(at) = found {
                let end = (from + at).max(self.sent);
                let piece = self.text[self.sent..end].to_string();
                self.text.truncate(end);
                self.sent = end;
                return Added {
                    piece,
                    stopped: true,
                };
            }
        }
        let safe = if at_end {
            self.text.len()
        } else {
            self.safe_end()
        };
        let piece = self.text[self.sent..safe].to_string();
        self.sent = safe;
        Added {
            piece,
            stopped: false,
        }
    }

    /// The end of the text that is not the beginning of a stop string.
    fn safe_end(&self) -> usize {
        let len = self.text.len();
        let mut safe = len;
        for stop in &self.stop {
            // The longest proper prefix of `stop` that the text ends with.
            for k in (1..stop.len().min(len + 1)).rev() {
                let start = len - k;
                if start < self.sent || !self.text.is_char_boundary(start) {
                    continue;
                }
                if stop.as_bytes().starts_with(&self.text.as_bytes()[start..]) {
                    safe = safe.min(start);
                    break;
                }
            }
        }
        safe.max(self.sent)
    }

    /// The output so far, as handed out.
    pub fn sent(&self) -> &str {
        &self.text[..self.sent]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled generative model's byte-level tokenizer.
    fn tokenizer() -> Arc<tokenizers::Tokenizer> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/storyteller/1/tokenizer.json"
        );
        Arc::new(tokenizers::Tokenizer::from_file(path).expect("the bundled tokenizer loads"))
    }

    fn ids(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let t = tokenizer();
        let text = "Caf\u{e9} \u{2014} na\u{ef}ve \u{65e5}\u{672c} and God said";
        let tokens = ids(&t, text);
        // Byte-level: a character of several bytes spans several tokens.
        assert!(tokens.len() > text.chars().count() / 2);
        let mut stream = TextStream::new(t.clone(), &ids(&t, "In the beginning"), vec![]);
        let mut pieces = Vec::new();
        for &id in &tokens {
            let added = stream.push(id);
            assert!(!added.piece.contains('\u{FFFD}'), "{:?}", added.piece);
            pieces.push(added.piece);
        }
        pieces.push(stream.finish().piece);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().filter(|p| !p.is_empty()).count() > 3);
    }

    #[test]
    fn a_stop_string_ends_the_text_before_it_and_is_held_back_until_known() {
        let t = tokenizer();
        let mut stream = TextStream::new(t.clone(), &[], vec!["the earth".into()]);
        let mut out = String::new();
        let mut stopped = false;
        for id in ids(&t, "God created the heaven and the earth. And") {
            let added = stream.push(id);
            // Never hands out a part of the stop string.
            assert!(!added.piece.contains("the e") || added.piece.contains("the heaven"));
            out.push_str(&added.piece);
            if added.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "God created the heaven and ");
        assert_eq!(stream.sent(), out);
    }

    #[test]
    fn held_back_text_comes_out_at_the_end() {
        let t = tokenizer();
        let mut stream = TextStream::new(t.clone(), &[], vec!["light.".into()]);
        let mut out = String::new();
        for id in ids(&t, "Let there be light") {
            out.push_str(&stream.push(id).piece);
        }
        assert_eq!(out, "Let there be ");
        let end = stream.finish();
        assert!(!end.stopped);
        assert_eq!(out + &end.piece, "Let there be light");
    }
}
