//! Every key of [`Settings`] checked once, at start: the first invalid one stops the start with
//! a message naming it ([`ConfigError::Invalid`]).

use super::*;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let checked = self
            .broker
            .check()
            .and_then(|()| self.runtime_check())
            .and_then(|()| self.training.check())
            .and_then(|()| self.telemetry_check())
            .and_then(|()| self.gateway.check());
        checked.map_err(|(key, message)| ConfigError::Invalid { key, message })
    }

    /// The repository, runtime and batching keys.
    fn runtime_check(&self) -> Result<(), Problem> {
        let runtime = &self.runtime;
        refuse_if(
            self.repository.poll_interval_ms == 0,
            "repository.poll_interval_ms",
            AT_LEAST_ONE,
        )?;
        refuse_if(
            runtime.execution_providers.is_empty(),
            "runtime.execution_providers",
            "must name at least one of cuda, cpu",
        )?;
        refuse_if(
            runtime.require_gpu
                && !runtime
                    .execution_providers
                    .contains(&ExecutionProvider::Cuda),
            "runtime.require_gpu",
            "is true but runtime.execution_providers has no \"cuda\"",
        )?;
        for (key, cpus) in [
            ("runtime.instance_cpus", &runtime.instance_cpus),
            ("runtime.io_cpus", &runtime.io_cpus),
        ] {
            crate::runtime::affinity::check_usable(cpus).map_err(|message| (key, message))?;
        }
        runtime.cuda.check()?;
        refuse_if(
            self.batching.max_batch_size > 65536,
            "batching.max_batch_size",
            "must be at most 65536",
        )
    }

    /// The log and telemetry keys.
    fn telemetry_check(&self) -> Result<(), Problem> {
        refuse_if(
            self.log.level.trim().is_empty(),
            "log.level",
            "must not be empty",
        )?;
        crate::telemetry::trace::check_endpoint(&self.telemetry.otlp_endpoint)
            .map_err(|message| ("telemetry.otlp_endpoint", message))
    }
}

impl BrokerSettings {
    fn check(&self) -> Result<(), Problem> {
        crate::broker::addresses::check_urls(&self.url)
            .map_err(|message| ("broker.url", message))?;
        if let Err(crate::broker::tls::ConnectError::Settings(message)) = self.tls.check() {
            return Err(("broker.tls", message.to_string()));
        }
        refuse_if(
            self.prefix.is_empty() || self.prefix.contains(char::is_whitespace),
            "broker.prefix",
            "must be a non-empty name without spaces",
        )?;
        refuse_if(
            self.max_message_bytes == 0,
            "broker.max_message_bytes",
            AT_LEAST_ONE,
        )?;
        refuse_if(
            self.delivery_limit == 0,
            "broker.delivery_limit",
            AT_LEAST_ONE,
        )?;
        refuse_if(
            self.reconnect_initial_ms == 0 || self.reconnect_max_ms < self.reconnect_initial_ms,
            "broker.reconnect_max_ms",
            "needs 0 < reconnect_initial_ms <= reconnect_max_ms",
        )
    }
}

impl TrainingSettings {
    fn check(&self) -> Result<(), Problem> {
        for (key, value) in [
            ("training.concurrency", self.concurrency as u64),
            ("training.max_data_bytes", self.max_data_bytes),
            ("training.max_parameters", self.max_parameters),
            ("training.max_work", self.max_work),
            ("training.max_duration_ms", self.max_duration_ms),
        ] {
            refuse_if(value == 0, key, AT_LEAST_ONE)?;
        }
        refuse_if(
            self.max_history < 2,
            "training.max_history",
            "must be at least 2 (the first and last epochs)",
        )
    }
}

impl GatewaySettings {
    fn check(&self) -> Result<(), Problem> {
        refuse_if(
            self.timeout_ms == 0 || self.max_timeout_ms < self.timeout_ms,
            "gateway.max_timeout_ms",
            "needs 0 < timeout_ms <= max_timeout_ms",
        )?;
        for (key, value) in [
            ("gateway.queue_check_ms", self.queue_check_ms),
            ("gateway.max_body_bytes", self.max_body_bytes as u64),
            ("gateway.max_in_flight", self.max_in_flight as u64),
        ] {
            refuse_if(value == 0, key, AT_LEAST_ONE)?;
        }
        refuse_if(
            self.connections == 0 || self.channels == 0,
            "gateway.channels",
            "connections and channels must be at least 1",
        )?;
        refuse_if(
            self.gather_delay_us > 1_000_000,
            "gateway.gather_delay_us",
            "must be at most 1000000 (one second)",
        )?;
        for (key, value) in [
            ("gateway.reload_poll_ms", self.reload_poll_ms),
            (
                "gateway.auth_failures_per_minute",
                u64::from(self.auth_failures_per_minute),
            ),
            ("gateway.usage_log_max_bytes", self.usage_log_max_bytes),
        ] {
            refuse_if(value == 0, key, AT_LEAST_ONE)?;
        }
        refuse_if(
            self.client_address_header
                .parse::<axum::http::HeaderName>()
                .is_err()
                && !self.client_address_header.is_empty(),
            "gateway.client_address_header",
            "must be an HTTP header name (e.g. x-forwarded-for) or empty",
        )?;
        let tls = &self.tls;
        refuse_if(
            tls.cert_file.as_os_str().is_empty() != tls.key_file.as_os_str().is_empty(),
            "gateway.tls",
            "cert_file and key_file are set together or not at all",
        )
    }
}

/// A refused key and why.
type Problem = (&'static str, String);

const AT_LEAST_ONE: &str = "must be at least 1";

/// `Err((key, message))` when `bad`.
fn refuse_if(bad: bool, key: &'static str, message: &str) -> Result<(), Problem> {
    match bad {
        true => Err((key, message.to_string())),
        false => Ok(()),
    }
}
