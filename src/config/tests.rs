use super::*;
use crate::broker::addresses::DEFAULT_BROKER_URL;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn defaults_load_and_match_the_contract() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.broker.url, vec![DEFAULT_BROKER_URL.to_string()]);
    assert_eq!(DEFAULT_BROKER_URL, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(s.broker.prefix, "infermq");
    assert_eq!(s.broker.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(
        s.runtime.execution_providers,
        vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
    );
    assert!(!s.runtime.require_gpu);
    assert_eq!(s.http.listen.port(), 8080);
    assert_eq!(s.repository.path, PathBuf::from("models"));
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let file = write("[broker]\nprefix = \"fromfile\"\nprefetch = 7\n");
    let s = Settings::load_from(
        Some(file.path()),
        env(&[
            ("INFERMQ__BROKER__PREFIX", "fromenv"),
            ("INFERMQ__RUNTIME__EXECUTION_PROVIDERS", "cpu"),
        ]),
    )
    .unwrap();
    assert_eq!(s.broker.prefix, "fromenv");
    assert_eq!(s.broker.prefetch, 7);
    assert_eq!(s.runtime.execution_providers, vec![ExecutionProvider::Cpu]);
    assert!(s.runtime.instance_cpus.is_empty() && s.runtime.io_cpus.is_empty());
    let s = Settings::load_from(
        None,
        env(&[
            ("INFERMQ__RUNTIME__INSTANCE_CPUS", "0"),
            ("INFERMQ__RUNTIME__IO_CPUS", "0,0"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (s.runtime.instance_cpus, s.runtime.io_cpus),
        (vec![0], vec![0, 0])
    );
}

#[test]
fn unknown_keys_are_refused_with_the_key_named() {
    let file = write("[broker]\nprefixx = \"typo\"\n");
    let err = Settings::load_from(Some(file.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefixx"), "{err}");
    let err = Settings::load_from(None, env(&[("INFERMQ__HTTP__LISTN", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn invalid_values_are_refused_with_the_key_named() {
    let err = Settings::load_from(None, env(&[("INFERMQ__HTTP__LISTEN", "not-an-address")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen"), "{err}");
    let err = Settings::load_from(None, env(&[("INFERMQ__BROKER__URL", "http://x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("broker.url"), "{err}");
    let err = Settings::load_from(
        None,
        env(&[
            ("INFERMQ__RUNTIME__REQUIRE_GPU", "true"),
            ("INFERMQ__RUNTIME__EXECUTION_PROVIDERS", "cpu"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("runtime.require_gpu"), "{err}");
    let err = Settings::load_from(
        None,
        env(&[("INFERMQ__RUNTIME__EXECUTION_PROVIDERS", "tpu")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tpu"), "{err}");
    let err = Settings::load_from(
        None,
        env(&[("INFERMQ__RUNTIME__INSTANCE_CPUS", "0,100000")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("runtime.instance_cpus") && err.contains("CPU 100000"),
        "{err}"
    );
    let err = Settings::load_from(Some(Path::new("/nonexistent.toml")), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn broker_url_takes_a_list_from_toml_or_the_environment() {
    let urls = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let file = write("[broker]\nurl = [\"amqp://a:5681/%2f\", \"amqp://b:5682/%2f\"]\n");
    let s = Settings::load_from(Some(file.path()), env(&[])).unwrap();
    assert_eq!(
        s.broker.url,
        urls(&["amqp://a:5681/%2f", "amqp://b:5682/%2f"])
    );
    let s = Settings::load_from(
        None,
        env(&[("INFERMQ__BROKER__URL", "amqp://a:1/%2f, amqps://b:2/%2f")]),
    )
    .unwrap();
    assert_eq!(s.broker.url, urls(&["amqp://a:1/%2f", "amqps://b:2/%2f"]));
    for bad in ["amqp://a:1,http://b:2", ","] {
        let err = Settings::load_from(None, env(&[("INFERMQ__BROKER__URL", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.url"), "{bad}: {err}");
    }
}

#[test]
fn broker_url_password_is_redacted_in_debug() {
    let s = Settings::load_from(
        None,
        env(&[("INFERMQ__BROKER__URL", "amqp://user:hunter2@host:5672/%2f")]),
    )
    .unwrap();
    let debug = format!("{:?}", s.broker);
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("user:***@host"), "{debug}");
}

#[test]
fn training_data_limits_default_to_no_data_dir_and_one_gib() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.training.data_dir(), None);
    assert_eq!(s.training.max_data_bytes, 1 << 30);
    let s = Settings::load_from(
        None,
        env(&[
            ("INFERMQ__TRAINING__DATA_DIR", "/srv/training"),
            ("INFERMQ__TRAINING__MAX_DATA_BYTES", "1000"),
        ]),
    )
    .unwrap();
    assert_eq!(s.training.data_dir(), Some(Path::new("/srv/training")));
    assert_eq!(s.training.max_data_bytes, 1000);
    let err = Settings::load_from(None, env(&[("INFERMQ__TRAINING__MAX_DATA_BYTES", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("training.max_data_bytes"), "{err}");
}

#[test]
fn training_budget_defaults_overrides_and_errors() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.training.max_parameters, 10_000_000);
    assert!(s.training.allowed_models.is_empty());
    let s = Settings::load_from(
        None,
        env(&[
            ("INFERMQ__TRAINING__ALLOWED_MODELS", "team-a-*,shared"),
            ("INFERMQ__TRAINING__MAX_PARAMETERS", "5"),
            ("INFERMQ__TRAINING__PROGRESS_INTERVAL_MS", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(s.training.allowed_models, vec!["team-a-*", "shared"]);
    assert_eq!(s.training.max_parameters, 5);
    assert_eq!(s.training.progress_interval_ms, 0);
    for (key, value, message) in [
        (
            "INFERMQ__TRAINING__MAX_WORK",
            "0",
            "training.max_work: must be at least 1",
        ),
        (
            "INFERMQ__TRAINING__MAX_PARAMETERS",
            "0",
            "training.max_parameters: must be at least 1",
        ),
        (
            "INFERMQ__TRAINING__MAX_DURATION_MS",
            "0",
            "training.max_duration_ms: must be at least 1",
        ),
        (
            "INFERMQ__TRAINING__MAX_HISTORY",
            "1",
            "training.max_history: must be at least 2 (the first and last epochs)",
        ),
    ] {
        let err = Settings::load_from(None, env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("configuration key {message}"), "{key}");
    }
}

#[test]
fn otlp_endpoint_is_off_by_default_and_checked() {
    let settings = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(settings.telemetry.otlp_endpoint, "");
    let settings = Settings::load_from(
        None,
        env(&[("INFERMQ__TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4318")]),
    )
    .unwrap();
    assert_eq!(settings.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
    let err = Settings::load_from(
        None,
        env(&[(
            "INFERMQ__TELEMETRY__OTLP_ENDPOINT",
            "https://collector:4318",
        )]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("telemetry.otlp_endpoint") && err.contains("http://"),
        "{err}"
    );
}

#[test]
fn broker_url_file_replaces_the_url_and_tls_keys_come_from_the_environment() {
    let secret = write("amqps://worker:s3cret@rabbitmq.internal:5671/prod\n");
    let path = secret.path().to_str().unwrap();
    let s = Settings::load_from(
        None,
        env(&[
            ("INFERMQ__BROKER__URL_FILE", path),
            ("INFERMQ__BROKER__TLS__CA_FILE", "/etc/infermq/ca.pem"),
            ("INFERMQ__BROKER__TLS__CERT_FILE", "/etc/infermq/client.pem"),
            ("INFERMQ__BROKER__TLS__KEY_FILE", "/etc/infermq/client.key"),
            ("INFERMQ__BROKER__TLS__AUTH", "external"),
            ("INFERMQ__TRAINING__ALLOWED_USERS", "trainer,ops"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.broker.url,
        vec!["amqps://worker:s3cret@rabbitmq.internal:5671/prod"]
    );
    assert!(!format!("{:?}", s.broker).contains("s3cret"));
    assert_eq!(s.broker.tls.ca_file, PathBuf::from("/etc/infermq/ca.pem"));
    assert_eq!(s.broker.tls.auth, crate::broker::tls::TlsAuth::External);
    assert_eq!(s.training.allowed_users, vec!["trainer", "ops"]);
    let err = Settings::load_from(None, env(&[("INFERMQ__BROKER__URL_FILE", "/nonexistent")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("broker.url_file"), "{err}");
    let err = Settings::load_from(None, env(&[("INFERMQ__BROKER__TLS__KEY_FILE", "/k.pem")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "configuration key broker.tls: cert_file and key_file are set together or not at all"
    );
}
