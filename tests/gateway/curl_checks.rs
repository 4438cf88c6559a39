//! curl against the gateway: every status it answers, what it puts on the job, relaying,
//! backpressure, reconnection and graceful shutdown.

use super::*;

const IRIS_ROW: &str =
    r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_every_status_and_the_job_carries_deadline_version_and_trace() {
    let models = model_repository(&["iris"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(
        &prefix,
        models.path(),
        &[("INFERMQ__BROKER__MAX_MESSAGE_BYTES", "4096")],
    ))
    .await;
    let gw = start_gateway(
        &prefix,
        &[
            ("INFERMQ__GATEWAY__MAX_BODY_BYTES", "8192"),
            ("INFERMQ__GATEWAY__MAX_QUEUE_DEPTH", "2"),
            ("INFERMQ__GATEWAY__QUEUE_CHECK_MS", "50"),
        ],
    )
    .await;
    let base = format!("http://{}", gw.addr);
    let url = |path: &str| format!("{base}{path}");
    let post = ["-X", "POST", "-H", "Content-Type: application/json"];

    // Health and readiness.
    assert_eq!(curl(&url("/v2/health/live"), &[], None).await.status, 200);
    assert_eq!(curl(&url("/v2/health/ready"), &[], None).await.status, 200);
    let meta = curl(&url("/v2/models/iris"), &[], None).await;
    assert_eq!(meta.status, 200, "{}", meta.text());
    assert_eq!(
        meta.json()["inputs"][0]["shape"],
        serde_json::json!([-1, 4])
    );

    // A JSON inference through the real worker.
    let ok = curl(
        &url("/v2/models/iris/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["outputs"][0]["shape"], serde_json::json!([1, 3]));

    // The worker's own refusals, with its message.
    let bad = r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#;
    let answer = curl(&url("/v2/models/iris/infer"), &post, Some(bad.as_bytes())).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.json()["code"], "invalid_request");
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("inputs[0]"));
    let answer = curl(
        &url("/v2/models/iris/versions/9/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.json()["code"], "unknown_version");
    let padded = format!(
        "{}{}",
        &IRIS_ROW[..IRIS_ROW.len() - 1],
        format_args!(",\"pad\":\"{}\"}}", "x".repeat(5000))
    );
    let answer = curl(
        &url("/v2/models/iris/infer"),
        &post,
        Some(padded.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 413, "worker's too_large: {}", answer.text());
    assert_eq!(answer.json()["code"], "too_large");

    // The gateway's own refusals.
    let answer = curl(&url("/v2/models/iris/infer"), &post, Some(&[b' '; 9000])).await;
    assert_eq!(
        answer.status,
        413,
        "gateway.max_body_bytes: {}",
        answer.text()
    );
    let answer = curl(
        &url("/v2/models/ghost/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert!(answer.json()["error"].as_str().unwrap().contains("ghost"));
    assert_eq!(curl(&url("/v2/models/ghost"), &[], None).await.status, 404);
    assert_eq!(
        curl(&url("/v2/models/ghost/ready"), &[], None).await.status,
        404
    );
    let answer = curl(
        &url("/v2/models/.bad/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    let answer = curl(
        &url("/v2/models/iris/infer?timeout_ms=soon"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("timeout_ms"));
    let framing = ["-X", "POST", "-H", "Inference-Header-Content-Length: 99999"];
    let answer = curl(
        &url("/v2/models/iris/infer"),
        &framing,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("Inference-Header-Content-Length"));
    // A deadline too short for any answer.
    let answer = curl(
        &url("/v2/models/iris/infer?timeout_ms=1"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 504, "{}", answer.text());

    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");

    // The fake worker sees what the gateway publishes, and relays come back byte for byte.
    let mut seen = fake_worker(&connection, &format!("{prefix}.predict.fake")).await;
    let header = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    let len = format!("Inference-Header-Content-Length: {}", header.len());
    let trace = format!("traceparent: {TRACEPARENT}");
    let args = [
        "-X",
        "POST",
        "-H",
        &len,
        "-H",
        &trace,
        "-H",
        "tracestate: vendor=1",
        "-H",
        "Infermq-Timeout-Ms: 5000",
    ];
    let before = now_ms();
    let answer = curl(&url("/v2/models/fake/versions/3/infer"), &args, Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.body, body, "the body is relayed unchanged both ways");
    assert_eq!(
        answer.header("inference-header-content-length"),
        Some(header.len().to_string().as_str())
    );
    let (properties, received) = seen.recv().await.expect("the fake worker got the job");
    assert_eq!(received, body);
    let headers = properties.headers().as_ref();
    let text = |name| find(headers, name).and_then(as_string);
    assert_eq!(text("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(text("tracestate").as_deref(), Some("vendor=1"));
    assert_eq!(text("x-model-version").as_deref(), Some("3"));
    assert_eq!(
        text("inference-header-content-length"),
        Some(header.len().to_string())
    );
    let deadline = find(headers, "x-deadline-ms")
        .and_then(as_i128)
        .expect("x-deadline-ms");
    assert!(
        (before + 4000..=now_ms() + 5000).contains(&deadline),
        "deadline {deadline} vs now {before}"
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let reply_to = properties.reply_to().clone().unwrap_or_default();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to"),
        "{reply_to}"
    );

    // internal → 500; no answer → 504 at the request's timeout.
    let answer = curl(&url("/v2/models/fake/infer"), &post, Some(b"please-fail")).await;
    assert_eq!(answer.status, 500, "{}", answer.text());
    let answer = curl(
        &url("/v2/models/fake/infer?timeout_ms=300"),
        &post,
        Some(b"please-hang"),
    )
    .await;
    assert_eq!(answer.status, 504, "{}", answer.text());

    // A queue nobody consumes → 503; a queue deeper than max_queue_depth → 429.
    let channel = connection.create_channel().await.expect("channel");
    let idle = format!("{prefix}.predict.idle");
    channel
        .queue_declare(
            idle.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare idle");
    let answer = curl(
        &url("/v2/models/idle/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.header("retry-after").is_some());
    assert_eq!(
        curl(&url("/v2/models/idle/ready"), &[], None).await.status,
        503
    );
    let _ = channel
        .queue_delete(idle.as_str().into(), QueueDeleteOptions::default())
        .await;
    let deep = format!("{prefix}.predict.deep");
    let holder = connection.create_channel().await.expect("channel");
    let auto = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    holder
        .queue_declare(deep.as_str().into(), auto, FieldTable::default())
        .await
        .expect("declare deep");
    holder
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    // Holds one job unacked, so the others stay ready in the queue.
    let _holding = holder
        .basic_consume(
            deep.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume deep");
    for _ in 0..5 {
        channel
            .basic_publish(
                "".into(),
                deep.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        // Admitted ones (before the probe sees the depth) end at their short timeout.
        let answer = curl(
            &url("/v2/models/deep/infer?timeout_ms=200"),
            &post,
            Some(IRIS_ROW.as_bytes()),
        )
        .await;
        if answer.status == 429 || tokio::time::Instant::now() > until {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    };
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.header("retry-after"), Some("1"));

    // Metrics: by model, endpoint and status; pools.
    let metrics = curl(&url("/metrics"), &[], None).await.text();
    for needle in [
        r#"infermq_gateway_requests_total{endpoint="infer",model="iris",status="200"} 1"#,
        r#"infermq_gateway_requests_total{endpoint="infer",model="iris",status="400"} 1"#,
        r#"infermq_gateway_requests_total{endpoint="infer",model="",status="404"} 1"#,
        r#"infermq_gateway_requests_total{endpoint="infer",model="fake",status="500"} 1"#,
        r#"infermq_gateway_requests_total{endpoint="infer",model="deep",status="429"} 1"#,
        r#"infermq_gateway_request_duration_seconds_count{endpoint="infer",model="iris"}"#,
        r#"infermq_gateway_pool_size{pool="channels"}"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    promtool_check(&metrics).await;

    // Reconnection: every pooled connection closed under the gateway; the next request opens new ones.
    for _ in 0..gw.gateway.broker.connections.status().size {
        if let Ok(connection) = gw.gateway.broker.connections.get().await {
            let _ = connection.close(320, "test: connection lost".into()).await;
        }
    }
    let answer = curl(
        &url("/v2/models/iris/infer"),
        &post,
        Some(IRIS_ROW.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 200, "after reconnection: {}", answer.text());

    // Graceful shutdown: a request in flight is still answered.
    let pending = tokio::spawn({
        let url = url("/v2/models/fake/infer");
        async move { curl(&url, &["-X", "POST"], Some(b"please-delay")).await }
    });
    while let Some((_, body)) = seen.recv().await {
        if body == b"please-delay" {
            break;
        }
    }
    gw.shutdown.cancel();
    let answer = pending.await.expect("request task");
    assert_eq!(
        answer.status,
        200,
        "answered during shutdown: {}",
        answer.text()
    );
    assert_eq!(answer.body, b"please-delay");
    gw.task
        .await
        .expect("gateway task")
        .expect("gateway result");
    let _ = connection.close(200, "done".into()).await;
    worker.stop().await;
}

/// `promtool check metrics` (Prometheus' linter) finds nothing to say about the exposition.
async fn promtool_check(metrics: &str) {
    use tokio::io::AsyncWriteExt;
    let spawned = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        eprintln!("SKIPPED promtool check: promtool not installed (scripts/ensure-test-tools.sh installs it)");
        return;
    };
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(metrics.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
