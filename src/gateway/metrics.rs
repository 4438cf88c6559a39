//! The gateway's Prometheus metrics, on its own registry (a gateway runs apart from workers).
//!
//! Labels: `model` (a name whose queue exists, else `""`: names typed into a URL never become
//! labels), `endpoint` ([`Endpoint`]: `infer`, `metadata`, `ready`, `generate`,
//! `generate_stream`, `completions`, `chat_completions`, `models`, `server`) and `status` (the
//! HTTP status code, a bounded set), `reason` (why a request travelled alone:
//! [`super::gather::Solo`]; why a key check failed: [`AuthFailure`]), `tenant` (an API key's
//! name from the keys file, `anonymous` without keys, `-` for a request refused before its key
//! was known), `limit` (`requests`, `tokens`). Pool gauges are read from the pools at each
//! scrape.

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::gather::Solo;
use crate::telemetry::metrics::LATENCY_BUCKETS;

/// Which route a request took, as the `endpoint` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Infer,
    Metadata,
    Ready,
    Generate,
    GenerateStream,
    Completions,
    ChatCompletions,
    Models,
    /// `GET /v2`, the server's metadata.
    Server,
}

impl Endpoint {
    /// The endpoint of a route, by its path as the router declares it.
    pub fn of_route(route: &str) -> Endpoint {
        let last = route.rsplit('/').next().unwrap_or("");
        match (route, last) {
            ("/v1/completions", _) => Endpoint::Completions,
            ("/v1/chat/completions", _) => Endpoint::ChatCompletions,
            ("/v2", _) => Endpoint::Server,
            (_, "infer") => Endpoint::Infer,
            (_, "ready") => Endpoint::Ready,
            (_, "generate") => Endpoint::Generate,
            (_, "generate_stream") => Endpoint::GenerateStream,
            _ if route.starts_with("/v1/models") => Endpoint::Models,
            _ => Endpoint::Metadata,
        }
    }

    /// True for the routes that run a generation job (they spend `tokens_per_minute`).
    pub fn generates(self) -> bool {
        matches!(
            self,
            Endpoint::Generate
                | Endpoint::GenerateStream
                | Endpoint::Completions
                | Endpoint::ChatCompletions
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Infer => "infer",
            Endpoint::Metadata => "metadata",
            Endpoint::Ready => "ready",
            Endpoint::Generate => "generate",
            Endpoint::GenerateStream => "generate_stream",
            Endpoint::Completions => "completions",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Models => "models",
            Endpoint::Server => "server",
        }
    }
}

/// Why a key check failed (the `reason` label of `infermq_gateway_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` nor `x-api-key` header.
    Missing,
    /// A key the keys file does not hold (or an unreadable header).
    Unknown,
    /// A key in the query string.
    Query,
    /// A client address refused for its failures, before its key was looked at.
    Blocked,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 4] = [
        AuthFailure::Missing,
        AuthFailure::Unknown,
        AuthFailure::Query,
        AuthFailure::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Query => "query",
            AuthFailure::Blocked => "blocked",
        }
    }
}

/// Every series of the gateway.
pub struct GatewayMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    pool_size: IntGaugeVec,
    pool_available: IntGaugeVec,
    per_message: HistogramVec,
    gathered: IntCounterVec,
    solo: IntCounterVec,
    tenant_requests: IntCounterVec,
    tenant_seconds: CounterVec,
    tenant_rows: IntCounterVec,
    tenant_tokens: IntCounterVec,
    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    keys: IntGauge,
    reloads: IntCounterVec,
    usage_lines_dropped: IntCounter,
    tls_handshake_failures: IntCounter,
}

/// Buckets of requests per message: 1 (alone) to 1024.
pub const PER_MESSAGE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

impl GatewayMetrics {
    pub fn new() -> GatewayMetrics {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "infermq_gateway_requests_total",
            "HTTP requests answered, by model, endpoint and HTTP status",
            &["model", "endpoint", "status"],
        );
        let duration = histogram_vec(
            &registry,
            "infermq_gateway_request_duration_seconds",
            "Time from the request's arrival to its answer, by model and endpoint",
            &LATENCY_BUCKETS,
            &["model", "endpoint"],
        );
        let in_flight = IntGauge::new(
            "infermq_gateway_requests_in_flight",
            "Requests received and not yet answered",
        )
        .expect("valid metric");
        register(&registry, in_flight.clone());
        let pool_size = gauge_vec(
            &registry,
            "infermq_gateway_pool_size",
            "Open objects in a pool (pool: connections or channels)",
        );
        let pool_available = gauge_vec(
            &registry,
            "infermq_gateway_pool_available",
            "Idle objects in a pool; negative: requests waiting for one",
        );
        let per_message = histogram_vec(
            &registry,
            "infermq_gateway_requests_per_message",
            "Inference requests carried by each job the gateway published, by model",
            &PER_MESSAGE_BUCKETS,
            &["model"],
        );
        let gathered = counter_vec(
            &registry,
            "infermq_gateway_gathered_requests_total",
            "Inference requests that travelled in one job with others, by model",
            &["model"],
        );
        let solo = counter_vec(
            &registry,
            "infermq_gateway_solo_requests_total",
            "Inference requests that travelled as their own job, by model and reason",
            &["model", "reason"],
        );
        let tenant_requests = counter_vec(
            &registry,
            "infermq_gateway_tenant_requests_total",
            "HTTP requests answered, by tenant (the API key's name), endpoint and HTTP status",
            &["tenant", "endpoint", "status"],
        );
        let tenant_seconds = CounterVec::new(
            Opts::new(
                "infermq_gateway_tenant_request_seconds_total",
                "Seconds from arrival to the end of the answer (a stream: its last event), by tenant and endpoint",
            ),
            &["tenant", "endpoint"],
        )
        .expect("valid metric");
        register(&registry, tenant_seconds.clone());
        let tenant_rows = counter_vec(
            &registry,
            "infermq_gateway_tenant_rows_total",
            "Rows of inference requests answered 200, by tenant and model",
            &["tenant", "model"],
        );
        let tenant_tokens = counter_vec(
            &registry,
            "infermq_gateway_tenant_tokens_total",
            "Tokens of generation requests (their answer's usage), by tenant, model and kind (prompt, completion)",
            &["tenant", "model", "kind"],
        );
        let auth_failures = counter_vec(
            &registry,
            "infermq_gateway_auth_failures_total",
            "Requests refused by the key check, by reason (missing, unknown, query, blocked)",
            &["reason"],
        );
        for reason in AuthFailure::ALL {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        let rate_limited = counter_vec(
            &registry,
            "infermq_gateway_rate_limited_total",
            "Requests answered 429 by an API key's limit, by tenant and limit (requests, tokens)",
            &["tenant", "limit"],
        );
        let keys = IntGauge::new(
            "infermq_gateway_api_keys",
            "API keys loaded from gateway.api_keys_file",
        )
        .expect("valid metric");
        register(&registry, keys.clone());
        let reloads = counter_vec(
            &registry,
            "infermq_gateway_reloads_total",
            "Reloads of a changed file (file: api_keys, tls), by result (ok, error: the old one is kept)",
            &["file", "result"],
        );
        let usage_lines_dropped = IntCounter::new(
            "infermq_gateway_usage_lines_dropped_total",
            "Usage log lines dropped because the writer fell behind or failed",
        )
        .expect("valid metric");
        register(&registry, usage_lines_dropped.clone());
        let tls_handshake_failures = IntCounter::new(
            "infermq_gateway_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out",
        )
        .expect("valid metric");
        register(&registry, tls_handshake_failures.clone());
        GatewayMetrics {
            registry,
            tenant_requests,
            tenant_seconds,
            tenant_rows,
            tenant_tokens,
            auth_failures,
            rate_limited,
            keys,
            reloads,
            usage_lines_dropped,
            tls_handshake_failures,
            requests,
            duration,
            in_flight,
            pool_size,
            pool_available,
            per_message,
            gathered,
            solo,
        }
    }

    /// Counts a job published with `requests` inference requests in it.
    pub fn published(&self, model: &str, requests: usize) {
        self.per_message
            .with_label_values(&[model])
            .observe(requests as f64);
        if requests > 1 {
            self.gathered
                .with_label_values(&[model])
                .inc_by(requests as u64);
        }
    }

    /// Counts a request that travels as its own job, and why.
    pub fn solo(&self, model: &str, reason: Solo) {
        self.solo.with_label_values(&[model, reason.as_str()]).inc();
    }

    /// Counts one answered request.
    pub fn answered(&self, model: &str, endpoint: Endpoint, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[model, endpoint.as_str(), &status])
            .inc();
        self.duration
            .with_label_values(&[model, endpoint.as_str()])
            .observe(seconds);
    }

    /// Counts one request of `tenant` by endpoint and status, and its seconds.
    pub fn tenant_request(&self, tenant: &str, endpoint: Endpoint, status: u16, seconds: f64) {
        let status = status.to_string();
        self.tenant_requests
            .with_label_values(&[tenant, endpoint.as_str(), &status])
            .inc();
        self.tenant_seconds
            .with_label_values(&[tenant, endpoint.as_str()])
            .inc_by(seconds.max(0.0));
    }

    /// Counts rows of `model` answered to `tenant`.
    pub fn tenant_rows(&self, tenant: &str, model: &str, rows: u64) {
        self.tenant_rows
            .with_label_values(&[tenant, model])
            .inc_by(rows);
    }

    /// Counts a generation's tokens for `tenant`.
    pub fn tenant_tokens(&self, tenant: &str, model: &str, prompt: u64, completion: u64) {
        self.tenant_tokens
            .with_label_values(&[tenant, model, "prompt"])
            .inc_by(prompt);
        self.tenant_tokens
            .with_label_values(&[tenant, model, "completion"])
            .inc_by(completion);
    }

    /// Counts a request refused by the key check.
    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts a request refused by a key's limit.
    pub fn rate_limited(&self, tenant: &str, limit: super::quota::Limit) {
        self.rate_limited
            .with_label_values(&[tenant, limit.as_str()])
            .inc();
    }

    /// The keys loaded: their number, and each tenant's series at zero (so that `rate()` sees
    /// a tenant's first refusal).
    pub fn keys_loaded<'a>(&self, tenants: impl Iterator<Item = &'a str>) {
        let mut n = 0;
        for tenant in tenants {
            n += 1;
            for limit in [super::quota::Limit::Requests, super::quota::Limit::Tokens] {
                self.rate_limited
                    .with_label_values(&[tenant, limit.as_str()]);
            }
        }
        self.keys.set(n);
    }

    /// Counts a reload of `file` (`api_keys`, `tls`).
    pub fn reload(&self, file: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.with_label_values(&[file, result]).inc();
    }

    pub fn usage_line_dropped(&self) {
        self.usage_lines_dropped.inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Records a pool's state (called at each scrape).
    pub fn pool(&self, pool: &str, status: deadpool::managed::Status) {
        self.pool_size
            .with_label_values(&[pool])
            .set(status.size as i64);
        let available = status.available as i64 - status.waiting as i64;
        self.pool_available
            .with_label_values(&[pool])
            .set(available);
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}

fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, collector: C) {
    registry
        .register(Box::new(collector))
        .expect("unique metric");
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(registry, counter.clone());
    counter
}

/// A gauge labelled by `pool`.
fn gauge_vec(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), &["pool"]).expect("valid metric");
    register(registry, gauge.clone());
    gauge
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let options = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let histogram = HistogramVec::new(options, labels).expect("valid metric");
    register(registry, histogram.clone());
    histogram
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_requests_are_counted_by_model_endpoint_and_status() {
        let m = GatewayMetrics::new();
        m.answered("iris", Endpoint::Infer, 200, 0.002);
        m.answered("iris", Endpoint::Infer, 200, 0.003);
        m.answered("", Endpoint::Infer, 404, 0.0001);
        let text = m.render();
        assert!(
            text.contains(
                r#"infermq_gateway_requests_total{endpoint="infer",model="iris",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"status="404"} 1"#), "{text}");
        assert!(text.contains(
            r#"infermq_gateway_request_duration_seconds_count{endpoint="infer",model="iris"} 2"#
        ));
    }

    #[test]
    fn routes_have_their_endpoints() {
        for (route, endpoint) in [
            ("/v2", "server"),
            ("/v2/models/{model}", "metadata"),
            ("/v2/models/{model}/versions/{version}", "metadata"),
            ("/v2/models/{model}/versions/{version}/ready", "ready"),
            ("/v2/models/{model}/infer", "infer"),
            ("/v2/models/{model}/generate", "generate"),
            (
                "/v2/models/{model}/versions/{version}/generate_stream",
                "generate_stream",
            ),
            ("/v1/completions", "completions"),
            ("/v1/chat/completions", "chat_completions"),
            ("/v1/models", "models"),
            ("/v1/models/{model}", "models"),
        ] {
            assert_eq!(Endpoint::of_route(route).as_str(), endpoint, "{route}");
        }
    }

    #[test]
    fn tenant_series_and_auth_failures() {
        let m = GatewayMetrics::new();
        m.keys_loaded(["team-a"].into_iter());
        m.tenant_request("team-a", Endpoint::Infer, 200, 0.5);
        m.tenant_rows("team-a", "iris", 3);
        m.tenant_tokens("team-a", "llm", 4, 8);
        m.auth_failure(AuthFailure::Unknown);
        let text = m.render();
        for line in [
            r#"infermq_gateway_tenant_requests_total{endpoint="infer",status="200",tenant="team-a"} 1"#,
            r#"infermq_gateway_tenant_request_seconds_total{endpoint="infer",tenant="team-a"} 0.5"#,
            r#"infermq_gateway_tenant_rows_total{model="iris",tenant="team-a"} 3"#,
            r#"infermq_gateway_tenant_tokens_total{kind="completion",model="llm",tenant="team-a"} 8"#,
            r#"infermq_gateway_auth_failures_total{reason="unknown"} 1"#,
            r#"infermq_gateway_auth_failures_total{reason="blocked"} 0"#,
            r#"infermq_gateway_rate_limited_total{limit="tokens",tenant="team-a"} 0"#,
            "infermq_gateway_api_keys 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn jobs_count_their_requests_and_solo_requests_their_reason() {
        let m = GatewayMetrics::new();
        m.published("iris", 5);
        m.published("iris", 1);
        m.solo("iris", Solo::Alone);
        let text = m.render();
        for line in [
            r#"infermq_gateway_requests_per_message_count{model="iris"} 2"#,
            r#"infermq_gateway_requests_per_message_sum{model="iris"} 6"#,
            r#"infermq_gateway_requests_per_message_bucket{model="iris",le="4"} 1"#,
            r#"infermq_gateway_gathered_requests_total{model="iris"} 5"#,
            r#"infermq_gateway_solo_requests_total{model="iris",reason="alone"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
