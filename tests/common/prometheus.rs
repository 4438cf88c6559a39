//! A real Prometheus server for tests: Debian's `prometheus` binary on a free port with its own
//! storage, queried through its HTTP API; and RabbitMQ's own Prometheus endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `prometheus` server on a free port with its own storage; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(binary: &Path, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, addr, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query` at the current time: the `data.result` vector, or why there is none.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = get(self.addr, &path)
            .await
            .ok_or_else(|| "Prometheus did not answer".to_string())?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        match json["data"]["result"].as_array() {
            Some(result) => Ok(result.clone()),
            None => Err(format!("no result vector: {body}")),
        }
    }

    /// Polls `expr` until `done` holds on its result; fails after `within` with the last one.
    pub async fn wait_for(&self, expr: &str, within: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(expr).await;
            if result.as_deref().is_ok_and(&done) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} never held within {within:?}: {result:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 GET (so the answer is never chunked): (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Makes sure RabbitMQ's Prometheus endpoint answers, enabling the plugin if needed.
pub async fn ensure_rabbitmq_prometheus() {
    let endpoint: SocketAddr = "127.0.0.1:15692".parse().expect("address");
    if get(endpoint, "/metrics").await.map(|(s, _)| s) == Some(200) {
        return;
    }
    let enabled = Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_prometheus"])
        .output();
    eprintln!("rabbitmq-plugins enable rabbitmq_prometheus: {enabled:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(endpoint, "/metrics").await.map(|(s, _)| s) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "RabbitMQ's Prometheus endpoint (127.0.0.1:15692) does not answer; \
             run `rabbitmq-plugins enable rabbitmq_prometheus`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
