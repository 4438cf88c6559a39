//! The key check in front of every guarded route (all but health, readiness and `/metrics`):
//! which tenant a request is for, whether it may come now, and its [`Meter`].
//!
//! With `gateway.api_keys_file`, a request carries its key as `Authorization: Bearer <key>`
//! (what the `openai` client and curl send) or `x-api-key: <key>`, looked up in the keys
//! ([`super::keys`]); in order:
//! 1. a key in the query string (`api_key`, `key`, `token`, …) is refused, 401: URLs end up in
//!    logs;
//! 2. a client address refused for its failures ([`FailedAuth`]) is answered 429 before its
//!    key is looked at;
//! 3. no key: 401; a key the file does not hold: 401, and a failure counted for the address;
//! 4. the key's `requests_per_second`, and on the generation routes a token left in its
//!    `tokens_per_minute`: 429 with `Retry-After`.
//!
//! Whether the key may use the model it asks for is the handler's to check ([`Access::allows`],
//! 403): the model is in the path or in the body. Errors are in the API's own shape: OpenAI's
//! under `/v1/`, KServe's (`{"error": "..."}`) elsewhere. Keys are never logged; a refusal
//! names the key's tenant only once the key is known.
//!
//! Without keys every request is the tenant `anonymous`, with every right and no limit.
//!
//! [`KeyStore::reload`] reads the file again when it changed ([`super::reload`] polls it every
//! `gateway.reload_poll_ms`, and SIGHUP asks at once): a file that does not parse is refused
//! with its line named, and the keys in use stay. A key that stays keeps its buckets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::keys::{Keys, Rights};
use super::metrics::{AuthFailure, Endpoint, GatewayMetrics};
use super::quota::{retry_after, FailedAuth, Limit, TenantQuota};
use super::reload::FileStamp;
use super::usage::Meter;
use super::Gateway;
use crate::protocol::TenantName;

/// Who a request is for.
#[derive(Debug)]
pub struct Tenant {
    /// The key's name, or `anonymous`.
    pub name: Arc<str>,
    pub rights: Rights,
    /// The key's buckets; `None`: no limit.
    quota: Option<Arc<Mutex<TenantQuota>>>,
    /// A key's tenant (not `anonymous`).
    keyed: bool,
}

/// What a guarded handler gets from the key check: its tenant and its meter.
#[derive(Clone)]
pub struct Access {
    pub tenant: Arc<Tenant>,
    pub meter: Meter,
}

impl Access {
    /// `Err(message)` when the key may not use `model` (a 403).
    pub fn allows(&self, model: &str) -> Result<(), String> {
        if self.tenant.rights.may_use(model) {
            return Ok(());
        }
        Err(format!(
            "the API key {:?} may not use model {model:?}",
            &*self.tenant.name
        ))
    }

    /// The tenant to stamp on jobs (`x-infermq-tenant`): the key's name; none without keys.
    pub fn stamp(&self) -> Option<&str> {
        self.tenant.keyed.then_some(&*self.tenant.name)
    }
}

impl Tenant {
    fn anonymous() -> Tenant {
        Tenant {
            name: Arc::from(TenantName::ANONYMOUS),
            rights: Rights::All,
            quota: None,
            keyed: false,
        }
    }
}

/// One version of the keys, with each key's tenant.
struct KeyRing {
    keys: Keys,
    tenants: Vec<Arc<Tenant>>,
}

/// The keys in use, and the file they come from.
pub struct KeyStore {
    path: Option<PathBuf>,
    ring: RwLock<Arc<KeyRing>>,
    stamp: Mutex<Option<FileStamp>>,
    failures: Mutex<FailedAuth>,
    anonymous: Arc<Tenant>,
    metrics: Arc<GatewayMetrics>,
}

impl KeyStore {
    /// The keys of `path` (`None`: no keys, every request anonymous); the error names the file
    /// and the line.
    pub fn open(
        path: Option<PathBuf>,
        failures_per_minute: u32,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<KeyStore, String> {
        let store = KeyStore {
            path,
            ring: RwLock::new(Arc::new(KeyRing {
                keys: Keys::default(),
                tenants: Vec::new(),
            })),
            stamp: Mutex::new(None),
            failures: Mutex::new(FailedAuth::new(failures_per_minute)),
            anonymous: Arc::new(Tenant::anonymous()),
            metrics,
        };
        if store.path.is_some() {
            store.load()?;
        }
        Ok(store)
    }

    /// True when requests need a key.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the file again when it changed since it was read (or whatever, with `force`).
    /// A bad file is logged and counted, and the keys in use stay.
    pub fn reload(&self, force: bool) {
        let Some(path) = &self.path else {
            return;
        };
        // A file gone is `None`: refused once, then not again until it is back.
        let now = FileStamp::of(path);
        let unchanged = self.stamp.lock().is_ok_and(|s| *s == now);
        if unchanged && !force {
            return;
        }
        match self.load() {
            Ok(n) => {
                self.metrics.reload("api_keys", true);
                tracing::info!(path = %path.display(), keys = n, "API keys reloaded");
            }
            Err(error) => {
                // Not again until the file changes.
                if let Ok(mut stamp) = self.stamp.lock() {
                    *stamp = now;
                }
                self.metrics.reload("api_keys", false);
                tracing::error!(%error, "API keys file refused; the keys in use stay");
            }
        }
    }

    /// Reads and installs the file; the number of keys.
    fn load(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let stamp = FileStamp::of(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("gateway.api_keys_file = {}: {e}", path.display()))?;
        let keys = Keys::parse(&text)
            .map_err(|e| format!("gateway.api_keys_file = {}: {e}", path.display()))?;
        let now = Instant::now();
        let old = self.ring.read().map(|r| r.clone()).ok();
        let tenants: Vec<Arc<Tenant>> = keys
            .iter()
            .map(|key| {
                // A key that stays keeps its buckets, with its new limits.
                let kept = old.as_ref().and_then(|ring| {
                    let tenant = ring.tenants.iter().find(|t| t.name == key.name)?;
                    tenant.quota.clone()
                });
                let quota =
                    kept.unwrap_or_else(|| Arc::new(Mutex::new(TenantQuota::new(key.limits, now))));
                if let Ok(mut quota) = quota.lock() {
                    quota.set(key.limits, now);
                }
                Arc::new(Tenant {
                    name: key.name.clone(),
                    rights: key.rights.clone(),
                    quota: Some(quota),
                    keyed: true,
                })
            })
            .collect();
        let n = keys.len();
        let empty = keys.is_empty();
        self.metrics.keys_loaded(keys.iter().map(|k| &*k.name));
        if let Ok(mut ring) = self.ring.write() {
            *ring = Arc::new(KeyRing { keys, tenants });
        }
        if let Ok(mut current) = self.stamp.lock() {
            *current = stamp;
        }
        if empty {
            tracing::warn!(path = %path.display(), "The API keys file holds no key: every guarded request is refused");
        }
        Ok(n)
    }

    /// The tenant of `presented`, when the keys hold it.
    fn find(&self, presented: &[u8]) -> Option<Arc<Tenant>> {
        let ring = self.ring.read().ok()?.clone();
        let index = ring.keys.find(presented)?;
        ring.tenants.get(index).cloned()
    }

    /// The tenant of a request, or why it is refused.
    fn check(&self, headers: &HeaderMap, query: Option<&str>, client: IpAddr) -> Checked {
        if !self.enabled() {
            return Ok(self.anonymous.clone());
        }
        if query.is_some_and(has_key_parameter) {
            return Err(Refused::auth(
                AuthFailure::Query,
                "an API key in the URL is refused (URLs end up in logs and histories); send it as Authorization: Bearer <key> or x-api-key",
            ));
        }
        let now = Instant::now();
        if let Some(wait) = self
            .failures
            .lock()
            .ok()
            .and_then(|mut f| f.blocked(client, now))
        {
            return Err(Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: Some(AuthFailure::Blocked),
                limit: None,
                message: "too many failed API key checks from this address; try again later".into(),
                retry_after: Some(retry_after(wait)),
            });
        }
        let Some(presented) = presented_key(headers) else {
            return Err(Refused::auth(
                AuthFailure::Missing,
                "missing API key: send Authorization: Bearer <key> (or x-api-key: <key>)",
            ));
        };
        match self.find(presented) {
            Some(tenant) => Ok(tenant),
            None => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.failed(client, now);
                }
                Err(Refused::auth(AuthFailure::Unknown, "invalid API key"))
            }
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (the scheme in any case), else
/// `x-api-key`. An empty or unreadable value presents none.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes();
        let key = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
            .unwrap_or(b"");
        return (!key.is_empty()).then_some(key);
    }
    let key = headers.get("x-api-key")?.as_bytes().trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// Query parameters that would carry a key (clients and proxies log URLs).
const KEY_PARAMETERS: [&str; 7] = [
    "api_key",
    "api-key",
    "apikey",
    "key",
    "token",
    "access_token",
    "x-api-key",
];

fn has_key_parameter(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        KEY_PARAMETERS.iter().any(|k| k.eq_ignore_ascii_case(name))
    })
}

/// A request refused by the key check or a limit.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    reason: Option<AuthFailure>,
    limit: Option<Limit>,
    message: String,
    retry_after: Option<u64>,
}

type Checked = Result<Arc<Tenant>, Refused>;

impl Refused {
    fn auth(reason: AuthFailure, message: &str) -> Refused {
        Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: Some(reason),
            limit: None,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// The answer in the shape of the route's API.
    fn answer(&self, openai: bool) -> Response {
        let mut response = if openai {
            let (kind, code) = match (self.status.as_u16(), self.limit) {
                (401, _) => ("invalid_request_error", "invalid_api_key"),
                (429, Some(Limit::Tokens)) => ("tokens", "rate_limit_exceeded"),
                (429, _) => ("requests", "rate_limit_exceeded"),
                _ => ("invalid_request_error", "permission_denied"),
            };
            let body = json!({"error": {"message": self.message, "type": kind, "param": null,
                "code": code}});
            (self.status, axum::Json(body)).into_response()
        } else {
            let body = json!({ "error": self.message });
            (self.status, axum::Json(body)).into_response()
        };
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The answer to a model the key may not use (403), in the route's API's shape.
pub fn forbidden(openai: bool, message: String) -> Response {
    Refused {
        status: StatusCode::FORBIDDEN,
        reason: None,
        limit: None,
        message,
        retry_after: None,
    }
    .answer(openai)
}

/// A connection's peer address, for the key check's failure counts.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// The client's address: the rightmost address of `gateway.client_address_header` when it is
/// set and holds one (the address the proxy in front added), else the peer's.
fn client_address(header: Option<&HeaderName>, headers: &HeaderMap, peer: Option<Peer>) -> IpAddr {
    let forwarded = header
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    forwarded
        .or(peer.map(|p| p.0.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The key check, as an axum middleware of the guarded routes.
pub async fn authenticate(
    State(gw): State<Arc<Gateway>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let endpoint = Endpoint::of_route(route);
    let openai = route.starts_with("/v1/");
    let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
    let client = client_address(gw.client_header.as_ref(), request.headers(), peer);
    let checked = gw
        .keys
        .check(request.headers(), request.uri().query(), client);
    let tenant = match checked {
        Ok(tenant) => tenant,
        Err(refused) => {
            if let Some(reason) = refused.reason {
                gw.metrics.auth_failure(reason);
            }
            let meter = gw.usage.meter(Arc::from("-"), endpoint, None, started);
            let response = refused.answer(openai);
            meter.status(response.status().as_u16());
            return response;
        }
    };
    let meter = gw
        .usage
        .meter(tenant.name.clone(), endpoint, tenant.quota.clone(), started);
    if let Some(quota) = &tenant.quota {
        let admitted = quota
            .lock()
            .map(|mut q| q.admit(endpoint.generates(), Instant::now()))
            .unwrap_or(Ok(()));
        if let Err((limit, wait)) = admitted {
            gw.metrics.rate_limited(&tenant.name, limit);
            let message = match limit {
                Limit::Requests => format!(
                    "the API key {:?} is over its requests_per_second",
                    &*tenant.name
                ),
                Limit::Tokens => format!(
                    "the API key {:?} is over its tokens_per_minute",
                    &*tenant.name
                ),
            };
            let refused = Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: None,
                limit: Some(limit),
                message,
                retry_after: Some(retry_after(wait)),
            };
            let response = refused.answer(openai);
            meter.status(response.status().as_u16());
            return response;
        }
    }
    request.extensions_mut().insert(Access {
        tenant,
        meter: meter.clone(),
    });
    let response = next.run(request).await;
    meter.status(response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_key_comes_from_bearer_or_x_api_key() {
        let key = |pairs: &[(&str, &str)]| presented_key(&headers(pairs)).map(|k| k.to_vec());
        assert_eq!(
            key(&[("authorization", "Bearer sk-1")]),
            Some(b"sk-1".to_vec())
        );
        assert_eq!(
            key(&[("authorization", "bearer  sk-1 ")]),
            Some(b"sk-1".to_vec())
        );
        assert_eq!(key(&[("x-api-key", "sk-2")]), Some(b"sk-2".to_vec()));
        assert_eq!(key(&[("authorization", "Basic dTpw")]), None);
        assert_eq!(key(&[("authorization", "Bearer ")]), None);
        assert_eq!(key(&[]), None);
        // Authorization wins when both are sent.
        assert_eq!(
            key(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
            Some(b"a".to_vec())
        );
    }

    fn key_file(names: &[&str]) -> String {
        use sha2::Digest;
        names
            .iter()
            .map(|name| {
                let digest: String = sha2::Sha256::digest(format!("sk-{name}").as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("[[key]]\nname = \"{name}\"\nsha256 = \"{digest}\"\nmodels = [\"*\"]\n")
            })
            .collect()
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_or_missing_one_refused_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, key_file(&["a"])).unwrap();
        let metrics = Arc::new(GatewayMetrics::new());
        let store = KeyStore::open(Some(path.clone()), 30, metrics.clone()).unwrap();
        let name = |key: &str| store.find(key.as_bytes()).map(|t| t.name.to_string());
        assert_eq!(name("sk-a").as_deref(), Some("a"));
        assert_eq!(name("sk-b"), None);
        store.reload(false);
        let replace = |text: String| {
            let next = dir.path().join("next.toml");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &path).unwrap();
        };
        replace(key_file(&["a", "b"]));
        store.reload(false);
        assert_eq!(name("sk-b").as_deref(), Some("b"));
        replace("[[key]]\nname = 3\n".into());
        store.reload(false);
        store.reload(false);
        assert_eq!(name("sk-b").as_deref(), Some("b"), "the keys in use stay");
        std::fs::remove_file(&path).unwrap();
        store.reload(false);
        store.reload(false);
        let text = metrics.render();
        assert!(
            text.contains(r#"infermq_gateway_reloads_total{file="api_keys",result="error"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"infermq_gateway_reloads_total{file="api_keys",result="ok"} 1"#));
        replace(key_file(&["c"]));
        store.reload(false);
        assert_eq!(name("sk-a"), None);
        assert_eq!(name("sk-c").as_deref(), Some("c"));
        let missing = KeyStore::open(Some(dir.path().join("nope.toml")), 30, metrics);
        assert!(matches!(missing, Err(e) if e.contains("nope.toml")));
    }

    #[test]
    fn keys_in_the_query_string_are_seen() {
        for q in [
            "api_key=x",
            "timeout_ms=5&key=x",
            "API_KEY",
            "access_token=1",
        ] {
            assert!(has_key_parameter(q), "{q}");
        }
        for q in ["timeout_ms=5", "keys=1", ""] {
            assert!(!has_key_parameter(q), "{q}");
        }
    }

    #[test]
    fn the_client_is_the_proxys_last_address_or_the_peer() {
        let peer = Some(Peer("10.0.0.9:5000".parse().unwrap()));
        let xff = HeaderName::from_static("x-forwarded-for");
        let forwarded = headers(&[("x-forwarded-for", "1.2.3.4, 10.1.1.1")]);
        assert_eq!(
            client_address(Some(&xff), &forwarded, peer),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(None, &forwarded, peer),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        let junk = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(
            client_address(Some(&xff), &junk, peer),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }
}
