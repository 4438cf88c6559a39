//! The broker's addresses: one `amqp(s)://` URL per node of a RabbitMQ cluster (or just one).
//!
//! A worker starts at a random address, so a fleet spreads over the nodes, and moves to the
//! next one on every failed attempt or lost connection (the caller waits its backoff between
//! attempts). What is logged and exported is the node's `host:port`, never the credentials.

/// The broker of a fresh install: RabbitMQ's default user on this machine.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `amqp://user:secret@host` → `amqp://user:***@host`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

use rand::Rng;

/// The configured addresses and where the rotation stands.
#[derive(Clone)]
pub struct BrokerAddresses {
    urls: Vec<String>,
    /// Index of the address the next attempt uses.
    cursor: usize,
    /// Index of the address last handed out.
    current: Option<usize>,
}

impl std::fmt::Debug for BrokerAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAddresses")
            .field("nodes", &self.nodes())
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl BrokerAddresses {
    /// The rotation over `urls`, starting at a random one. `urls` must not be empty (the
    /// configuration refuses an empty list); an empty list yields the default local broker.
    pub fn new(urls: &[String]) -> BrokerAddresses {
        let start = rand::rng().random_range(0..urls.len().max(1));
        Self::starting_at(urls, start)
    }

    /// The rotation over `urls`, starting at index `start` (modulo their number).
    pub fn starting_at(urls: &[String], start: usize) -> BrokerAddresses {
        let urls = if urls.is_empty() {
            vec![DEFAULT_BROKER_URL.to_string()]
        } else {
            urls.to_vec()
        };
        BrokerAddresses {
            cursor: start % urls.len(),
            urls,
            current: None,
        }
    }

    /// A comma-separated list (`--url`, `AMQP_URL`), blanks trimmed, empty items skipped.
    pub fn parse_list(text: &str) -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The URL to try now; the next call yields the one after it.
    pub fn next_url(&mut self) -> &str {
        let index = self.cursor;
        self.cursor = (index + 1) % self.urls.len();
        self.current = Some(index);
        &self.urls[index]
    }

    /// `host:port` of the address last handed out by [`BrokerAddresses::next_url`].
    pub fn current_node(&self) -> Option<String> {
        self.current.map(|i| node_of(&self.urls[i]))
    }

    /// `host:port` of every address, in configured order: the bounded set of node labels.
    pub fn nodes(&self) -> Vec<String> {
        self.urls.iter().map(|u| node_of(u)).collect()
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }
}

/// `host:port` of an AMQP URL, without user, password, vhost or query; the port defaults to
/// 5672 (`amqp`) or 5671 (`amqps`). At most 255 characters.
pub fn node_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, after)| after);
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    let mut node = if has_port {
        host_port.to_string()
    } else {
        let port = if scheme.eq_ignore_ascii_case("amqps") {
            5671
        } else {
            5672
        };
        format!("{host_port}:{port}")
    };
    node.truncate(crate::protocol::text::prefix(&node, 255).len());
    node
}

/// Most addresses `broker.url` takes: they are the label values of the node metric.
pub const MAX_ADDRESSES: usize = 16;

/// `broker.url`: a string (one URL, or several separated by commas) or an array of strings.
pub fn deserialize_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <OneOrMany as serde::Deserialize>::deserialize(d)? {
        OneOrMany::One(text) => BrokerAddresses::parse_list(&text),
        OneOrMany::Many(list) => list
            .iter()
            .flat_map(|text| BrokerAddresses::parse_list(text))
            .collect(),
    })
}

/// Why a list of broker URLs is refused: empty, too long, or a URL of another scheme.
pub fn check_urls(urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("needs at least one amqp:// or amqps:// URL".into());
    }
    if urls.len() > MAX_ADDRESSES {
        return Err(format!("has {} URLs; at most {MAX_ADDRESSES}", urls.len()));
    }
    for (i, url) in urls.iter().enumerate() {
        if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
            let shown: String = redact_url(url).chars().take(200).collect();
            return Err(format!(
                "item {i} must start with amqp:// or amqps://, got {shown:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nodes_hide_credentials_vhost_and_query() {
        let cases = [
            ("amqp://guest:secret@127.0.0.1:5681/%2f", "127.0.0.1:5681"),
            ("amqp://rabbit.example/vhost", "rabbit.example:5672"),
            (
                "amqps://u:p@rabbit.example?heartbeat=5",
                "rabbit.example:5671",
            ),
            ("amqp://u:p@[::1]:5690/%2f", "[::1]:5690"),
            ("amqp://u:p@[::1]/%2f", "[::1]:5672"),
            ("amqp://user:p@ss@host:1/", "host:1"),
        ];
        for (url, node) in cases {
            assert_eq!(node_of(url), node, "{url}");
        }
        assert!(node_of(&format!("amqp://{}", "h".repeat(1000))).len() <= 255);
    }

    #[test]
    fn the_rotation_moves_to_the_next_address_and_wraps() {
        let list = urls(&["amqp://a:1", "amqp://b:2", "amqp://c:3"]);
        let mut addresses = BrokerAddresses::starting_at(&list, 1);
        assert_eq!(addresses.current_node(), None);
        let seen: Vec<String> = (0..4).map(|_| addresses.next_url().to_string()).collect();
        assert_eq!(
            seen,
            urls(&["amqp://b:2", "amqp://c:3", "amqp://a:1", "amqp://b:2"])
        );
        assert_eq!(addresses.current_node().as_deref(), Some("b:2"));
        assert_eq!(addresses.nodes(), urls(&["a:1", "b:2", "c:3"]));
    }

    #[test]
    fn random_starts_cover_every_address() {
        let list = urls(&["amqp://a:1", "amqp://b:2", "amqp://c:3"]);
        let mut first = std::collections::BTreeSet::new();
        for _ in 0..200 {
            first.insert(BrokerAddresses::new(&list).next_url().to_string());
        }
        assert_eq!(first.len(), 3, "{first:?}");
    }

    #[test]
    fn lists_parse_from_comma_separated_text() {
        assert_eq!(
            BrokerAddresses::parse_list(" amqp://a:1 ,,amqp://b:2,"),
            urls(&["amqp://a:1", "amqp://b:2"])
        );
        let mut empty = BrokerAddresses::new(&[]);
        assert_eq!(empty.next_url(), DEFAULT_BROKER_URL);
    }
}
