//! The routes over a real socket with plain HTTP/1.1, against a fake [`StatusSource`].

use super::*;
use crate::telemetry::Outcome;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

struct FakeStatus {
    ready: Mutex<Result<Option<String>, String>>,
    models: Value,
}

impl StatusSource for FakeStatus {
    fn readiness(&self) -> Result<Option<String>, String> {
        self.ready.lock().expect("not poisoned").clone()
    }
    fn models(&self) -> Value {
        self.models.clone()
    }
}

struct Server {
    addr: SocketAddr,
    status: Arc<FakeStatus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(models: Value) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let status = Arc::new(FakeStatus {
        ready: Mutex::new(Err("broker not connected".to_string())),
        models,
    });
    let metrics = Arc::new(Metrics::new("0.1.0", "1.31.1"));
    let state = HttpState {
        metrics: metrics.clone(),
        status: status.clone(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state, shutdown.clone()));
    Server {
        addr,
        status,
        metrics,
        shutdown,
        task,
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One `GET` on a fresh connection; the server closes it after the answer.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("answered in time");
    let text = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = head.to_ascii_lowercase();
    assert!(
        headers.contains(&format!("content-length: {}", body.len())),
        "whole body in one piece: {head}"
    );
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn stop(server: Server) {
    server.shutdown.cancel();
    let ended = tokio::time::timeout(DEADLINE, server.task).await;
    ended
        .expect("stopped in time")
        .expect("task joined")
        .expect("served without error");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}

fn model_list() -> Value {
    json!([
        {"name": "iris", "versions": ["3", "4"], "platform": "onnxruntime_onnx"},
        {"name": "mnist", "versions": ["1"], "platform": "onnxruntime_onnx"}
    ])
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = start(model_list()).await;
    let live = get(server.addr, "/healthz").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    assert_eq!(get(server.addr, "/v2/health/live").await.status, 200);

    let not_ready = get(server.addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.body, "broker not connected");
    assert_eq!(get(server.addr, "/v2/health/ready").await.status, 503);

    *server.status.ready.lock().expect("not poisoned") = Ok(None);
    let ready = get(server.addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    // A refused model is named under `ready`.
    let refused = Some("refused: vad (version 1: bad)".to_string());
    *server.status.ready.lock().expect("not poisoned") = Ok(refused);
    let ready = get(server.addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready\nrefused: vad (version 1: bad)")
    );

    server.metrics.model("iris", "3").job(Outcome::Success);
    let scrape = get(server.addr, "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape
        .headers
        .contains("content-type: text/plain; version=0.0.4"));
    assert!(scrape
        .body
        .contains(r#"infermq_jobs_total{model="iris",outcome="success",version="3"} 1"#));
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    stop(server).await;
}

#[tokio::test]
async fn models_and_one_model() {
    let server = start(model_list()).await;
    let all = get(server.addr, "/v2/models").await;
    assert_eq!(all.status, 200);
    assert!(all.headers.contains("content-type: application/json"));
    let body: Value = serde_json::from_str(&all.body).expect("JSON body");
    assert_eq!(body, model_list());

    let one = get(server.addr, "/v2/models/mnist").await;
    assert_eq!(one.status, 200);
    let body: Value = serde_json::from_str(&one.body).expect("JSON body");
    assert_eq!(body["name"], "mnist");
    assert_eq!(body["versions"], json!(["1"]));

    let absent = get(server.addr, "/v2/models/ghost").await;
    assert_eq!(absent.status, 404);
    let body: Value = serde_json::from_str(&absent.body).expect("JSON body");
    assert_eq!(body["error"], "unknown model: ghost");
    stop(server).await;
}

#[test]
fn find_model_in_every_shape() {
    let iris = json!({"name": "iris", "versions": ["3"]});
    let list = json!([iris.clone(), {"name": "mnist"}]);
    assert_eq!(find_model(list.clone(), "iris"), Some(iris.clone()));
    assert_eq!(find_model(list, "ghost"), None);

    let wrapped = json!({"models": [iris.clone()]});
    assert_eq!(find_model(wrapped.clone(), "iris"), Some(iris.clone()));
    assert_eq!(find_model(wrapped, "models"), None);

    let keyed = json!({"iris": {"versions": ["3"]}, "models": 2});
    assert_eq!(
        find_model(keyed.clone(), "iris"),
        Some(json!({"versions": ["3"]}))
    );
    assert_eq!(find_model(keyed, "models"), Some(json!(2)));

    assert_eq!(find_model(json!("iris"), "iris"), None);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let server = start(model_list()).await;
    // A scraper's connection kept alive after one answer must not hold the shutdown.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    let read_answer = async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&reply).ends_with("\r\n\r\nok") {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before the answer");
            reply.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read_answer)
        .await
        .expect("answered in time");
    stop(server).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(closed.expect("closed in time").is_ok() && rest.is_empty());
}
