//! [`ModelName`]: the one rule for a model's name, which every part of infermq that takes one
//! applies — the repository's listing, training jobs, the gateway's paths and the client.
//!
//! A model's name is a directory of the repository, the tail of its queue's name
//! (`<prefix>.predict.<model>`), a metrics label and a path segment of the gateway, so it must
//! be safe as each of them: 1 to [`ModelName::MAX_LEN`] ASCII letters, digits, `-`, `_` or `.`,
//! not starting with `.` (no hidden directory, no `..`).

use std::fmt;

use super::text::quoted;

/// A valid model name (see the module doc); made only by [`ModelName::parse`]. Shown by `{:?}`
/// as the quoted string, like a `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelName(String);

/// A name that breaks the rule; its message quotes at most [`super::text::MAX_QUOTED`] bytes of
/// it, and the caller prefixes the field it came from (`model_name: …`, `model name …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{shown}: expected 1-{} letters, digits, '-', '_' or '.', not starting with '.'",
    ModelName::MAX_LEN
)]
pub struct ModelNameError {
    /// The name as received, quoted and bounded.
    shown: String,
}

impl ModelName {
    /// Longest name, in bytes.
    ///
    /// 128, because the name is part of other names with limits of their own:
    /// - the queue `<prefix>.predict.<model>` is an AMQP short string (at most 255 bytes):
    ///   with 128 bytes of model and 9 of `.predict.`, the prefix keeps 118;
    /// - RabbitMQ names a quorum queue's Raft member after `<vhost>_<queue>`, an Erlang atom
    ///   (at most 255 characters; longer names take a fallback that some of RabbitMQ's own
    ///   tools do not handle: rabbitmq-server issues 2967 and 17484): vhost and prefix share
    ///   117 bytes;
    /// - a directory name (255 bytes on Linux file systems) and a Prometheus label value on
    ///   every series of the model (no hard limit; 128 keeps those lines short).
    ///
    /// The 200 bytes the repository once allowed left a prefix 46 bytes, and the gateway and
    /// training already refused anything over 128.
    pub const MAX_LEN: usize = 128;

    /// `name` when it follows the rule.
    pub fn parse(name: &str) -> Result<ModelName, ModelNameError> {
        if Self::is_valid(name) {
            Ok(ModelName(name.to_string()))
        } else {
            Err(ModelNameError {
                shown: quoted(name),
            })
        }
    }

    /// True when `name` follows the rule (for filters that need no error).
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ModelName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ModelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ModelName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ModelName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let longest = "m".repeat(ModelName::MAX_LEN);
        for ok in ["iris", "iris-2.v_1", "A", "a..b", longest.as_str()] {
            assert_eq!(ModelName::parse(ok).map(|n| n.to_string()), Ok(ok.into()));
        }
        let over = "m".repeat(ModelName::MAX_LEN + 1);
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", "a\0", over.as_str()] {
            assert!(!ModelName::is_valid(bad), "{bad:?}");
            let e = ModelName::parse(bad).unwrap_err().to_string();
            assert!(
                e.ends_with(
                    "expected 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_echo_a_bounded_quote() {
        let e = ModelName::parse("a/b").unwrap_err().to_string();
        assert!(e.starts_with(r#""a/b": "#), "{e}");
        let huge = "x".repeat(1 << 20);
        let e = ModelName::parse(&huge).unwrap_err().to_string();
        assert!(e.len() < 300, "{}", e.len());
        assert!(e.contains("(1048576 bytes)"), "{e}");
    }
}
