//! Trace context across the queue, end to end: a producer's `traceparent` travels through the
//! real RabbitMQ, the worker's job spans are exported by the real OTLP/HTTP exporter to a
//! receiver inside the test (decoding the protobuf), and the result message carries the
//! worker's context back.

mod common;

use common::otlp::Receiver;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use infermq::telemetry::trace::{
    JobAttributes, JobStages, JobTrace, JobTracer, TraceContext, TraceParent,
};
use infermq::telemetry::Outcome;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// Exports what the tracer buffered; once this returns, the receiver has every span.
async fn flush(tracer: JobTracer) {
    tokio::task::spawn_blocking(move || tracer.shutdown())
        .await
        .unwrap()
        .expect("exporter shuts down");
}

async fn temporary_queue(channel: &Channel, name: &str) -> String {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .expect("declare");
    name.to_string()
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Sends `headers` through RabbitMQ on `queue` and returns them as the consumer sees them.
async fn through_broker(channel: &Channel, queue: &str, headers: FieldTable) -> FieldTable {
    let mut consumer = common::consume(channel, queue).await;
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message comes back within 10 s")
        .expect("consumer open")
        .expect("delivery");
    delivery.properties.headers().clone().unwrap_or_default()
}

/// One job through the worker's side: read the context from the delivered job, publish a
/// result with the worker's context, record the spans.
async fn serve_one_job(tracer: &JobTracer, job_headers: FieldTable) -> FieldTable {
    let connection = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let channel = connection.create_channel().await.unwrap();
    let prefix = common::random_prefix();
    let jobs = temporary_queue(&channel, &format!("{prefix}.jobs")).await;
    let results = temporary_queue(&channel, &format!("{prefix}.results")).await;

    let delivered = through_broker(&channel, &jobs, job_headers).await;
    let t0 = Instant::now();
    let trace: JobTrace = tracer.start_job(Some(&delivered), &jobs, t0);
    let mut result_headers = FieldTable::default();
    trace.inject(&mut result_headers);
    let answered = through_broker(&channel, &results, result_headers).await;

    let ms = Duration::from_millis;
    let stages = JobStages {
        batched: Some(t0 + ms(5)),
        compute_started: Some(t0 + ms(6)),
        compute_ended: Some(t0 + ms(16)),
        publish_started: Some(t0 + ms(17)),
    };
    let job = JobAttributes {
        model: "iris",
        version: Some(1),
        job_id: Some("req-42"),
        batch_rows: Some(3),
        outcome: Outcome::Success,
    };
    tracer.record_job(trace, &stages, t0 + ms(20), &job);
    let _ = connection.close(200, "done".into()).await;
    answered
}

fn producer_headers(flags: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        text(&format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-{flags}")),
    );
    headers.insert(
        ShortString::from("tracestate"),
        text("rojo=00f067aa0ba902b7"),
    );
    headers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} among {:?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_spans_continue_the_producers_trace() {
    let receiver = Receiver::start().await;
    let tracer = JobTracer::new(&receiver.endpoint(), "test-worker").expect("exporter");
    let answered = serve_one_job(&tracer, producer_headers("01")).await;
    flush(tracer).await;
    let spans = receiver.take();

    assert_eq!(spans.len(), 5, "receive + 4 stages: {:?}", names(&spans));
    for span in &spans {
        assert_eq!(
            hex(&span.trace_id),
            PRODUCER_TRACE,
            "{} in the producer's trace",
            span.name
        );
    }
    let root = spans
        .iter()
        .find(|s| s.name.starts_with("receive "))
        .expect("a receive span");
    assert_eq!(
        hex(&root.parent_span_id),
        PRODUCER_SPAN,
        "receive is the producer's child"
    );
    assert_eq!(root.kind, SpanKind::Consumer as i32);
    assert_eq!(root.trace_state, "rojo=00f067aa0ba902b7");
    assert_eq!(attribute(root, "infermq.model").as_deref(), Some("iris"));
    assert_eq!(
        attribute(root, "infermq.outcome").as_deref(),
        Some("success")
    );
    assert_eq!(
        attribute(root, "messaging.message.id").as_deref(),
        Some("req-42")
    );
    assert_eq!(attribute(root, "infermq.batch.rows").as_deref(), Some("3"));
    assert_eq!(
        root.end_time_unix_nano - root.start_time_unix_nano,
        20_000_000
    );

    for (name, start_ms, duration_ms) in [
        ("queue wait", 0, 5),
        ("batch", 5, 1),
        ("compute", 6, 10),
        ("publish", 17, 3),
    ] {
        let span = named(&spans, name);
        assert_eq!(
            span.parent_span_id, root.span_id,
            "{name} is a child of receive"
        );
        assert_eq!(
            span.start_time_unix_nano - root.start_time_unix_nano,
            start_ms * 1_000_000,
            "{name} starts {start_ms} ms after receipt"
        );
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            duration_ms * 1_000_000,
            "{name} lasts {duration_ms} ms"
        );
    }
    assert_eq!(named(&spans, "publish").kind, SpanKind::Producer as i32);

    // The result carries the worker's receive span as the parent of whatever comes next.
    let result = TraceContext::from_headers(Some(&answered)).expect("traceparent on the result");
    assert_eq!(hex(&result.parent.trace_id), PRODUCER_TRACE);
    assert_eq!(result.parent.span_id.as_slice(), root.span_id.as_slice());
    assert!(result.parent.sampled());
    assert_eq!(result.state, "rojo=00f067aa0ba902b7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_exports_nothing_and_still_propagates() {
    let receiver = Receiver::start().await;
    let tracer = JobTracer::new(&receiver.endpoint(), "test-worker").expect("exporter");
    let answered = serve_one_job(&tracer, producer_headers("00")).await;
    flush(tracer).await;
    assert_eq!(
        names(&receiver.take()),
        Vec::<&str>::new(),
        "the producer did not sample"
    );
    let result = TraceContext::from_headers(Some(&answered)).expect("traceparent on the result");
    assert_eq!(hex(&result.parent.trace_id), PRODUCER_TRACE);
    assert!(!result.parent.sampled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_context_starts_a_new_trace() {
    let receiver = Receiver::start().await;
    let tracer = JobTracer::new(&receiver.endpoint(), "test-worker").expect("exporter");
    let mut invalid = FieldTable::default();
    invalid.insert(ShortString::from("traceparent"), text("00-not-a-trace-01"));
    let answered = serve_one_job(&tracer, invalid).await;
    flush(tracer).await;
    let spans = receiver.take();
    assert_eq!(spans.len(), 5, "{:?}", names(&spans));
    let root = spans
        .iter()
        .find(|s| s.name.starts_with("receive "))
        .unwrap();
    assert!(root.parent_span_id.is_empty(), "a root span");
    let result = TraceContext::from_headers(Some(&answered)).expect("traceparent on the result");
    assert_eq!(result.parent.trace_id.as_slice(), root.trace_id.as_slice());
    assert_eq!(result.parent.span_id.as_slice(), root.span_id.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_results_carry_the_producers_context() {
    let tracer = JobTracer::new("", "test-worker").expect("off");
    assert!(!tracer.is_enabled());
    let answered = serve_one_job(&tracer, producer_headers("01")).await;
    let result = TraceContext::from_headers(Some(&answered)).expect("traceparent on the result");
    let producer = TraceParent::parse(&format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01")).unwrap();
    assert_eq!(result.parent, producer, "passed on unchanged");
    assert_eq!(result.state, "rojo=00f067aa0ba902b7");

    let answered = serve_one_job(&tracer, FieldTable::default()).await;
    assert_eq!(
        TraceContext::from_headers(Some(&answered)),
        None,
        "nothing to pass on"
    );
}
