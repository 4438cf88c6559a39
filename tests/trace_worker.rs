//! Trace context through a whole worker: a producer's `traceparent` on an iris job comes back
//! on the result, continued by the worker, and the worker's spans for the job (receive, queue
//! wait, batch, compute, publish) reach an OTLP/HTTP receiver inside the test as children of
//! the producer's span.

mod common;

use std::time::Duration;

use common::otlp::Receiver;
use common::*;
use infermq::client::{header_str, headers};
use infermq::protocol::{decode_response, encode_request, InferenceRequest, Tensor};
use lapin::types::{AMQPValue, LongString, ShortString};

const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_spans_in_the_worker_continue_the_producers_trace() {
    let receiver = Receiver::start().await;
    let repo = model_repository(&["iris"]);
    let endpoint = receiver.endpoint();
    let extra = [("INFERMQ__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())];
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &extra)).await;
    let mut client = client().await;

    let job = InferenceRequest {
        id: Some("traced-1".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    let body = encode_request(&job, false);
    let mut table = headers(&[]);
    table.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(LongString::from(format!(
            "00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"
        ))),
    );
    client
        .publish(
            &worker.queue("iris"),
            &body.body,
            client.job_properties("traced-1", &body, table),
        )
        .await
        .unwrap();
    let answer = client.next_reply(Duration::from_secs(30)).await.unwrap();
    assert_eq!(decode_response(&answer.data, None).unwrap().error, None);
    let traceparent = header_str(&answer, "traceparent").expect("the result carries traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields[1], PRODUCER_TRACE, "{traceparent}");
    assert_ne!(
        fields[2], PRODUCER_SPAN,
        "the parent is the worker's span: {traceparent}"
    );

    // The worker exports what it buffered when it stops.
    client.close().await;
    worker.stop().await;
    let spans = receiver.take();
    let receive = spans
        .iter()
        .find(|s| s.name.starts_with("receive "))
        .unwrap_or_else(|| {
            panic!(
                "no receive span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&receive.trace_id), PRODUCER_TRACE);
    assert_eq!(hex(&receive.parent_span_id), PRODUCER_SPAN);
    assert_eq!(
        hex(&receive.span_id),
        fields[2],
        "the result names the receive span"
    );
    for stage in ["queue wait", "batch", "compute", "publish"] {
        let span = spans
            .iter()
            .find(|s| s.name == stage)
            .unwrap_or_else(|| panic!("no {stage:?} span"));
        assert_eq!(hex(&span.trace_id), PRODUCER_TRACE, "{stage}");
        assert_eq!(span.parent_span_id, receive.span_id, "{stage}");
        assert!(
            span.start_time_unix_nano <= span.end_time_unix_nano,
            "{stage}"
        );
    }
}
