//! HTTPS for the gateway (`gateway.tls.cert_file`, `gateway.tls.key_file`): rustls with the
//! ring provider (the one the broker connections use), HTTP/1.1 over it as over plain TCP.
//!
//! [`TlsFiles`] holds the server configuration made from the PEM files, and makes a new one
//! when either file changes ([`super::reload`] polls them, SIGHUP asks at once): a new
//! certificate serves the next handshakes, connections already open keep theirs, and a pair
//! that does not load (unreadable, no certificate, a key that is not the certificate's) is
//! logged and counted while the pair in use stays. At start a bad pair stops the gateway.
//!
//! [`TlsListener`] is the listener axum serves on: a task accepts TCP connections and runs
//! each handshake in a task of its own (at most [`MAX_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others; axum gets
//! the connections whose handshake completed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::metrics::GatewayMetrics;
use super::reload::FileStamp;
use crate::config::GatewayTlsSettings;

/// Handshakes in progress at most; a connection past it is closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and key files, and the server configuration made from them.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<[Option<FileStamp>; 2]>,
    metrics: Arc<GatewayMetrics>,
}

impl TlsFiles {
    /// Loads the pair; the error names the file and what is wrong with it.
    pub fn open(
        settings: &GatewayTlsSettings,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<TlsFiles, String> {
        let stamps = [
            FileStamp::of(&settings.cert_file),
            FileStamp::of(&settings.key_file),
        ];
        let config = server_config(&settings.cert_file, &settings.key_file)?;
        Ok(TlsFiles {
            cert: settings.cert_file.clone(),
            key: settings.key_file.clone(),
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
            metrics,
        })
    }

    /// Loads the pair again when either file changed (or whatever, with `force`); a pair that
    /// does not load is logged and counted, and the one in use stays.
    pub fn reload(&self, force: bool) {
        let now = [FileStamp::of(&self.cert), FileStamp::of(&self.key)];
        let Ok(mut stamps) = self.stamps.lock() else {
            return;
        };
        if *stamps == now && !force {
            return;
        }
        *stamps = now;
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                if let Ok(mut current) = self.config.write() {
                    *current = Arc::new(config);
                }
                self.metrics.reload("tls", true);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                self.metrics.reload("tls", false);
                tracing::error!(%error, "TLS certificate refused; the one in use stays");
            }
        }
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        let config = self.config.read().ok()?.clone();
        Some(TlsAcceptor::from(config))
    }
}

/// A server configuration from a PEM certificate chain and its PEM private key (PKCS#8,
/// PKCS#1 or SEC1).
fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let read = |path: &Path, key: &'static str| {
        std::fs::read(path).map_err(|e| format!("gateway.tls.{key} = {}: {e}", path.display()))
    };
    let pem = read(cert, "cert_file")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("gateway.tls.cert_file = {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "gateway.tls.cert_file = {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let pem = read(key, "key_file")?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "gateway.tls.key_file = {}: no PEM private key in it ({e})",
            key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("gateway.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "gateway.tls: the key {} does not go with the certificate {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connections whose TLS handshake completed, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp`, each connection's handshake with the pair `files` holds then.
    pub fn new(tcp: TcpListener, files: Arc<TlsFiles>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let task = tokio::spawn(accept_task(tcp, files, tx));
        Ok(TlsListener { ready, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_task(
    tcp: TcpListener,
    files: Arc<TlsFiles>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: as axum does, wait and go on.
                tracing::debug!(%error, "Cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(place) = handshakes.clone().try_acquire_owned() else {
            files.metrics.tls_handshake_failed();
            continue;
        };
        let Some(acceptor) = files.acceptor() else {
            continue;
        };
        let ready = ready.clone();
        let metrics = files.metrics.clone();
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(place);
            match shaken {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(error)) => {
                    metrics.tls_handshake_failed();
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failed();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
