//! The gateway's Prometheus metrics, on its own registry (a gateway runs apart from workers).
//!
//! Labels: `model` (a name whose queue exists, else `""`: names typed into a URL never become
//! labels), `endpoint` (`infer`, `metadata`, `ready`) and `status` (the HTTP status code, a
//! bounded set). Pool gauges are read from the pools at each scrape.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::telemetry::metrics::LATENCY_BUCKETS;

/// Which route a request took, as the `endpoint` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Infer,
    Metadata,
    Ready,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Infer => "infer",
            Endpoint::Metadata => "metadata",
            Endpoint::Ready => "ready",
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
}

impl GatewayMetrics {
    pub fn new() -> GatewayMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "infermq_gateway_requests_total",
                "HTTP requests answered, by model, endpoint and HTTP status",
            ),
            &["model", "endpoint", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "infermq_gateway_request_duration_seconds",
                "Time from the request's arrival to its answer, by model and endpoint",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "endpoint"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "infermq_gateway_requests_in_flight",
            "Requests received and not yet answered",
        )
        .expect("valid metric");
        let pool_size = IntGaugeVec::new(
            Opts::new(
                "infermq_gateway_pool_size",
                "Open objects in a pool (pool: connections or channels)",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let pool_available = IntGaugeVec::new(
            Opts::new(
                "infermq_gateway_pool_available",
                "Idle objects in a pool; negative: requests waiting for one",
            ),
            &["pool"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(pool_size.clone()),
            Box::new(pool_available.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        GatewayMetrics {
            registry,
            requests,
            duration,
            in_flight,
            pool_size,
            pool_available,
        }
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
}
