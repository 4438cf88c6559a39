//! The gateway's API keys: the keys file (`gateway.api_keys_file`) read into [`Keys`], and the
//! lookup of a presented key. Pure: text in, values out; reading and reloading the file is
//! [`super::auth`]'s.
//!
//! ```toml
//! [[key]]
//! name = "team-a"                 # the tenant: shown in logs, metrics and usage, never the key
//! sha256 = "<hex sha256 of the key>"
//! models = ["iris", "llm"]        # or ["*"]
//! requests_per_second = 50        # optional: a token bucket, bursts up to one second's worth
//! tokens_per_minute = 20000       # optional: generation, prompt + completion tokens
//! ```
//!
//! The file holds digests, never keys: a key is looked up by the SHA-256 of what the client
//! sent, compared with every entry's digest in constant time (a scan of all entries whatever
//! matches), so neither the file nor the timing of a refusal gives a key away. Errors name the
//! line of the entry (or of the TOML syntax error) and never quote a digest.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::protocol::{ModelName, TenantName};

/// Which models a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rights {
    /// `models = ["*"]`.
    All,
    /// The models named, sorted.
    Only(Vec<ModelName>),
}

impl Rights {
    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Rights::All => true,
            Rights::Only(models) => models.binary_search_by(|m| m.as_str().cmp(model)).is_ok(),
        }
    }
}

/// A key's limits; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub requests_per_second: Option<f64>,
    pub tokens_per_minute: Option<u64>,
}

/// One entry of the keys file.
#[derive(Clone, PartialEq)]
pub struct ApiKey {
    /// The tenant's name.
    pub name: Arc<str>,
    digest: [u8; 32],
    pub rights: Rights,
    pub limits: Limits,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The keys of one version of the file, in its order.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    models: Vec<String>,
    requests_per_second: Option<f64>,
    tokens_per_minute: Option<u64>,
}

/// Longest key the gateway hashes, in bytes: longer ones are refused unread.
pub const MAX_KEY_BYTES: usize = 512;

impl Keys {
    /// Reads a keys file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().trim_end().to_string();
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })?;
        let mut keys: Vec<ApiKey> = Vec::with_capacity(file.key.len());
        for spanned in file.key {
            let line = line_of(text, spanned.span().start);
            let key =
                ApiKey::read(spanned.into_inner()).map_err(|e| format!("line {line}: {e}"))?;
            if let Some(other) = keys.iter().find(|k| k.name == key.name) {
                return Err(format!(
                    "line {line}: name {:?} is used by another key already ({:?})",
                    key.name, other.name
                ));
            }
            if keys.iter().any(|k| k.digest == key.digest) {
                return Err(format!(
                    "line {line}: key {:?} has the sha256 of another key",
                    key.name
                ));
            }
            keys.push(key);
        }
        Ok(Keys { keys })
    }

    /// The entry whose digest is the SHA-256 of `presented`, looked up in constant time; `None`
    /// for a key longer than [`MAX_KEY_BYTES`].
    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        if presented.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            // Every entry is compared, and the comparison itself takes the same time whatever
            // the bytes: nothing tells how much of a digest matched.
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl ApiKey {
    fn read(entry: Entry) -> Result<ApiKey, String> {
        TenantName::parse(&entry.name).map_err(|e| format!("name {e}"))?;
        if TenantName::is_reserved(&entry.name) {
            return Err(format!(
                "name {:?} is reserved (it counts requests without a key, or past a limit)",
                entry.name
            ));
        }
        let digest = hex_digest(&entry.sha256).ok_or_else(|| {
            format!(
                "key {:?}: sha256: expected 64 hexadecimal digits (the SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`), got {} characters",
                entry.name,
                entry.sha256.len()
            )
        })?;
        let rights = if entry.models.iter().any(|m| m == "*") {
            if entry.models.len() > 1 {
                return Err(format!(
                    "key {:?}: models: \"*\" (every model) stands alone",
                    entry.name
                ));
            }
            Rights::All
        } else {
            let mut models = Vec::with_capacity(entry.models.len());
            for model in &entry.models {
                let name = ModelName::parse(model)
                    .map_err(|e| format!("key {:?}: models: model name {e}", entry.name))?;
                models.push(name);
            }
            models.sort();
            models.dedup();
            Rights::Only(models)
        };
        if let Some(rps) = entry.requests_per_second {
            if !(rps.is_finite() && rps > 0.0) {
                return Err(format!(
                    "key {:?}: requests_per_second: expected a number above 0, got {rps}",
                    entry.name
                ));
            }
        }
        if entry.tokens_per_minute == Some(0) {
            return Err(format!(
                "key {:?}: tokens_per_minute: expected an integer above 0, got 0",
                entry.name
            ));
        }
        Ok(ApiKey {
            name: Arc::from(entry.name.as_str()),
            digest,
            rights,
            limits: Limits {
                requests_per_second: entry.requests_per_second,
                tokens_per_minute: entry.tokens_per_minute,
            },
        })
    }
}

/// 32 bytes from 64 hexadecimal digits (either case).
fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut digest = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        digest[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(digest)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn file(entries: &[(&str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, key, models)| {
                format!(
                    "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\nmodels = {models}\n",
                    sha(key)
                )
            })
            .collect()
    }

    #[test]
    fn a_key_is_found_by_the_digest_of_what_the_client_sent() {
        let text = file(&[
            ("team-a", "sk-aaaa", r#"["iris", "llm"]"#),
            ("team-b", "sk-bbbb", r#"["*"]"#),
        ]);
        let keys = Keys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let a = keys.iter().nth(keys.find(b"sk-aaaa").unwrap()).unwrap();
        assert_eq!(&*a.name, "team-a");
        assert!(a.rights.may_use("iris") && a.rights.may_use("llm"));
        assert!(!a.rights.may_use("mlp"));
        let b = keys.iter().nth(keys.find(b"sk-bbbb").unwrap()).unwrap();
        assert_eq!(b.rights, Rights::All);
        assert_eq!(keys.find(b"sk-cccc"), None);
        assert_eq!(keys.find(b""), None);
        assert_eq!(keys.find(&[b'a'; MAX_KEY_BYTES + 1]), None);
        // The digest is never shown.
        assert!(!format!("{a:?}").contains(&sha("sk-aaaa")[..16]));
    }

    #[test]
    fn limits_are_read_and_optional() {
        let text = format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{}\"\nmodels = [\"*\"]\nrequests_per_second = 50\ntokens_per_minute = 20000\n\n[[key]]\nname = \"b\"\nsha256 = \"{}\"\nmodels = []\nrequests_per_second = 0.5\n",
            sha("1"),
            sha("2").to_uppercase()
        );
        let keys = Keys::parse(&text).unwrap();
        let limits: Vec<Limits> = keys.iter().map(|k| k.limits).collect();
        assert_eq!(
            limits,
            vec![
                Limits {
                    requests_per_second: Some(50.0),
                    tokens_per_minute: Some(20000)
                },
                Limits {
                    requests_per_second: Some(0.5),
                    tokens_per_minute: None
                }
            ]
        );
        assert!(!keys.iter().nth(1).unwrap().rights.may_use("iris"));
        assert!(Keys::parse("").unwrap().is_empty());
    }

    #[test]
    fn each_error_names_its_line() {
        let good = file(&[("team-a", "k1", r#"["iris"]"#)]);
        let cases = [
            (
                format!("{good}[[key]]\nname = \"team-a\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n", sha("k2")),
                "line 5: name \"team-a\" is used by another key already",
            ),
            (
                format!("{good}[[key]]\nname = \"team-b\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n", sha("k1")),
                "line 5: key \"team-b\" has the sha256 of another key",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"abc\"\nmodels = [\"*\"]\n"),
                "line 5: key \"x\": sha256: expected 64 hexadecimal digits",
            ),
            (
                format!("{good}[[key]]\nname = \"a b\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n", sha("k3")),
                "line 5: name \"a b\": expected 1-64",
            ),
            (
                format!("{good}[[key]]\nname = \"anonymous\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n", sha("k3")),
                "line 5: name \"anonymous\" is reserved",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"{}\"\nmodels = [\"../etc\"]\n", sha("k3")),
                "line 5: key \"x\": models: model name \"../etc\"",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"{}\"\nmodels = [\"*\", \"iris\"]\n", sha("k3")),
                "line 5: key \"x\": models: \"*\" (every model) stands alone",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"{}\"\nmodels = [\"*\"]\nrequests_per_second = -1\n", sha("k3")),
                "line 5: key \"x\": requests_per_second: expected a number above 0",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"{}\"\nmodels = [\"*\"]\ntokens_per_minute = 0\n", sha("k3")),
                "line 5: key \"x\": tokens_per_minute: expected an integer above 0",
            ),
            (
                format!("{good}[[key]]\nname = \"x\"\nsha256 = \"{}\"\nmodel = [\"*\"]\n", sha("k3")),
                "line 8: unknown field `model`",
            ),
            (format!("{good}[[key]\n"), "line 5: "),
        ];
        for (text, expected) in cases {
            let error = Keys::parse(&text).unwrap_err();
            assert!(error.starts_with(expected), "{expected:?} in {error:?}");
            assert!(!error.contains(&sha("k1")[..16]), "{error}");
        }
    }
}
