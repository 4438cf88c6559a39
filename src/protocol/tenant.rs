//! [`TenantName`]: the rule for the name of a tenant — an API key's name in the gateway's keys
//! file, and the `x-infermq-tenant` header the gateway stamps on each job it publishes — and
//! [`TenantTag`], what a job's header says of its tenant.
//!
//! A tenant's name is shown in logs, in the usage log and as a metrics label (`tenant`), so it
//! is kept short and plain: 1 to [`TenantName::MAX_LEN`] ASCII letters, digits, `-`, `_` or `.`,
//! starting with a letter or a digit. The header is informative, not authenticated: any
//! producer may set it ([`TenantTag`] never fails, a bad value is [`TenantTag::Invalid`]).

use std::fmt;

/// A valid tenant name (see the module doc); made only by [`TenantName::parse`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantName(String);

impl TenantName {
    /// Longest name, in bytes.
    pub const MAX_LEN: usize = 64;
    /// The tenant of a job without the header (and of every request of a gateway without keys).
    pub const ANONYMOUS: &'static str = "anonymous";
    /// Where names past a worker's `worker.max_tenants`, and invalid ones, are counted.
    pub const OTHER: &'static str = "other";

    /// `name` when it follows the rule; the error says the rule.
    pub fn parse(name: &str) -> Result<TenantName, String> {
        if Self::is_valid(name) {
            Ok(TenantName(name.to_string()))
        } else {
            Err(format!(
                "{}: expected 1-{} letters, digits, '-', '_' or '.', starting with a letter or a digit",
                super::text::quoted(name),
                Self::MAX_LEN
            ))
        }
    }

    /// True when `name` follows the rule.
    pub fn is_valid(name: &str) -> bool {
        let bytes = name.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// True for the names a worker gives labels of its own meaning (`anonymous`, `other`).
    pub fn is_reserved(name: &str) -> bool {
        name == Self::ANONYMOUS || name == Self::OTHER
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a job's `x-infermq-tenant` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantTag {
    /// No header.
    Anonymous,
    Named(TenantName),
    /// A header that is not a string following [`TenantName`]'s rule.
    Invalid,
}

impl TenantTag {
    /// The tag of a header's value read as text (`None`: the value is not text).
    pub fn of(value: Option<&str>) -> TenantTag {
        match value.map(TenantName::parse) {
            Some(Ok(name)) => TenantTag::Named(name),
            _ => TenantTag::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        for good in ["team-a", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(TenantName::is_valid(good), "{good}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(!TenantName::is_valid(bad), "{bad}");
        }
        let error = TenantName::parse("a b").unwrap_err();
        assert!(error.starts_with("\"a b\": expected 1-64"), "{error}");
        assert!(TenantName::is_reserved("anonymous") && TenantName::is_reserved("other"));
    }

    #[test]
    fn a_header_is_a_name_or_invalid() {
        assert_eq!(
            TenantTag::of(Some("team-a")),
            TenantTag::Named(TenantName::parse("team-a").unwrap())
        );
        assert_eq!(TenantTag::of(Some("a\nb")), TenantTag::Invalid);
        assert_eq!(TenantTag::of(None), TenantTag::Invalid);
    }
}
