//! The OTLP/HTTP (protobuf) span exporter behind [`super::JobTracer`]: a batch processor on
//! its own thread posting to `<endpoint>/v1/traces` with a blocking HTTP client, so exporting
//! never runs on the async runtime that serves jobs.

use std::time::Duration;

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// How long one export request may take before it is abandoned (the spans are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("telemetry.otlp_endpoint: {0}")]
    Endpoint(String),
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP exporter shutdown: {0}")]
    Shutdown(OTelSdkError),
}

/// Checks a configured endpoint: empty (off), or an `http://` URL with a host. The exporter
/// is built without TLS: send to a collector on the host or in the pod.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.is_empty() {
        return Ok(());
    }
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(format!(
            "must start with http:// (TLS is not built in: export to a local collector), got {:?}",
            shorten(endpoint)
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("is not a URL with a host: {:?}", shorten(endpoint)));
    }
    Ok(())
}

/// The traces URL: the endpoint as given when it has a path, else `<endpoint>/v1/traces`
/// (the OTLP/HTTP default path).
pub fn traces_url(endpoint: &str) -> String {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    match rest.find('/') {
        Some(slash) if slash + 1 < rest.len() => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

pub(super) fn provider(
    endpoint: &str,
    service_instance: &str,
) -> Result<SdkTracerProvider, TraceError> {
    check_endpoint(endpoint).map_err(TraceError::Endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = Resource::builder_empty()
        .with_service_name("infermq")
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("service.instance.id", service_instance.to_string()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_max_links_per_span(super::links::MAX_LINKS as u32)
        .with_resource(resource)
        .build())
}

fn shorten(s: &str) -> &str {
    crate::protocol::text::prefix(s, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("").is_ok());
        assert!(check_endpoint("http://127.0.0.1:4318").is_ok());
        assert!(check_endpoint("http://collector:4318/v1/traces").is_ok());
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http:// x",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?}");
        }
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/otlp/v1/traces"),
            "http://c:4318/otlp/v1/traces"
        );
    }
}
