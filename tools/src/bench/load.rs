//! One load run against one job queue: publish pre-built jobs (window or fixed rate), collect
//! results on an exclusive reply queue, and account for every job.
//!
//! The reply consumer runs in its own task and stamps each result's arrival before decoding it,
//! so latency is publish → arrival even while the publishing loop is busy. The run ends when every
//! job is settled, or when nothing (publish or result) has happened for the timeout.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, Consumer};

use infermq::broker::PublishOutcome;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::bodies::BodyTemplate;
use super::stats::{BenchReport, Outcome, ResultKind, Tracker};
use super::wire::{decode_result, job_properties};

/// How jobs are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: exactly this many jobs unsettled at any time.
    Window(u64),
    /// Open loop: jobs per second on a schedule, whatever the answers do.
    Rate(f64),
}

impl Pace {
    pub fn describe(self) -> String {
        match self {
            Pace::Window(w) => format!("window={w}"),
            Pace::Rate(r) => format!("rate={r}/s"),
        }
    }
}

/// What one run needs besides the connection.
#[derive(Debug)]
pub struct LoadPlan<'a> {
    pub label: &'a str,
    pub queue: &'a str,
    pub jobs: u64,
    pub rows_per_job: u64,
    pub pace: Pace,
    pub timeout: Duration,
    pub bodies: &'a BodyTemplate,
}

/// Smallest schedule tick in rate mode; faster rates publish a catch-up burst per tick.
const MIN_TICK: Duration = Duration::from_millis(1);

type ConfirmFuture = BoxFuture<'static, (u64, lapin::Result<Confirmation>)>;

/// Runs the plan on `connection` (its own reply queue and channels) and reports.
pub async fn run_load(connection: &Connection, plan: &LoadPlan<'_>) -> anyhow::Result<BenchReport> {
    let replies = connection.create_channel().await?;
    let reply_queue = replies
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .as_str()
        .to_owned();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = replies
        .basic_consume(
            reply_queue.as_str().into(),
            "infermq-bench-replies".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let reply_task = tokio::spawn(reply_task(consumer, tx));

    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut run = Run {
        plan,
        publisher: &publisher,
        reply_queue: &reply_queue,
        tracker: Tracker::new(plan.jobs),
        confirms: FuturesUnordered::new(),
        next: 0,
        buf: Vec::new(),
    };
    let outcome = run.drive(rx).await;
    let ended = Instant::now();
    let Run {
        tracker, confirms, ..
    } = run;
    drop(confirms);

    if let Err(error) = replies
        .basic_cancel(
            "infermq-bench-replies".into(),
            BasicCancelOptions::default(),
        )
        .await
    {
        tracing::warn!(%error, "Reply consumer cancel failed");
    }
    for channel in [&replies, &publisher] {
        if channel.status().connected() {
            let _ = channel.close(200, "bench run done".into()).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), reply_task).await;
    outcome?;
    Ok(tracker.report(
        plan.label,
        plan.queue,
        &plan.pace.describe(),
        plan.rows_per_job,
        ended,
    ))
}

/// Forwards decoded results, stamped on arrival, until the consumer ends.
async fn reply_task(mut consumer: Consumer, tx: mpsc::UnboundedSender<Outcome>) {
    while let Some(next) = consumer.next().await {
        let at = Instant::now();
        match next {
            Ok(delivery) => {
                if tx
                    .send(decode_result(&delivery.properties, &delivery.data, at))
                    .is_err()
                {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Reply consumer failed");
                break;
            }
        }
    }
}

struct Run<'a, 'p> {
    plan: &'a LoadPlan<'p>,
    publisher: &'a Channel,
    reply_queue: &'a str,
    tracker: Tracker,
    confirms: FuturesUnordered<ConfirmFuture>,
    next: u64,
    buf: Vec<u8>,
}

impl Run<'_, '_> {
    /// The publishing/accounting loop. Each turn publishes, settles a result or confirm, or
    /// times out, so it ends by itself.
    async fn drive(&mut self, mut rx: mpsc::UnboundedReceiver<Outcome>) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        let mut last_progress = start;
        let tick = match self.plan.pace {
            Pace::Rate(rate) if rate > 0.0 => Duration::from_secs_f64(1.0 / rate).max(MIN_TICK),
            _ => Duration::from_secs(3600),
        };
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let rate_mode = matches!(self.plan.pace, Pace::Rate(_));
        self.fill_window().await?;
        while !self.tracker.is_complete() {
            tokio::select! {
                biased;
                got = rx.recv() => match got {
                    Some(outcome) => {
                        self.on_result(&outcome);
                        while let Ok(outcome) = rx.try_recv() {
                            self.on_result(&outcome);
                        }
                        last_progress = tokio::time::Instant::now();
                    }
                    None => {
                        tracing::warn!(queue = self.plan.queue, "Reply consumer ended before the run");
                        break;
                    }
                },
                Some((index, confirm)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.on_confirm(index, confirm.into())?;
                }
                _ = ticker.tick(), if rate_mode && self.next < self.plan.jobs => {
                    self.publish_due(start.elapsed()).await?;
                    last_progress = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(last_progress + self.plan.timeout) => {
                    tracing::warn!(
                        queue = self.plan.queue,
                        outstanding = self.tracker.outstanding(),
                        timeout_s = self.plan.timeout.as_secs_f64(),
                        "Gave up waiting for results"
                    );
                    break;
                }
            }
            self.fill_window().await?;
        }
        Ok(())
    }

    fn on_result(&mut self, outcome: &Outcome) {
        if self.tracker.on_result(outcome) == ResultKind::Unexpected {
            tracing::debug!(index = ?outcome.index, "Result for no published job");
        }
    }

    /// Counts a job the broker did not take; a lost channel ends the run.
    fn on_confirm(&mut self, index: u64, outcome: PublishOutcome) -> lapin::Result<()> {
        let code = match outcome {
            PublishOutcome::Nacked(_) => "publish_nacked",
            PublishOutcome::Returned(_) => "publish_returned",
            PublishOutcome::Confirmed => return Ok(()),
            PublishOutcome::ChannelLost(error) => return Err(error),
        };
        tracing::warn!(index, code, queue = self.plan.queue, "Broker refused a job");
        self.tracker.on_publish_failed(index, code);
        Ok(())
    }

    /// Window mode: publish until `window` jobs are unsettled (or all are out).
    async fn fill_window(&mut self) -> anyhow::Result<()> {
        if let Pace::Window(window) = self.plan.pace {
            while self.next < self.plan.jobs && self.tracker.outstanding() < window.max(1) {
                self.publish_next().await?;
            }
        }
        Ok(())
    }

    /// Rate mode: publish every job whose scheduled time (`index / rate`) has come.
    async fn publish_due(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        if let Pace::Rate(rate) = self.plan.pace {
            let due = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
            while self.next < due.min(self.plan.jobs) {
                self.publish_next().await?;
            }
        }
        Ok(())
    }

    async fn publish_next(&mut self) -> anyhow::Result<()> {
        let index = self.next;
        let header_len = self.plan.bodies.write(index, &mut self.buf);
        let props = job_properties(index, self.reply_queue, header_len);
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        self.tracker.on_publish(index, Instant::now());
        let confirm = self
            .publisher
            .basic_publish("".into(), self.plan.queue.into(), options, &self.buf, props)
            .await?;
        self.confirms
            .push(Box::pin(async move { (index, confirm.await) }));
        self.next += 1;
        Ok(())
    }
}
