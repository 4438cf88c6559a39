//! Every panel of the Grafana dashboards returns data from a real Prometheus scraping a loaded
//! worker and the broker.
//!
//! Starts Debian's `prometheus` with the repository's `deploy/prometheus/prometheus.yml` (the
//! worker's address and a 1 s interval substituted) and its recording and alert rules, enables
//! RabbitMQ's `rabbitmq_prometheus` plugin when port 15692 does not answer (idempotent; it adds
//! a listener and changes nothing for AMQP clients), runs one training job and a prediction load
//! through a worker, generation jobs on the bundled decoder, and a burst of concurrent requests
//! and a request to each generation route through a gateway (`dashboards/gateway.rs`), then
//! evaluates every target of every panel of `deploy/grafana/dashboards/*.json` through
//! `/api/v1/query`, with `$model` (the decoder's name in the generation panels, else `iris`),
//! `$instance`, `$__rate_interval` and `$__range` substituted, and fails naming each panel
//! without data.
//! Skips, saying so, only when the `prometheus` binary is not installed
//! (`scripts/ensure-test-tools.sh` installs it).

mod common;
#[path = "dashboards/gateway.rs"]
mod gateway;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fleet::{answer_all, steady_publisher, Answers, ChildWorker};
use common::prometheus::{ensure_rabbitmq_prometheus, on_path, Prometheus};
use common::*;
use infermq::client::{header_str, headers};
use infermq::protocol::EncodedBody;
use serde_json::Value;

const RATE_INTERVAL: &str = "1m";
const RANGE: &str = "10m";
const JOBS: usize = 600;

/// The repository's scrape config with this worker and this gateway as the only infermq
/// targets, a 1 s scrape and evaluation interval, and the rule files by absolute path.
fn config_for(worker: SocketAddr, gateway: SocketAddr) -> String {
    let source = std::fs::read_to_string(manifest_path("deploy/prometheus/prometheus.yml"))
        .expect("deploy/prometheus/prometheus.yml");
    let rules = manifest_path("deploy/prometheus");
    let mut config = source.clone();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_string(),
        ),
        (
            r#"targets: ["localhost:8080", "localhost:8081"]"#,
            format!(r#"targets: ["{worker}"]"#),
        ),
        (
            r#"targets: ["localhost:8000"]"#,
            format!(r#"targets: ["{gateway}"]"#),
        ),
        (
            "- alerts.yml",
            format!("- {}", rules.join("alerts.yml").display()),
        ),
        (
            "- recording.yml",
            format!("- {}", rules.join("recording.yml").display()),
        ),
    ] {
        assert!(
            config.contains(from),
            "prometheus.yml no longer has `{from}`"
        );
        config = config.replace(from, &to);
    }
    config
}

/// Every (panel title, refId, expr) of a dashboard, rows' nested panels included.
fn targets(panels: &[Value], out: &mut Vec<(String, String, String)>) {
    for panel in panels {
        if let Some(nested) = panel["panels"].as_array() {
            targets(nested, out);
        }
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        let list = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!list.is_empty(), "panel {title} has no query");
        for target in list {
            let expr = target["expr"].as_str().unwrap_or_default().to_string();
            assert!(!expr.is_empty(), "panel {title} has a target without expr");
            let ref_id = target["refId"].as_str().unwrap_or("?").to_string();
            out.push((title.clone(), ref_id, expr));
        }
    }
}

fn substitute(expr: &str, model: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", RANGE)
        .replace("$model", model)
        .replace("$instance", instance)
}

/// True when a result has at least one sample whose value is a number.
fn has_number(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| !v.is_nan())
    })
}

/// Runs one small training job of `model` through the worker and waits for its result.
async fn train(client: &mut infermq::client::Client, prefix: &str, model: &str) {
    let csv = manifest_path("models/iris/iris.csv");
    let job = serde_json::json!({
        "id": "dashboards", "model_name": model,
        "layers": [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": 3, "batch_size": 16, "seed": 7,
        "data": {"uri": format!("file://{}", csv.display()), "format": "csv", "label_column": "species"}
    });
    let body = EncodedBody {
        body: serde_json::to_vec(&job).expect("job JSON"),
        header_len: None,
        content_type: "application/json",
    };
    let properties = client.job_properties("train-dashboards", &body, headers(&[]));
    client
        .publish(&format!("{prefix}.train"), &body.body, properties)
        .await
        .expect("publish the training job");
    loop {
        let delivery = client
            .next_reply(Duration::from_secs(120))
            .await
            .expect("training answer");
        let data = String::from_utf8_lossy(&delivery.data);
        assert_eq!(header_str(&delivery, "x-error-code"), None, "{data}");
        if header_str(&delivery, "x-event").as_deref() == Some("result") {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let Some(binary) = on_path("prometheus") else {
        eprintln!(
            "SKIPPED every_dashboard_panel_returns_data_from_a_real_prometheus: no `prometheus` \
             binary on PATH (scripts/ensure-test-tools.sh installs Debian's prometheus package)"
        );
        return;
    };
    ensure_rabbitmq_prometheus().await;

    let prefix = random_prefix();
    let repo = model_repository(&["iris", "storyteller"]);
    // The training job reads models/iris/iris.csv: file:// data needs training.data_dir.
    let data_dir = manifest_path("models/iris").display().to_string();
    let env = [("INFERMQ__TRAINING__DATA_DIR", data_dir.as_str())];
    let mut worker = ChildWorker::spawn(&prefix, repo.path(), &env);
    worker.wait_ready(Duration::from_secs(60)).await;
    let instance = worker.addr.to_string();
    let gateway = common::gateway::TestGateway::start(&prefix, repo.path()).await;
    let prometheus = Prometheus::start(&binary, &config_for(worker.addr, gateway.addr));

    // Scraped at least once before any job, so that increase() sees every counter move.
    let scraped = format!(r#"up{{job="infermq", instance="{instance}"}} == 1"#);
    let within = Duration::from_secs(60);
    prometheus
        .wait_for(&scraped, within, |r| !r.is_empty())
        .await;
    let queue =
        format!(r#"rabbitmq_detailed_queue_consumers{{queue="{prefix}.predict.iris"}} > 0"#);
    prometheus.wait_for(&queue, within, |r| !r.is_empty()).await;

    let mut client = client().await;
    train(&mut client, &prefix, "iris").await;
    let load = Instant::now();
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    steady_publisher(
        client.channel().clone(),
        format!("{prefix}.predict.iris"),
        client.reply_queue().to_string(),
        0..JOBS,
        10,
        Duration::from_millis(20),
    );
    let mut answers = Answers::default();
    let queue_name = format!("{prefix}.predict.iris");
    answer_all(
        &mut client,
        &mut answers,
        JOBS,
        load,
        worker.addr,
        &connection,
        &queue_name,
    )
    .await;

    // Generation jobs on the toy decoder, 8 at once; its series were scraped at zero before,
    // so that rate() and increase() see them move.
    let generated = r#"rate(infermq_generation_tokens_total{model="storyteller"}[1m]) > 0"#;
    let gen_queue = format!("{prefix}.predict.storyteller");
    let mut ids = Vec::new();
    for i in 0..8 {
        let body =
            format!(r#"{{"text_input": "And God said {i}", "parameters": {{"max_tokens": 32}}}}"#);
        let body = EncodedBody {
            body: body.into_bytes(),
            header_len: None,
            content_type: "application/json",
        };
        let id = uuid::Uuid::new_v4().to_string();
        let properties = client.job_properties(&id, &body, headers(&[]));
        client
            .publish(&gen_queue, &body.body, properties)
            .await
            .expect("publish");
        ids.push(id);
    }
    for _ in &ids {
        let answer = client
            .next_reply(within)
            .await
            .expect("a generation answer");
        let error = header_str(&answer, "x-error-code");
        assert!(error.is_none(), "{}", String::from_utf8_lossy(&answer.data));
    }
    prometheus
        .wait_for(generated, within, |r| !r.is_empty())
        .await;

    // The gateway's series scraped before its burst, so that rate() sees them move.
    gateway.warm_up().await;
    let jobs = r#"infermq_gateway_requests_per_message_count{model="iris"} > 0"#;
    prometheus.wait_for(jobs, within, |r| !r.is_empty()).await;
    gateway.burst(64).await;
    for moved in [
        r#"rate(infermq_gateway_gathered_requests_total{model="iris"}[1m])"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(infermq_gateway_requests_per_message_bucket[1m])))"#,
    ] {
        prometheus.wait_for(moved, within, has_number).await;
    }
    // Each generation route once, scraped, then once more, so that rate() sees its series move.
    gateway.generations("storyteller").await;
    let answered =
        r#"infermq_gateway_requests_total{endpoint="chat_completions", status="200"} > 0"#;
    prometheus
        .wait_for(answered, within, |r| !r.is_empty())
        .await;
    gateway.generations("storyteller").await;
    let moved = r#"histogram_quantile(0.99, sum by (endpoint, le) (rate(infermq_gateway_request_duration_seconds_bucket{endpoint=~"generate|generate_stream|completions|chat_completions"}[1m])))"#;
    let every_route = |r: &[Value]| {
        r.iter()
            .filter(|s| has_number(std::slice::from_ref(*s)))
            .count()
            == 4
    };
    prometheus.wait_for(moved, within, every_route).await;

    // Prometheus has scraped the final counts and evaluated the recording rules on them.
    let jobs = format!(r#"sum(infermq_jobs_total{{instance="{instance}", outcome="success"}})"#);
    let all_answered = |r: &[Value]| {
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            >= Some(JOBS as f64)
    };
    prometheus.wait_for(&jobs, within, all_answered).await;
    let trained =
        format!(r#"infermq_training_jobs_total{{instance="{instance}", outcome="success"}} > 0"#);
    prometheus
        .wait_for(&trained, within, |r| !r.is_empty())
        .await;
    let recorded = r#"model:infermq_end_to_end_seconds:p99_rate5m{model="iris"}"#;
    prometheus.wait_for(recorded, within, has_number).await;
    // Each rule group is evaluated on its own schedule: wait for the throughput group too.
    let recorded = r#"model_outcome:infermq_jobs:rate5m{model="iris"}"#;
    prometheus.wait_for(recorded, within, has_number).await;

    let mut failures = Vec::new();
    let mut evaluated = 0;
    for name in [
        "infermq-fleet.json",
        "infermq-model.json",
        "infermq-gateway.json",
    ] {
        let path = manifest_path("deploy/grafana/dashboards").join(name);
        let text = std::fs::read_to_string(&path).expect("dashboard file");
        let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
        check_variables(&prometheus, name, &dashboard, &instance).await;
        let mut list = Vec::new();
        targets(dashboard["panels"].as_array().expect("panels"), &mut list);
        for (panel, ref_id, expr) in list {
            let model = if expr.contains("infermq_generation_")
                || expr.contains("infermq_tenant_tokens_total")
            {
                "storyteller"
            } else {
                "iris"
            };
            let query = substitute(&expr, model, &instance);
            evaluated += 1;
            match prometheus.query(&query).await {
                Ok(result) if has_number(&result) => {}
                Ok(result) => failures.push(format!(
                    "{name} / {panel} / {ref_id}: no data ({} series, none a number) from {query}",
                    result.len()
                )),
                Err(e) => failures.push(format!("{name} / {panel} / {ref_id}: {e} from {query}")),
            }
        }
    }
    eprintln!(
        "evaluated {evaluated} panel queries, {} without data",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "panels without data:\n{}",
        failures.join("\n")
    );

    // build_info carries the version the loaded ONNX Runtime library reports.
    let build = format!(r#"infermq_build_info{{instance="{instance}"}}"#);
    let build = prometheus.query(&build).await.expect("build_info");
    let ort = build
        .first()
        .and_then(|s| s["metric"]["ort_version"].as_str());
    assert!(ort.is_some_and(|v| v.starts_with("1.")), "{build:?}");

    gateway.stop().await;
    worker.sigterm();
    worker.wait_exit(Duration::from_secs(30)).await;
    drop(prometheus);
    cleanup(&prefix).await;
}

/// Each `label_values(selector, label)` variable lists the test's model and worker.
async fn check_variables(prometheus: &Prometheus, name: &str, dashboard: &Value, instance: &str) {
    let list = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for variable in list.iter().filter(|v| v["type"] == "query") {
        let var = variable["name"].as_str().unwrap_or_default();
        let definition = variable["definition"].as_str().unwrap_or_default();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("{name}: variable {var} is not label_values(…): {definition}")
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), "iris", instance);
        let result = prometheus.query(&selector).await.expect("variable query");
        let values: Vec<&str> = result
            .iter()
            .filter_map(|s| s["metric"][label.trim()].as_str())
            .collect();
        let want = if var == "model" { "iris" } else { instance };
        assert!(
            values.contains(&want),
            "{name}: variable {var} ({definition}) lists {values:?}, not {want}"
        );
    }
}

/// `promtool` accepts the repository's scrape config and both rule files, and the recording
/// and alert rules pass their unit tests.
#[test]
fn promtool_accepts_the_config_and_the_rules_pass_their_tests() {
    let Some(promtool) = on_path("promtool") else {
        eprintln!(
            "SKIPPED promtool_accepts_the_config_and_the_rules_pass_their_tests: no `promtool` on PATH \
             (scripts/ensure-test-tools.sh installs Debian's prometheus package)"
        );
        return;
    };
    let dir = manifest_path("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "recording.yml", "alerts.yml"],
        vec!["test", "rules", "recording_test.yml", "alerts_test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
