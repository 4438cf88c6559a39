//! The gateway's locked front door, end to end: a real worker (iris and the toy decoder
//! `storyteller`), the real RabbitMQ, `infermq gateway` with a keys file, and real clients —
//! curl, and the `openai` package with a key (tests/gateway_auth/openai_keys.py).
//!
//! Each status of the key check in each API's shape (401, 403, 429 with `Retry-After`), the
//! tenant stamped on jobs and counted by the worker, limits under bursts, keys reloaded
//! without a restart, the usage log's totals equal to the answers', hostile headers, and (with
//! the binary, in gateway_auth/tls.rs) HTTPS, SIGHUP and the refusal to serve anyone on an
//! address other than loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::curl::CurlReply;
use common::gateway::{start_gateway, TestGateway};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An API key: its tenant's name and the secret clients send.
#[derive(Clone)]
struct Key {
    name: &'static str,
    secret: String,
}

impl Key {
    fn new(name: &'static str) -> Key {
        Key {
            name,
            secret: format!("sk-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.secret)
    }
}

/// A `[[key]]` entry for `key` with `models` (TOML) and more lines (`limits`).
fn entry(key: &Key, models: &str, limits: &str) -> String {
    let digest: String = Sha256::digest(key.secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "[[key]]\nname = \"{}\"\nsha256 = \"{digest}\"\nmodels = {models}\n{limits}\n",
        key.name
    )
}

/// Replaces `path` with `text` by a rename, as an operator's tooling (or a Secret) does.
fn write_file(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `data:` events of a stream, parsed (`[DONE]` left out).
fn json_events(reply: &CurlReply) -> Vec<Value> {
    reply
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// Runs curl with `args` (headers as `-H` values, a JSON body when given) against `url`.
async fn curl(url: &str, headers: &[String], body: Option<&Value>, args: &[&str]) -> CurlReply {
    try_curl(url, headers, body, args)
        .await
        .unwrap_or_else(|| panic!("no HTTP answer from curl {args:?} {url}"))
}

/// [`curl`], `None` when no answer came (nothing listens yet, a TLS failure).
async fn try_curl(
    url: &str,
    headers: &[String],
    body: Option<&Value>,
    args: &[&str],
) -> Option<CurlReply> {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-i", "-N", "--max-time", "60", "-H", "Expect:"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if let Some(body) = body {
        command.args(["-H", "content-type: application/json"]);
        command.args(["--data-binary", &body.to_string()]);
    }
    command.args(args);
    let out = command.arg(url).output().await.expect("curl runs");
    CurlReply::parse(&out.stdout)
}

/// True when a GET of `url` (curl with `args`) is answered 200.
async fn answers_200(url: &str, args: &[&str]) -> bool {
    try_curl(url, &[], None, args)
        .await
        .is_some_and(|reply| reply.status == 200)
}

/// The status of a GET of `path` with `authorization`, written by hand on a new connection;
/// `None` when the connection closed without one.
async fn raw_get(addr: std::net::SocketAddr, path: &str, authorization: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    // The server may answer and close before it has read it all.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `n` requests at once from one curl (`--parallel`): each one's status and `Retry-After`.
async fn burst(url: &str, header: &str, body: &Value, n: usize) -> Vec<(u16, Option<u64>)> {
    burst_from(url, header, Some(body), n, &[]).await
}

/// [`burst`] with a body or none and more curl arguments for each request.
async fn burst_from(
    url: &str,
    header: &str,
    body: Option<&Value>,
    n: usize,
    args: &[&str],
) -> Vec<(u16, Option<u64>)> {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-Z", "--parallel-immediate", "--parallel-max", "64"]);
    for i in 0..n {
        if i > 0 {
            command.arg("--next");
        }
        command.args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{retry-after}\n",
        ]);
        command.args(["-H", header]).args(args);
        if let Some(body) = body {
            command.args(["-H", "content-type: application/json"]);
            command.args(["-d", &body.to_string()]);
        }
        command.arg(url);
    }
    let out = command.output().await.expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (status, parts.next().and_then(|s| s.parse().ok()))
        })
        .collect()
}

/// Polls `check` every 50 ms until it holds, at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn iris_rows(rows: usize) -> Value {
    let data: Vec<f32> = (0..rows * 4).map(|i| 0.5 + i as f32 / 10.0).collect();
    json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
}

/// A worker serving iris and storyteller, and a gateway in front of it with the keys file
/// `keys` (and `extra` settings), its usage log in the fleet's directory.
struct Fleet {
    dir: tempfile::TempDir,
    _models: tempfile::TempDir,
    worker: TestWorker,
    gw: TestGateway,
}

impl Fleet {
    async fn start(keys: &str, extra: &[(&str, &str)]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("keys.toml");
        write_file(&keys_file, keys);
        let models = model_repository(&["iris", "storyteller"]);
        let prefix = random_prefix();
        let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
        let repository = models.path().display().to_string();
        let keys_path = keys_file.display().to_string();
        let usage = dir.path().join("usage.jsonl").display().to_string();
        let mut env = vec![
            ("INFERMQ__REPOSITORY__PATH", repository.as_str()),
            ("INFERMQ__GATEWAY__API_KEYS_FILE", keys_path.as_str()),
            ("INFERMQ__GATEWAY__USAGE_LOG", usage.as_str()),
            ("INFERMQ__GATEWAY__RELOAD_POLL_MS", "100"),
        ];
        env.extend_from_slice(extra);
        let gw = start_gateway(&prefix, &env).await;
        Fleet {
            dir,
            _models: models,
            worker,
            gw,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.addr)
    }

    fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.toml")
    }

    fn usage_file(&self) -> PathBuf {
        self.dir.path().join("usage.jsonl")
    }

    /// Stops both; the usage log is written out.
    async fn stop(self) -> tempfile::TempDir {
        self.gw.stop().await;
        self.worker.stop().await;
        self.dir
    }
}

fn usage_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_in_each_apis_shape_and_the_tenant_reaches_the_worker() {
    let a = Key::new("team-a");
    let b = Key::new("team-b");
    let c = Key::new("team-c");
    let keys = [
        entry(&a, r#"["*"]"#, ""),
        entry(&b, r#"["storyteller"]"#, ""),
        entry(&c, r#"["iris"]"#, ""),
    ]
    .concat();
    let fleet = Fleet::start(&keys, &[]).await;
    let infer = fleet.url("/v2/models/iris/infer");
    let completions = fleet.url("/v1/completions");
    let one = iris_rows(1);
    let prompt = json!({"model": "storyteller", "prompt": "And God said", "max_tokens": 3});

    // Health, readiness and metrics need no key.
    for path in [
        "/v2/health/live",
        "/healthz",
        "/readyz",
        "/v2/health/ready",
        "/metrics",
    ] {
        let reply = curl(&fleet.url(path), &[], None, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    // No key, an unknown key, a key that is no bearer token: 401, in each API's shape.
    let wrong = "Authorization: Bearer sk-wrong".to_string();
    let basic = "Authorization: Basic dXNlcjpwYXNz".to_string();
    for headers in [vec![], vec![wrong.clone()], vec![basic]] {
        let reply = curl(&infer, &headers, Some(&one), &[]).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(reply.json()["error"].is_string(), "{}", reply.text());
        let reply = curl(&completions, &headers, Some(&prompt), &[]).await;
        assert_eq!(reply.status, 401);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "invalid_api_key", "{error}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].is_string());
    }
    let missing = curl(&fleet.url("/v2"), &[], None, &[]).await;
    assert_eq!(missing.status, 401, "server metadata is guarded too");
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("missing API key"));
    // The key as Bearer (any case of the scheme) or x-api-key.
    for header in [
        a.bearer(),
        format!("authorization: bearer {}", a.secret),
        format!("x-api-key: {}", a.secret),
    ] {
        let reply = curl(&infer, std::slice::from_ref(&header), Some(&one), &[]).await;
        assert_eq!(reply.status, 200, "{header}: {}", reply.text());
    }
    // A model the key may not use: 403 in each API's shape, for every route that names one.
    let forbidden = [
        ("GET", "/v2/models/iris"),
        ("GET", "/v2/models/iris/ready"),
        ("GET", "/v2/models/iris/versions/1/ready"),
        ("POST", "/v2/models/iris/infer"),
    ];
    for (method, path) in forbidden {
        let body = (method == "POST").then_some(&one);
        let reply = curl(&fleet.url(path), &[b.bearer()], body, &[]).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
        let message = reply.json()["error"].as_str().unwrap().to_string();
        assert!(
            message.contains("\"team-b\" may not use model \"iris\""),
            "{message}"
        );
    }
    let generate = json!({"text_input": "And", "parameters": {"max_tokens": 2}});
    let reply = curl(
        &fleet.url("/v2/models/storyteller/generate"),
        &[c.bearer()],
        Some(&generate),
        &[],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = curl(&completions, &[c.bearer()], Some(&prompt), &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "permission_denied");
    let reply = curl(
        &fleet.url("/v1/models/storyteller"),
        &[c.bearer()],
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 403);
    // /v1/models lists the key's models only.
    let listed = |reply: CurlReply| -> Vec<String> {
        let list = reply.json();
        let data = list["data"].as_array().unwrap().clone();
        data.iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let models = fleet.url("/v1/models");
    assert_eq!(
        listed(curl(&models, &[b.bearer()], None, &[]).await),
        ["storyteller"]
    );
    assert!(listed(curl(&models, &[c.bearer()], None, &[]).await).is_empty());
    // Allowed: answered, and the worker counts each job under the key's name.
    let reply = curl(&completions, &[b.bearer()], Some(&prompt), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let used = reply.json()["usage"].clone();
    let three = iris_rows(3);
    let reply = curl(&infer, &[c.bearer()], Some(&three), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    fleet
        .worker
        .wait_for_metric(r#"infermq_tenant_rows_total{model="iris",tenant="team-c"} 3"#)
        .await;
    fleet
        .worker
        .wait_for_metric(r#"infermq_tenant_rows_total{model="iris",tenant="team-a"} 3"#)
        .await;
    let completion = format!(
        r#"infermq_tenant_tokens_total{{kind="completion",model="storyteller",tenant="team-b"}} {}"#,
        used["completion_tokens"]
    );
    fleet.worker.wait_for_metric(&completion).await;
    let prompt_tokens = format!(
        r#"infermq_tenant_tokens_total{{kind="prompt",model="storyteller",tenant="team-b"}} {}"#,
        used["prompt_tokens"]
    );
    fleet.worker.wait_for_metric(&prompt_tokens).await;
    fleet
        .worker
        .wait_for_metric(r#"infermq_tenant_jobs_total{model="storyteller",tenant="team-b"} 1"#)
        .await;
    let text = fleet.worker.handles.metrics.render();
    assert!(
        text.contains(r#"infermq_tenant_compute_seconds_total{model="iris",tenant="team-c"}"#),
        "{text}"
    );
    // The gateway counts refusals by reason, requests by tenant.
    let metrics = fleet.gw.gateway.render_metrics();
    for line in [
        r#"infermq_gateway_auth_failures_total{reason="missing"} 5"#,
        r#"infermq_gateway_auth_failures_total{reason="unknown"} 2"#,
        r#"infermq_gateway_tenant_requests_total{endpoint="infer",status="403",tenant="team-b"} 1"#,
        r#"infermq_gateway_tenant_requests_total{endpoint="infer",status="401",tenant="-"} 3"#,
        "infermq_gateway_api_keys 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_under_bursts_and_answer_429_with_retry_after() {
    let requests = Key::new("five-a-second");
    let tokens = Key::new("ten-tokens");
    let keys = [
        entry(&requests, r#"["*"]"#, "requests_per_second = 5"),
        entry(&tokens, r#"["*"]"#, "tokens_per_minute = 10"),
    ]
    .concat();
    let fleet = Fleet::start(&keys, &[]).await;
    let infer = fleet.url("/v2/models/iris/infer");
    let one = iris_rows(1);
    // 40 at once: the burst is one second's worth (5), plus what refills while it runs.
    let started = tokio::time::Instant::now();
    let statuses = burst(&infer, &requests.bearer(), &one, 40).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(statuses.len(), 40, "{statuses:?}");
    let admitted = statuses.iter().filter(|(s, _)| *s == 200).count();
    let most = 5 + (5.0 * seconds).ceil() as usize;
    assert!(
        (5..=most).contains(&admitted),
        "{admitted} admitted in {seconds:.2} s (at most {most}): {statuses:?}"
    );
    for (status, retry) in &statuses {
        assert!(
            *status == 200 || (*status == 429 && retry.is_some_and(|r| r >= 1)),
            "{statuses:?}"
        );
    }
    let reply = curl(&infer, &[requests.bearer()], Some(&one), &[]).await;
    if reply.status == 429 {
        assert_eq!(
            reply.json()["error"],
            "the API key \"five-a-second\" is over its requests_per_second"
        );
    }
    // Told to come back, it is admitted again.
    eventually(
        Duration::from_secs(5),
        "admitted after the bucket refills",
        || {
            let url = infer.clone();
            let key = requests.bearer();
            let body = one.clone();
            async move { curl(&url, &[key], Some(&body), &[]).await.status == 200 }
        },
    )
    .await;

    // Tokens: the first generation is admitted and charged what it used (prompt and
    // completion, more than the 10 a minute), so the next waits; predictions do not spend
    // tokens.
    let completions = fleet.url("/v1/completions");
    let prompt = json!({"model": "storyteller", "prompt": "And God said", "max_tokens": 8});
    let reply = curl(&completions, &[tokens.bearer()], Some(&prompt), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let used = reply.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used > 10, "{used}");
    let reply = curl(&completions, &[tokens.bearer()], Some(&prompt), &[]).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "tokens");
    assert_eq!(error["code"], "rate_limit_exceeded");
    // The bucket is at 10 - used and refills at 1/6 a second: a token in 6 x (used - 9) s,
    // less the time since the charge.
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    let full = 6 * (used - 9);
    assert!(
        (full - 2..=full).contains(&retry),
        "{retry} s for {used} tokens"
    );
    let generate = json!({"text_input": "And", "parameters": {"max_tokens": 2}});
    let reply = curl(
        &fleet.url("/v2/models/storyteller/generate_stream"),
        &[tokens.bearer()],
        Some(&generate),
        &[],
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(
        reply.json()["error"],
        "the API key \"ten-tokens\" is over its tokens_per_minute"
    );
    let reply = curl(&infer, &[tokens.bearer()], Some(&one), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let metrics = fleet.gw.gateway.render_metrics();
    assert!(
        metrics.contains(
            r#"infermq_gateway_rate_limited_total{limit="tokens",tenant="ten-tokens"} 2"#
        ),
        "{metrics}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_reloaded_without_a_restart_and_a_bad_file_keeps_them() {
    let a = Key::new("team-a");
    let b = Key::new("team-b");
    let fleet = Fleet::start(&entry(&a, r#"["iris"]"#, ""), &[]).await;
    let infer = fleet.url("/v2/models/iris/infer");
    let one = iris_rows(1);
    let status = |key: Key| {
        let url = infer.clone();
        let body = one.clone();
        async move { curl(&url, &[key.bearer()], Some(&body), &[]).await.status }
    };
    assert_eq!(status(a.clone()).await, 200);
    assert_eq!(status(b.clone()).await, 401);
    // A key added: served once the file is seen to change.
    let both = [entry(&a, r#"["iris"]"#, ""), entry(&b, r#"["iris"]"#, "")].concat();
    write_file(&fleet.keys_file(), &both);
    eventually(Duration::from_secs(10), "team-b's key is accepted", || {
        let b = b.clone();
        let status = &status;
        async move { status(b).await == 200 }
    })
    .await;
    // A broken file is refused, named by its line; the keys in use stay.
    write_file(&fleet.keys_file(), &format!("{both}[[key]]\nname = 3\n"));
    eventually(Duration::from_secs(10), "the bad file is refused", || {
        let metrics = fleet.gw.gateway.render_metrics();
        async move {
            metrics.contains(r#"infermq_gateway_reloads_total{file="api_keys",result="error"} 1"#)
        }
    })
    .await;
    assert_eq!(status(a.clone()).await, 200);
    assert_eq!(status(b.clone()).await, 200);
    // A key removed, another's models changed.
    write_file(&fleet.keys_file(), &entry(&b, r#"["storyteller"]"#, ""));
    eventually(Duration::from_secs(10), "team-a's key is refused", || {
        let a = a.clone();
        let status = &status;
        async move { status(a).await == 401 }
    })
    .await;
    assert_eq!(status(b.clone()).await, 403);
    let metrics = fleet.gw.gateway.render_metrics();
    assert!(metrics.contains("infermq_gateway_api_keys 1"), "{metrics}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_log_adds_up_to_the_answers() {
    let a = Key::new("team-a");
    let b = Key::new("team-b");
    let keys = [
        entry(&a, r#"["*"]"#, ""),
        entry(&b, r#"["storyteller"]"#, ""),
    ]
    .concat();
    let fleet = Fleet::start(&keys, &[]).await;
    let infer = fleet.url("/v2/models/iris/infer");
    let mut requests = 0;
    // Inference: each answer's rows.
    let mut rows = 0;
    for n in [1, 2, 3, 1, 4] {
        let reply = curl(&infer, &[a.bearer()], Some(&iris_rows(n)), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        rows += reply.json()["outputs"][0]["shape"][0].as_u64().unwrap();
        requests += 1;
    }
    assert_eq!(rows, 11);
    // Generation, whole and streamed, through both APIs: each answer's usage.
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    let mut add = |usage: &Value| {
        prompt_tokens += usage["prompt_tokens"].as_u64().unwrap();
        completion_tokens += usage["completion_tokens"].as_u64().unwrap();
    };
    let completion = json!({"model": "storyteller", "prompt": "And God said", "max_tokens": 5});
    let reply = curl(
        &fleet.url("/v1/completions"),
        &[b.bearer()],
        Some(&completion),
        &[],
    )
    .await;
    add(&reply.json()["usage"]);
    let chat = json!({"model": "storyteller", "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Who made the light?"}]});
    let reply = curl(
        &fleet.url("/v1/chat/completions"),
        &[b.bearer()],
        Some(&chat),
        &[],
    )
    .await;
    let events = json_events(&reply);
    add(&events.last().unwrap()["usage"]);
    let job = json!({"text_input": "In the beginning", "parameters": {"max_tokens": 6}});
    let stream = fleet.url("/v2/models/storyteller/generate_stream");
    let reply = curl(&stream, &[b.bearer()], Some(&job), &[]).await;
    add(&json_events(&reply).last().unwrap()["usage"]);
    let reply = curl(
        &fleet.url("/v2/models/storyteller/generate"),
        &[b.bearer()],
        Some(&job),
        &[],
    )
    .await;
    add(&reply.json()["usage"]);
    requests += 4;
    assert!(completion_tokens >= 15, "{completion_tokens}");
    // Refused: unknown key (401), a model not allowed (403).
    let wrong = "Authorization: Bearer sk-nope".to_string();
    assert_eq!(
        curl(&infer, &[wrong], Some(&iris_rows(1)), &[])
            .await
            .status,
        401
    );
    assert_eq!(
        curl(&infer, &[b.bearer()], Some(&iris_rows(1)), &[])
            .await
            .status,
        403
    );
    requests += 2;
    let gateway_metrics = fleet.gw.gateway.render_metrics();
    let usage_file = fleet.usage_file();
    let _dir = fleet.stop().await;

    let lines = usage_lines(&usage_file);
    assert_eq!(lines.len(), requests, "{lines:#?}");
    let sum = |key: &str, field: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l["key"] == key)
            .map(|l| l[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("team-a", "rows"), rows);
    assert_eq!(sum("team-b", "prompt_tokens"), prompt_tokens);
    assert_eq!(sum("team-b", "completion_tokens"), completion_tokens);
    let statuses: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_string(),
                l["endpoint"].as_str().unwrap().to_string(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("-", "infer", 401),
        ("team-b", "infer", 403),
        ("team-b", "chat_completions", 200),
        ("team-b", "generate_stream", 200),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string(), expected.2);
        assert!(statuses.contains(&expected), "{expected:?} in {statuses:?}");
    }
    for line in &lines {
        let fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "completion_tokens",
                "duration_ms",
                "endpoint",
                "key",
                "model",
                "prompt_tokens",
                "rows",
                "status",
                "time"
            ]
        );
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
    assert!(lines.iter().all(|l| l["key"] != "sk-nope"));
    // The same totals as counters.
    for line in [
        format!(r#"infermq_gateway_tenant_rows_total{{model="iris",tenant="team-a"}} {rows}"#),
        format!(
            r#"infermq_gateway_tenant_tokens_total{{kind="prompt",model="storyteller",tenant="team-b"}} {prompt_tokens}"#
        ),
        format!(
            r#"infermq_gateway_tenant_tokens_total{{kind="completion",model="storyteller",tenant="team-b"}} {completion_tokens}"#
        ),
    ] {
        assert!(
            gateway_metrics.contains(&line),
            "{line} in\n{gateway_metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_cost_only_themselves() {
    let a = Key::new("team-a");
    let fleet = Fleet::start(
        &entry(&a, r#"["*"]"#, ""),
        &[("INFERMQ__GATEWAY__AUTH_FAILURES_PER_MINUTE", "5")],
    )
    .await;
    let url = fleet.url("/v2");
    // A 1 MB Authorization header (curl will not send one: written by hand): refused before
    // any handler, and the gateway goes on.
    let status = raw_get(
        fleet.gw.addr,
        "/v2",
        &format!("Bearer {}", "k".repeat(1 << 20)),
    )
    .await;
    assert_eq!(status, Some(431));
    assert_eq!(curl(&url, &[a.bearer()], None, &[]).await.status, 200);
    // A key in the query string is refused, even with a good key in the header.
    let reply = curl(
        &format!("{url}?api_key={}", a.secret),
        &[a.bearer()],
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("an API key in the URL is refused"));
    // A long key is refused unread, like any unknown key.
    let long = format!("x-api-key: {}", "k".repeat(4096));
    assert_eq!(curl(&url, &[long], None, &[]).await.status, 401);
    // Many bad keys from one address: after 5 failures (the long key is one) the address is
    // refused for a while, even with a good key, while another address is not.
    for i in 0..4 {
        let bad = format!("Authorization: Bearer sk-guess-{i}");
        assert_eq!(curl(&url, &[bad], None, &[]).await.status, 401, "guess {i}");
    }
    let reply = curl(
        &url,
        &["Authorization: Bearer sk-guess-5".into()],
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(curl(&url, &[a.bearer()], None, &[]).await.status, 429);
    let elsewhere = curl(&url, &[a.bearer()], None, &["--interface", "127.0.0.2"]).await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text());
    // A burst of 50 guesses from a third address: a few are checked, the rest refused unread.
    let guesses = burst_from(
        &url,
        "Authorization: Bearer sk-guess",
        None,
        50,
        &["--interface", "127.0.0.3"],
    )
    .await;
    let checked = guesses.iter().filter(|(s, _)| *s == 401).count();
    let refused = guesses
        .iter()
        .filter(|(s, r)| *s == 429 && r.is_some())
        .count();
    assert_eq!(checked + refused, 50, "{guesses:?}");
    assert!((5..=8).contains(&checked), "{checked} checked: {guesses:?}");
    // Nothing of any key is logged or counted as a label.
    let metrics = fleet.gw.gateway.render_metrics();
    assert!(!metrics.contains(&a.secret) && !metrics.contains("sk-guess"));
    for line in [
        r#"infermq_gateway_auth_failures_total{reason="query"} 1"#.to_string(),
        format!(
            r#"infermq_gateway_auth_failures_total{{reason="unknown"}} {}"#,
            5 + checked
        ),
        format!(
            r#"infermq_gateway_auth_failures_total{{reason="blocked"}} {}"#,
            2 + refused
        ),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let usage_file = fleet.usage_file();
    let _dir = fleet.stop().await;
    let log = std::fs::read_to_string(usage_file).unwrap();
    assert!(!log.contains(&a.secret) && !log.contains("sk-guess"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_allowed_users_is_reached_as_the_gateways_broker_user() {
    // The broker user of the gateway's URL (amqp://user:password@host…).
    let url = amqp_url();
    let user = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split([':', '@']).next())
        .unwrap()
        .to_string();
    let models = model_repository(&["iris"]);
    let iris = models.path().join("iris");
    copy_dir(&iris, &models.path().join("mixed"));
    let allow = |model: &str, users: &str| {
        let config = models.path().join(model).join("config.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("allowed_users = {users}\n"));
        std::fs::write(config, text).unwrap();
    };
    allow("iris", &format!("[\"{user}\"]"));
    allow("mixed", r#"["someone-else"]"#);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
    let gw = start_gateway(&prefix, &[]).await;
    // Alone and gathered (concurrent requests go as one job): every job carries user_id.
    let body = iris_rows(1);
    let url = format!("http://{}/v2/models/iris/infer", gw.addr);
    let statuses = burst_from(&url, "x-test: 1", Some(&body), 20, &[]).await;
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    let url = format!("http://{}/v2/models/mixed/infer", gw.addr);
    let reply = curl(&url, &[], Some(&body), &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with(&format!("user_id: \"{user}\" may not send jobs")),
        "{error}"
    );
    gw.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_with_a_key() {
    if let Err(why) = python_with("import openai", &["openai"]) {
        eprintln!("SKIPPED: the openai package cannot be installed with pip: {why}");
        return;
    }
    let a = Key::new("team-a");
    let iris_only = Key::new("iris-only");
    let tokens = Key::new("few-tokens");
    let keys = [
        entry(&a, r#"["storyteller", "iris"]"#, ""),
        entry(&iris_only, r#"["iris"]"#, ""),
        entry(&tokens, r#"["storyteller"]"#, "tokens_per_minute = 5"),
    ]
    .concat();
    let fleet = Fleet::start(&keys, &[]).await;
    let script = manifest_path("tests/gateway_auth/openai_keys.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &fleet.gw.addr.to_string()])
        .args(["--key", &a.secret])
        .args(["--iris-only-key", &iris_only.secret])
        .args(["--tokens-key", &tokens.secret])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_keys.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all openai key checks passed"));
    fleet.stop().await;
}

#[path = "gateway_auth/binary.rs"]
mod binary;
