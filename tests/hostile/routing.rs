//! Poison routing and headers: `reply_to` naming the worker's own job queues, a forged
//! `x-delivery-count`, and header tables that are huge, many or deep.

use std::time::Duration;

use futures_util::StreamExt;
use infermq::client::header_str;
use infermq::protocol::decode_response;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::bodies::{
    add_model, bytes, failing_model, iris_job, long_header, long_text, many_headers,
};
use crate::common::fleet::{metric_sum, queue_counts, wait_metrics};
use crate::common::{amqp_url, consume, model_repository};
use crate::harness::{assert_error, broker, Target};
use crate::raw_amqp::{self, nested_table, RawProperties};

const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// (f) `reply_to` = the worker's own job queue (`predict.iris`, `train`): nothing is published
/// there; the job is dead-lettered with `invalid_request` naming `reply_to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_never_published_to_job_queues() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let dead_queue = format!("{}.dead", t.prefix);
    let mut dead = consume(t.client.channel(), &dead_queue).await;
    let results_queue = format!("{}.results", t.prefix);
    let mut normal_jobs = 0.0;
    for own in [t.queue("iris"), format!("{}.train", t.prefix)] {
        let case = format!("f reply_to={own}");
        let id = t.correlation("f");
        let p = t
            .properties(&id, FieldTable::default())
            .with_reply_to(own.as_str().into());
        let queue = t.queue("iris");
        t.client
            .publish(&queue, &bytes(&iris_job(&id, 1)), p)
            .await
            .expect("publish");
        let letter = tokio::time::timeout(ANSWER_WITHIN, dead.next())
            .await
            .unwrap_or_else(|_| panic!("{case}: not dead-lettered within {ANSWER_WITHIN:?}"))
            .expect("dead queue consumer")
            .expect("delivery");
        assert_eq!(
            header_str(&letter, "x-error-code").as_deref(),
            Some("invalid_request"),
            "{case}: dead letter headers {:?}",
            letter.properties.headers()
        );
        let reason = header_str(&letter, "x-error").unwrap_or_default();
        assert!(reason.contains("reply_to"), "{case}: x-error {reason:?}");
        t.assert_healthy(&case).await;
        normal_jobs += 1.0;
        // Had a result gone to `own`, the worker would read it back as a job: an extra iris
        // job (answered on `results`, having no reply_to) or a training job. Each job counts
        // once: the normal ones as successes, the hostile ones under some outcome or none.
        let text = wait_metrics(t.worker.addr, Duration::from_secs(10), |text| {
            metric_sum(
                text,
                "infermq_jobs_total",
                &[("model", "iris"), ("outcome", "success")],
            ) >= normal_jobs
        })
        .await;
        let iris_jobs = metric_sum(&text, "infermq_jobs_total", &[("model", "iris")]);
        assert!(
            iris_jobs <= 2.0 * normal_jobs,
            "{case}: {iris_jobs} iris jobs counted for {normal_jobs} normal and {normal_jobs} hostile ones"
        );
        assert_eq!(
            metric_sum(&text, "infermq_training_jobs_total", &[]),
            0.0,
            "{case}: a result was read back as a training job"
        );
        let connection = broker().await;
        assert_eq!(
            queue_counts(&connection, &results_queue).await.map(|c| c.0),
            Some(0),
            "{case}: something was answered on {results_queue}"
        );
        let _ = connection.close(200, "done".into()).await;
    }
    t.finish().await;
}

/// (g) A producer-set `x-delivery-count: 100` on a first delivery is ignored: a job failing
/// with `internal` is requeued and dead-lettered only on its last allowed delivery (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delivery_count_is_ignored() {
    let repo = model_repository(&["iris"]);
    add_model(repo.path(), "fails", &failing_model());
    // Its warm-up would fail like its jobs and refuse it: this test needs it served.
    std::fs::write(repo.path().join("fails/config.toml"), "warmup = false\n").expect("config");
    let mut t = Target::start(repo, &[]).await;
    let mut dead = consume(t.client.channel(), &format!("{}.dead", t.prefix)).await;
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-delivery-count"),
        AMQPValue::LongLongInt(100),
    );
    let id = t.correlation("g");
    let p = t.properties(&id, headers);
    let queue = t.queue("fails");
    t.client
        .publish(&queue, &bytes(&iris_job(&id, 1)), p)
        .await
        .expect("publish");
    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("g: dead-lettered in time")
        .expect("dead queue consumer")
        .expect("delivery");
    assert_eq!(
        header_str(&letter, "x-error-code").as_deref(),
        Some("internal")
    );
    let text = wait_metrics(t.worker.addr, Duration::from_secs(10), |text| {
        metric_sum(
            text,
            "infermq_jobs_total",
            &[("model", "fails"), ("outcome", "dead_lettered")],
        ) == 1.0
    })
    .await;
    let requeued = metric_sum(
        &text,
        "infermq_jobs_total",
        &[("model", "fails"), ("outcome", "requeued")],
    );
    assert_eq!(
        requeued, 4.0,
        "g: requeued (delivery_limit 5: four requeues, then the dead letter)"
    );
    t.assert_healthy("g").await;
    t.finish().await;
}

/// (h) Header tables: a table within the bound (64 KiB, nested at most 8 deep) is read for the
/// contract's headers only, the rest ignored; 10,000 headers, a 120 KB value, or a value nested
/// 1,000 tables deep exceed it and are refused naming the header table, and the worker stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_tables_are_ignored() {
    let mut t = Target::start(model_repository(&["iris"]), &[]).await;
    let queue = t.queue("iris");
    let id = t.correlation("h-500-headers");
    let p = t.properties(&id, many_headers(500));
    let answer = t
        .call(&queue, &bytes(&iris_job(&id, 1)), p, ANSWER_WITHIN)
        .await;
    let decoded = decode_response(&answer.data, None).expect("decodable");
    assert_eq!(decoded.error, None, "h-500-headers: answered with an error");
    t.assert_healthy("h-500-headers").await;
    let blob = long_text("BLOB-", 120 * 1024);
    let cases: [(&str, FieldTable); 2] = [
        ("h-10000-headers", many_headers(10_000)),
        ("h-120KB-value", long_header("x-hostile-blob", &blob)),
    ];
    for (case, headers) in cases {
        let id = t.correlation(case);
        let p = t.properties(&id, headers);
        let answer = t
            .call(&queue, &bytes(&iris_job(&id, 1)), p, ANSWER_WITHIN)
            .await;
        assert_error(case, &answer, "invalid_request", &["header table"]);
        t.assert_healthy(case).await;
    }
    // Nested 1,000 deep: published frame by frame (lapin cannot write it). A release worker
    // with the default 2 MiB thread stack died at 1,138 levels inside lapin's parser.
    let case = "h-nested-1000";
    let id = t.correlation(case);
    let (reply_to, queue_name) = (t.client.reply_queue().to_string(), queue.clone());
    let body = bytes(&iris_job(&id, 1));
    let correlation = id.clone();
    tokio::task::spawn_blocking(move || {
        let properties = RawProperties {
            correlation_id: &correlation,
            reply_to: &reply_to,
            headers: nested_table(1_000),
        };
        raw_amqp::publish(&amqp_url(), &queue_name, &body, &properties)
    })
    .await
    .expect("raw publish");
    let answer = t.reply(&id, ANSWER_WITHIN).await;
    assert_error(case, &answer, "invalid_request", &["header table", "deep"]);
    t.assert_healthy(case).await;
    // An unreadable contract header among many others is a bounded error naming it.
    let mut headers = many_headers(500);
    headers.insert(
        ShortString::from("x-deadline-ms"),
        AMQPValue::LongString(long_text("SOON-", 30 * 1024).as_str().into()),
    );
    let id = t.correlation("h-bad-deadline");
    let p = t.properties(&id, headers);
    let answer = t
        .call(&queue, &bytes(&iris_job(&id, 1)), p, ANSWER_WITHIN)
        .await;
    assert_error(
        "h-bad-deadline",
        &answer,
        "invalid_request",
        &["x-deadline-ms"],
    );
    t.assert_healthy("h-bad-deadline").await;
    t.finish().await;
}
