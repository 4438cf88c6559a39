//! Logging setup: one `tracing-subscriber` installed at start, as text or JSON lines.
//!
//! Called once from `main` before anything logs. The filter comes from configuration
//! (`"info"`, `"infermq=debug,lapin=warn"`); a non-empty `RUST_LOG` overrides it. Logs go
//! to stderr, so `infermq predict` keeps stdout for its result.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format must be \"text\" or \"json\", got {other:?}"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the global subscriber. `Err` names an invalid filter. A second call keeps the
/// first subscriber and returns `Ok`, so tests and tools may call it freely.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = build_filter(filter, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // The only failure left is "a global subscriber is already set": keep that one.
    drop(installed);
    Ok(())
}

/// The filter in force: `rust_log` when set and non-empty, else `configured`.
fn build_filter(configured: &str, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(env) => EnvFilter::try_new(env).map_err(|e| format!("invalid RUST_LOG {env:?}: {e}")),
        None => EnvFilter::try_new(configured)
            .map_err(|e| format!("invalid log filter {configured:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_filter() {
        let f = build_filter("info", Some("infermq=trace")).expect("valid");
        assert_eq!(f.to_string(), "infermq=trace");
        let f = build_filter("infermq=debug,lapin=warn", None).expect("valid");
        assert!(f.to_string().contains("lapin=warn"), "{f}");
        let f = build_filter("warn", Some("  ")).expect("blank RUST_LOG is ignored");
        assert_eq!(f.to_string(), "warn");
    }

    #[test]
    fn invalid_filters_are_errors_naming_the_source() {
        let err = build_filter("info,[=", None).expect_err("invalid");
        assert!(err.contains("log filter"), "{err}");
        let err = build_filter("info", Some("x=notalevel")).expect_err("invalid");
        assert!(err.contains("RUST_LOG"), "{err}");
    }

    #[test]
    fn format_parses_and_deserializes_lowercase() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("JSON".parse::<LogFormat>().is_err());
        let f: LogFormat = serde_json::from_str("\"text\"").expect("lowercase");
        assert_eq!(f, LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn init_twice_is_ok() {
        init(LogFormat::Text, "info").expect("first");
        init(LogFormat::Json, "debug").expect("second keeps the first");
    }
}
