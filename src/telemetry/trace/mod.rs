//! Trace context across the queue: a job's spans in the worker continue the producer's trace.
//!
//! Beside the flow, like the metrics: the job lifecycle calls [`JobTracer::start_job`] when a
//! delivery arrives (reading `traceparent`/`tracestate` from its headers), [`JobTrace::inject`]
//! on the headers of each result or progress message it publishes, and
//! [`JobTracer::record_job`] once the answer is confirmed, with the instants of each stage.
//! The worker's spans for one job:
//!
//! ```text
//! producer span (from traceparent)
//! └── receive <queue>     consumer span: delivery received → answer confirmed
//!     ├── queue wait      received → taken into a batch by an instance
//!     ├── batch           taken → the batch starts running (concatenation)
//!     ├── compute         ONNX Runtime run of the batch
//!     └── publish         result published → confirmed by the broker
//! ```
//!
//! A job that carries several traced requests (a gathered job of the gateway) names their
//! contexts in `x-trace-links` ([`links`]); its `receive` span links to each of them.
//!
//! Spans are exported over OTLP/HTTP (protobuf) only when `telemetry.otlp_endpoint` is set;
//! otherwise nothing is recorded and results carry the producer's context unchanged. Sampling
//! follows the producer's sampled flag; a job without a context starts a new trace.

pub mod context;
mod export;
pub mod links;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lapin::types::FieldTable;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span as SdkSpan};

pub use context::{TraceContext, TraceParent, TRACEPARENT, TRACESTATE};
pub use export::{check_endpoint, TraceError};
pub use links::{inject_links, links_from_headers, MAX_LINKS, TRACE_LINKS};

use crate::telemetry::Outcome;

/// Longest job id written as a span attribute.
const MAX_ID_ATTRIBUTE: usize = 256;

/// Records the worker's spans of each job. Cheap to clone; off when no endpoint is set.
#[derive(Clone, Default)]
pub struct JobTracer {
    exporter: Option<Arc<Exporter>>,
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// When each stage of a job happened, as the job lifecycle saw it: one record, filled in as the
/// job goes (the batch that runs it, then its answer). A stage the job did not go through (an
/// invalid job is never computed) is `None` and has no span.
#[derive(Debug, Clone, Default)]
pub struct JobStages {
    /// An instance took the job into a batch.
    pub batched: Option<Instant>,
    /// The batch holding the job started running.
    pub compute_started: Option<Instant>,
    pub compute_ended: Option<Instant>,
    /// The result (or error result, or dead-letter copy) was published.
    pub publish_started: Option<Instant>,
}

/// What the spans say about the job (attributes of the `receive` span).
#[derive(Debug, Clone)]
pub struct JobAttributes<'a> {
    pub model: &'a str,
    pub version: Option<u64>,
    /// The job's `id` field or `correlation_id`.
    pub job_id: Option<&'a str>,
    /// Rows of the batch the job ran in.
    pub batch_rows: Option<usize>,
    pub outcome: Outcome,
}

/// One job's trace: the producer's context and the worker's `receive` span, open from the
/// delivery to [`JobTracer::record_job`]. Dropped without being recorded (a job requeued
/// before it was answered), its `receive` span ends then, without stage spans.
pub struct JobTrace {
    incoming: Option<TraceContext>,
    outgoing: Option<TraceContext>,
    root: Option<SdkSpan>,
    /// The delivery's arrival: the start of `receive` and `queue wait`.
    received: Instant,
    /// One reading of both clocks, so every stage converts to wall time the same way.
    anchor: (Instant, SystemTime),
}

impl JobTracer {
    /// A tracer that records nothing (results still carry the producer's context).
    pub fn disabled() -> JobTracer {
        JobTracer::default()
    }

    /// Exports to `otlp_endpoint` over OTLP/HTTP, or records nothing when it is empty.
    /// `service_instance` names this worker in the spans' resource (e.g. the host name).
    pub fn new(otlp_endpoint: &str, service_instance: &str) -> Result<JobTracer, TraceError> {
        if otlp_endpoint.is_empty() {
            return Ok(JobTracer::disabled());
        }
        let provider = export::provider(otlp_endpoint, service_instance)?;
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "infermq");
        Ok(JobTracer {
            exporter: Some(Arc::new(Exporter { provider, tracer })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.exporter.is_some()
    }

    /// Reads the producer's context from a delivery's headers and opens the job's `receive`
    /// span at `received`. Call it as the delivery arrives, before anything is published.
    pub fn start_job(
        &self,
        headers: Option<&FieldTable>,
        queue: &str,
        received: Instant,
    ) -> JobTrace {
        let links = match self.exporter {
            Some(_) => links_from_headers(headers),
            None => Vec::new(),
        };
        self.open(TraceContext::from_headers(headers), links, queue, received)
    }

    /// [`JobTracer::start_job`] with a context read elsewhere (an HTTP request's headers through
    /// [`TraceContext::from_values`]); `queue` names the span (`receive <queue>`).
    pub fn start(
        &self,
        incoming: Option<TraceContext>,
        queue: &str,
        received: Instant,
    ) -> JobTrace {
        self.open(incoming, Vec::new(), queue, received)
    }

    /// Opens the `receive` span, a child of `incoming` with a link to each of `links` (the
    /// requests a gathered job carries, from `x-trace-links`).
    fn open(
        &self,
        incoming: Option<TraceContext>,
        links: Vec<TraceContext>,
        queue: &str,
        received: Instant,
    ) -> JobTrace {
        let anchor = (Instant::now(), SystemTime::now());
        let Some(exporter) = &self.exporter else {
            return JobTrace {
                outgoing: incoming.clone(),
                incoming,
                root: None,
                received,
                anchor,
            };
        };
        let parent = match &incoming {
            Some(ctx) => Context::new().with_remote_span_context(remote(ctx)),
            None => Context::new(),
        };
        let links = links
            .iter()
            .map(|l| Link::with_context(remote(l)))
            .collect();
        let root = exporter
            .tracer
            .span_builder(format!("receive {}", bounded(queue)))
            .with_kind(SpanKind::Consumer)
            .with_start_time(wall(anchor, received))
            .with_attributes([
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", bounded(queue).to_string()),
            ])
            .with_links(links)
            .start_with_context(&exporter.tracer, &parent);
        let sc = root.span_context();
        let outgoing = TraceContext {
            parent: TraceParent {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                flags: sc.trace_flags().to_u8(),
            },
            state: incoming
                .as_ref()
                .map(|c| c.state.clone())
                .unwrap_or_default(),
        };
        JobTrace {
            incoming,
            outgoing: Some(outgoing),
            root: Some(root),
            received,
            anchor,
        }
    }

    /// Ends the job's `receive` span at `confirmed` (when the broker confirmed its answer) and
    /// records the stage spans under it. Nothing happens when export is off or the producer
    /// did not sample the trace.
    pub fn record_job(
        &self,
        trace: JobTrace,
        stages: &JobStages,
        confirmed: Instant,
        job: &JobAttributes<'_>,
    ) {
        let (Some(exporter), Some(mut root)) = (&self.exporter, trace.root) else {
            return;
        };
        if !root.is_recording() {
            return;
        }
        let at = |i: Instant| wall(trace.anchor, i);
        root.set_attribute(KeyValue::new(
            "infermq.model",
            bounded(job.model).to_string(),
        ));
        if let Some(version) = job.version {
            root.set_attribute(KeyValue::new("infermq.version", version as i64));
        }
        if let Some(id) = job.job_id {
            root.set_attribute(KeyValue::new(
                "messaging.message.id",
                bounded(id).to_string(),
            ));
        }
        if let Some(rows) = job.batch_rows {
            root.set_attribute(KeyValue::new("infermq.batch.rows", rows as i64));
        }
        root.set_attribute(KeyValue::new("infermq.outcome", job.outcome.as_str()));
        if job.outcome != Outcome::Success {
            root.set_status(Status::error(job.outcome.as_str()));
        }
        let received = trace.received;
        let cx = Context::new().with_span(root);
        let children = [
            ("queue wait", Some(received), stages.batched),
            ("batch", stages.batched, stages.compute_started),
            ("compute", stages.compute_started, stages.compute_ended),
            ("publish", stages.publish_started, Some(confirmed)),
        ];
        for (name, start, end) in children {
            let (Some(start), Some(end)) = (start, end) else {
                continue;
            };
            let mut span = exporter
                .tracer
                .span_builder(name)
                .with_kind(if name == "publish" {
                    SpanKind::Producer
                } else {
                    SpanKind::Internal
                })
                .with_start_time(at(start))
                .start_with_context(&exporter.tracer, &cx);
            span.end_with_timestamp(at(end.max(start)));
        }
        cx.span().end_with_timestamp(at(confirmed));
    }

    /// Exports what is buffered and stops the exporter; call once at shutdown. Blocks while
    /// the spans are sent: call it outside the async runtime (`spawn_blocking`).
    pub fn shutdown(&self) -> Result<(), TraceError> {
        match &self.exporter {
            Some(exporter) => exporter.provider.shutdown().map_err(TraceError::Shutdown),
            None => Ok(()),
        }
    }
}

impl JobTrace {
    /// The context the producer sent, if it was valid.
    pub fn incoming(&self) -> Option<&TraceContext> {
        self.incoming.as_ref()
    }

    /// The context written on results and progress messages: the worker's `receive` span when
    /// spans are recorded, the producer's context unchanged when not, none without either.
    pub fn outgoing(&self) -> Option<&TraceContext> {
        self.outgoing.as_ref()
    }

    /// Writes [`JobTrace::outgoing`] into a result's or progress message's headers.
    pub fn inject(&self, headers: &mut FieldTable) {
        if let Some(ctx) = &self.outgoing {
            ctx.inject(headers);
        }
    }
}

/// A context received from elsewhere, as OpenTelemetry's remote span context.
fn remote(ctx: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(ctx.parent.trace_id),
        SpanId::from_bytes(ctx.parent.span_id),
        TraceFlags::new(ctx.parent.flags & context::FLAG_SAMPLED),
        true,
        ctx.state.parse().unwrap_or_else(|_| TraceState::default()),
    )
}

/// `at` in wall-clock time, through one reading of both clocks.
fn wall((now, wall_now): (Instant, SystemTime), at: Instant) -> SystemTime {
    if at <= now {
        wall_now.checked_sub(now - at).unwrap_or(wall_now)
    } else {
        wall_now.checked_add(at - now).unwrap_or(wall_now)
    }
}

/// At most [`MAX_ID_ATTRIBUTE`] bytes of `s`, cut on a character boundary.
fn bounded(s: &str) -> &str {
    crate::protocol::text::prefix(s, MAX_ID_ATTRIBUTE)
}
