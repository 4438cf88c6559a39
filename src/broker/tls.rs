//! TLS to the broker: the `broker.tls` settings and the one [`connect`] every part of infermq
//! uses (the worker, `infermq predict`, `infermq-bench`).
//!
//! `amqps://` always means TLS through rustls (lapin's `rustls--ring` + `rustls-native-certs`
//! features), the certificate checked against the trusted roots and the host name of the URL;
//! there is no plaintext fallback. `amqp://` is plaintext and ignores these settings. The trusted
//! roots are the system's (rustls-native-certs) plus `broker.tls.ca_file` when set.
//!
//! A failed connection is explained: [`explain`] turns lapin's error into a sentence that names
//! the cause (unknown CA, wrong host name, a TLS URL at a plaintext port or the reverse).

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;

/// How the connection logs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsAuth {
    /// User and password from the URL (SASL `PLAIN`).
    #[default]
    Plain,
    /// The client certificate (SASL `EXTERNAL`): the broker takes the user name from it.
    External,
}

/// `[broker.tls]`: every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM bundle of CA certificates trusted in addition to the system roots.
    pub ca_file: PathBuf,
    /// PEM client certificate (chain), presented when set (needs `key_file`).
    pub cert_file: PathBuf,
    /// PEM PKCS#8 private key of `cert_file`.
    pub key_file: PathBuf,
    pub auth: TlsAuth,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("broker.url: {0}")]
    Url(String),
    #[error("{key} = {path}: {source}")]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker.tls: {0}")]
    Settings(&'static str),
    #[error("{explanation} ({source})")]
    Broker {
        explanation: String,
        source: lapin::Error,
    },
}

impl ConnectError {
    /// True when the cause is a setting, a file or a certificate rather than a broker that is
    /// down: logged as an error rather than a warning.
    pub fn is_configuration(&self) -> bool {
        match self {
            ConnectError::Broker { explanation, .. } => explanation != GENERIC,
            _ => true,
        }
    }
}

const GENERIC: &str = "cannot connect to the broker";

fn set(path: &Path) -> Option<&Path> {
    (!path.as_os_str().is_empty()).then_some(path)
}

impl TlsSettings {
    /// Checks the combination of keys (not the files, which may appear later).
    pub fn check(&self) -> Result<(), ConnectError> {
        match (set(&self.cert_file), set(&self.key_file)) {
            (Some(_), None) | (None, Some(_)) => Err(ConnectError::Settings(
                "cert_file and key_file are set together or not at all",
            )),
            (None, None) if self.auth == TlsAuth::External => Err(ConnectError::Settings(
                "auth = \"external\" needs cert_file and key_file",
            )),
            _ => Ok(()),
        }
    }

    /// Reads the files into lapin's TLS configuration.
    pub fn load(&self) -> Result<OwnedTLSConfig, ConnectError> {
        self.check()?;
        let read = |key, path: &Path| {
            std::fs::read(path).map_err(|source| ConnectError::File {
                key,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_chain = match set(&self.ca_file) {
            Some(path) => Some(
                String::from_utf8(read("broker.tls.ca_file", path)?)
                    .map_err(|_| ConnectError::Settings("ca_file is not a PEM (text) file"))?,
            ),
            None => None,
        };
        let identity = match (set(&self.cert_file), set(&self.key_file)) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("broker.tls.cert_file", cert)?,
                key: read("broker.tls.key_file", key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// Connects to `url` with the TLS settings (used only by `amqps://`), naming the connection
/// `name` in the broker's management views. One attempt; callers retry.
pub async fn connect(url: &str, tls: &TlsSettings, name: &str) -> Result<Connection, ConnectError> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| ConnectError::Url(super::addresses::redact_url(&e)))?;
    let config = match uri.scheme {
        AMQPScheme::AMQPS => {
            let config = tls.load()?;
            if tls.auth == TlsAuth::External {
                uri.query.auth_mechanism = Some(SASLMechanism::External);
            }
            config
        }
        AMQPScheme::AMQP => OwnedTLSConfig::default(),
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| ConnectError::Broker {
        explanation: "no async runtime".into(),
        source,
    })?;
    let scheme = uri.scheme.clone();
    Connection::connect_uri_with_config(uri, properties, config, runtime)
        .await
        .map_err(|source| ConnectError::Broker {
            explanation: explain(&scheme, &source.to_string()),
            source,
        })
}

/// The likely cause of a failed connection, from the URL scheme and lapin's error text.
pub fn explain(scheme: &AMQPScheme, error: &str) -> String {
    let e = error.to_ascii_lowercase();
    let tls = *scheme == AMQPScheme::AMQPS;
    if e.contains("unknownissuer") || e.contains("unknown issuer") || e.contains("badsignature") {
        "TLS: the broker's certificate is not signed by a trusted CA (broker.tls.ca_file)".into()
    } else if e.contains("notvalidforname") || e.contains("not valid for name") {
        "TLS: the broker's certificate does not name the host of broker.url".into()
    } else if e.contains("expired") {
        "TLS: the broker's certificate has expired or is not yet valid".into()
    } else if tls && (e.contains("corrupt message") || e.contains("invalidcontenttype")) {
        "TLS: the broker did not answer in TLS; is broker.url an amqps:// URL at a plaintext port?"
            .into()
    } else if e.contains("certificaterequired") || e.contains("certificate required") {
        "TLS: the broker asks for a client certificate (broker.tls.cert_file/key_file)".into()
    } else if e.contains("external") || e.contains("auth_mechanism") || e.contains("sasl") {
        "the broker refused the login mechanism (broker.tls.auth; is rabbitmq_auth_mechanism_ssl enabled?)"
            .into()
    } else if e.contains("access_refused") || e.contains("access refused") || e.contains("403") {
        "the broker refused the user or password of broker.url".into()
    } else if !tls
        && (e.contains("reset by peer")
            || e.contains("unexpected eof")
            || e.contains("failed to parse"))
    {
        // What a TLS listener does with an AMQP protocol header: a TLS alert (which is no AMQP
        // frame) or a reset, depending on timing. A restarting broker refuses instead.
        "the broker answered the AMQP handshake with something else or closed it; is broker.url an amqp:// URL at a TLS port (use amqps://)?"
            .into()
    } else {
        GENERIC.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_name_the_cause() {
        let cases = [
            (
                AMQPScheme::AMQPS,
                "IO error: invalid peer certificate: UnknownIssuer",
                "trusted CA",
            ),
            (
                AMQPScheme::AMQPS,
                "invalid peer certificate: NotValidForName",
                "host",
            ),
            (
                AMQPScheme::AMQPS,
                "received corrupt message of type InvalidContentType",
                "plaintext port",
            ),
            (
                AMQPScheme::AMQP,
                "IO error: Connection reset by peer (os error 104)",
                "TLS port",
            ),
            (
                AMQPScheme::AMQP,
                "failed to parse: Parsing Error: ParserErrors { error: Nom(MapOpt), errors: None }",
                "TLS port",
            ),
            (
                AMQPScheme::AMQPS,
                "IO error: Connection refused (os error 111)",
                "cannot connect",
            ),
        ];
        for (scheme, error, expected) in cases {
            let said = explain(&scheme, error);
            assert!(said.contains(expected), "{error} → {said}");
        }
    }

    #[test]
    fn key_combinations_are_checked() {
        let only_cert = TlsSettings {
            cert_file: "c.pem".into(),
            ..TlsSettings::default()
        };
        assert!(only_cert.check().is_err());
        let external = TlsSettings {
            auth: TlsAuth::External,
            ..TlsSettings::default()
        };
        assert!(external
            .check()
            .unwrap_err()
            .to_string()
            .contains("cert_file"));
        assert!(TlsSettings::default().check().is_ok());
    }

    #[test]
    fn a_missing_file_names_its_key() {
        let tls = TlsSettings {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsSettings::default()
        };
        let error = tls.load().unwrap_err().to_string();
        assert!(error.contains("broker.tls.ca_file"), "{error}");
    }
}
