//! The gateway's Prometheus metrics, on its own registry (a gateway runs apart from workers).
//!
//! Labels: `model` (a name whose queue exists, else `""`: names typed into a URL never become
//! labels), `endpoint` ([`Endpoint`]: `infer`, `metadata`, `ready`, `generate`,
//! `generate_stream`, `completions`, `chat_completions`, `models`) and `status` (the HTTP status
//! code, a bounded set), `reason` (why a request travelled alone: [`super::gather::Solo`]). Pool gauges
//! are read from the pools at each scrape.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

impl Endpoint {
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
        GatewayMetrics {
            registry,
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
