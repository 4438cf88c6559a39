//! Gathering end to end: concurrent requests sent by one curl (`--parallel`) travel in fewer
//! jobs than requests, each is answered with its own id and rows (equal, within 1e-6, to what a
//! gateway that does not gather answers), and a bad request among them costs only itself.
//! Traced requests gather too, and the worker's span of their job links to each request.

use super::*;
use infermq::protocol::{decode_response, DecodedResponse};
use infermq::telemetry::trace::context::hex;

/// One request of the burst: its body, and its binary header length when binary.
struct Sent {
    id: String,
    body: Vec<u8>,
    header_len: Option<usize>,
    /// The request's `traceparent`, if it traces.
    traceparent: Option<String>,
}

fn iris_request(i: usize) -> Sent {
    let id = format!("g{i}");
    let rows = 1 + i % 3;
    let data: Vec<String> = (0..rows * 4)
        .map(|k| format!("{:.2}", 0.3 + ((i * 7 + k) % 50) as f32 / 7.0))
        .collect();
    if i % 4 == 3 {
        // Binary inputs, binary outputs.
        let header = format!(
            r#"{{"id":"{id}","inputs":[{{"name":"input","shape":[{rows},4],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"parameters":{{"binary_data_output":true}}}}"#,
            rows * 16
        );
        let mut body = header.clone().into_bytes();
        for v in &data {
            body.extend_from_slice(&v.parse::<f32>().unwrap_or(0.0).to_le_bytes());
        }
        return Sent {
            id,
            body,
            header_len: Some(header.len()),
            traceparent: None,
        };
    }
    let body = format!(
        r#"{{"id":"{id}","inputs":[{{"name":"input","shape":[{rows},4],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    );
    Sent {
        id,
        body: body.into_bytes(),
        header_len: None,
        traceparent: None,
    }
}

/// Sends every request at once from one curl process; answers in the same order.
async fn burst(url: &str, requests: &[Sent]) -> Vec<Answer> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-Z", "--parallel-immediate", "--parallel-max", "64"]);
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            command.arg("--next");
        }
        let file = dir.path().join(format!("{i}.req"));
        std::fs::write(&file, &r.body).expect("write body");
        command.args(["-X", "POST", "-H", "Expect:", "--max-time", "30"]);
        if let Some(len) = r.header_len {
            command.args(["-H", &format!("Inference-Header-Content-Length: {len}")]);
        }
        if let Some(tp) = &r.traceparent {
            command.args(["-H", &format!("traceparent: {tp}")]);
        }
        command
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg("-D")
            .arg(dir.path().join(format!("{i}.head")))
            .arg("-o")
            .arg(dir.path().join(format!("{i}.body")))
            .arg(url);
    }
    let out = command.output().await.expect("curl runs");
    assert!(out.status.success(), "curl: {:?}", out);
    (0..requests.len())
        .map(|i| {
            let head = std::fs::read_to_string(dir.path().join(format!("{i}.head")))
                .expect("headers written");
            let body = std::fs::read(dir.path().join(format!("{i}.body"))).unwrap_or_default();
            Answer::parse(&head, body)
        })
        .collect()
}

fn decoded(answer: &Answer) -> DecodedResponse {
    let len = answer
        .header("inference-header-content-length")
        .and_then(|l| l.parse().ok());
    decode_response(&answer.body, len).unwrap_or_else(|e| panic!("{e}: {}", answer.text()))
}

/// The value of the series `name` in the gateway's metrics (0 when absent).
fn metric(gw: &TestGateway, name: &str) -> f64 {
    gw.gateway
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn url(gw: &TestGateway) -> String {
    format!("http://{}/v2/models/iris/infer", gw.addr)
}

/// Requests go alone until the gateway has the model's metadata (asked on the first): sends
/// lone requests until one went alone for want of company rather than of metadata.
async fn learn_metadata(gw: &TestGateway) {
    let alone = r#"infermq_gateway_solo_requests_total{model="iris",reason="alone"}"#;
    for _ in 0..200 {
        let answer = burst(&url(gw), &[iris_request(0)]).await;
        assert_eq!(answer[0].status, 200, "{}", answer[0].text());
        if metric(gw, alone) > 0.0 {
            return;
        }
    }
    panic!("the gateway never learnt iris's metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_travel_together_and_a_bad_one_costs_only_itself() {
    let models = model_repository(&["iris"]);
    let prefix = random_prefix();
    let worker = TestWorker::start(settings(&prefix, models.path(), &[])).await;
    // A hold long enough for every transfer of one curl to arrive: the burst gathers.
    let gw = start_gateway(&prefix, &[("INFERMQ__GATEWAY__GATHER_DELAY_US", "300000")]).await;
    let plain = start_gateway(&prefix, &[("INFERMQ__GATEWAY__GATHER_WINDOW", "0")]).await;
    learn_metadata(&gw).await;

    let mut requests: Vec<Sent> = (1..=24).map(iris_request).collect();
    let bad = br#"{"id":"bad","inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    requests.insert(
        9,
        Sent {
            id: "bad".into(),
            body: bad.to_vec(),
            header_len: None,
            traceparent: None,
        },
    );
    let jobs = r#"infermq_gateway_requests_per_message_count{model="iris"}"#;
    let gathered = r#"infermq_gateway_gathered_requests_total{model="iris"}"#;
    let jobs_before = metric(&gw, jobs);
    let answers = burst(&url(&gw), &requests).await;
    let published = metric(&gw, jobs) - jobs_before;
    assert!(
        published < 24.0 && metric(&gw, gathered) >= 2.0,
        "24 good requests went in {published} jobs, {} gathered",
        metric(&gw, gathered)
    );

    let bad_answer = &answers[9];
    assert_eq!(bad_answer.status, 400, "{}", bad_answer.text());
    assert_eq!(
        bad_answer.json(),
        serde_json::json!({"id": "bad", "model_name": "iris", "code": "invalid_request",
            "error": "inputs[0] (\"input\").shape[1]: model expects 4, got 3"})
    );
    // What a gateway that does not gather answers, for each request.
    let references = burst(&url(&plain), &requests).await;
    assert_eq!(
        references[9].json(),
        bad_answer.json(),
        "the worker's own refusal"
    );
    for ((sent, answer), reference) in requests.iter().zip(&answers).zip(&references) {
        if sent.id == "bad" {
            continue;
        }
        assert_eq!(answer.status, 200, "{}: {}", sent.id, answer.text());
        assert_eq!(
            answer.header("content-type"),
            reference.header("content-type"),
            "{}",
            sent.id
        );
        let (got, want) = (decoded(answer), decoded(reference));
        assert_eq!(got.id.as_deref(), Some(sent.id.as_str()));
        assert_eq!(got.model_name, want.model_name);
        assert_eq!(got.outputs.len(), want.outputs.len());
        for (g, w) in got.outputs.iter().zip(&want.outputs) {
            assert_eq!((&g.name, &g.shape), (&w.name, &w.shape), "{}", sent.id);
            let (g, w) = (g.to_f32_vec().unwrap(), w.to_f32_vec().unwrap());
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() <= 1e-6, "{}: {a} vs {b}", sent.id);
            }
        }
    }
    for gw in [gw, plain] {
        gw.stop().await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_requests_gather_and_their_job_links_to_each() {
    let receiver = common::otlp::Receiver::start().await;
    let endpoint = receiver.endpoint();
    let models = model_repository(&["iris"]);
    let prefix = random_prefix();
    let extra = [("INFERMQ__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())];
    let worker = TestWorker::start(settings(&prefix, models.path(), &extra)).await;
    let gw = start_gateway(&prefix, &[("INFERMQ__GATEWAY__GATHER_DELAY_US", "300000")]).await;
    learn_metadata(&gw).await;

    // Twelve requests, each in a trace of its own (trace id ..0i, parent span ..0i).
    let requests: Vec<Sent> = (1..=12)
        .map(|i| Sent {
            traceparent: Some(format!("00-{:032x}-{:016x}-01", 0xabc000 + i, 0xdef000 + i)),
            ..iris_request(i)
        })
        .collect();
    let gathered = r#"infermq_gateway_gathered_requests_total{model="iris"}"#;
    let answers = burst(&url(&gw), &requests).await;
    for (sent, answer) in requests.iter().zip(&answers) {
        assert_eq!(answer.status, 200, "{}: {}", sent.id, answer.text());
        assert_eq!(decoded(answer).id.as_deref(), Some(sent.id.as_str()));
    }
    assert!(
        metric(&gw, gathered) >= 2.0,
        "traced requests did not gather"
    );

    gw.stop().await;
    // The worker exports what it buffered when it stops.
    worker.stop().await;
    let spans = receiver.take();
    let receives: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("receive "))
        .collect();
    // Each request is either the parent of a job's span (it went alone) or linked from one.
    for sent in &requests {
        let tp = sent.traceparent.as_deref().unwrap();
        let (trace, span) = (&tp[3..35], &tp[36..52]);
        let parent = receives
            .iter()
            .any(|r| hex(&r.trace_id) == trace && hex(&r.parent_span_id) == span);
        let linked = receives.iter().any(|r| {
            r.links
                .iter()
                .any(|l| hex(&l.trace_id) == trace && hex(&l.span_id) == span)
        });
        assert!(
            parent || linked,
            "{}: neither parent nor link of a job's span",
            sent.id
        );
    }
    let most = receives.iter().map(|r| r.links.len()).max().unwrap_or(0);
    assert!(most >= 2, "no job span links two requests: {most}");
}
