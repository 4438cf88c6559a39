//! The broker side of the worker: one connection at a time, with its publisher and consumers,
//! reconnecting after failures until shutdown.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::Connection;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{events_task, ConsumerSetup};
use super::supervisor::Supervisor;
use super::WorkerStatus;
use crate::broker::connection::{connect_with_retry, Backoff};
use crate::broker::publisher::{publisher_task, PublisherContext};
use crate::broker::{Command, Topology};
use crate::config::Settings;
use crate::jobs::inflight::Answerer;
use crate::jobs::predict::PredictContext;
use crate::jobs::registry::ModelRegistry;
use crate::telemetry::Metrics;

/// What the broker side shares.
pub struct BrokerContext {
    pub settings: Settings,
    pub topology: Topology,
    pub registry: Arc<ModelRegistry>,
    pub answerer: Arc<Answerer>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<WorkerStatus>,
    pub reload: Arc<Notify>,
    /// Present when `training.enabled`.
    pub training: Option<Arc<crate::jobs::train::TrainContext>>,
}

enum SessionEnd {
    /// Shutdown asked and done.
    Stopped,
    /// The connection or a channel failed.
    Failed(String),
}

/// Connects, serves, reconnects on failure; returns after a graceful stop.
pub async fn broker_task(
    ctx: Arc<BrokerContext>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    batch_tasks: TaskTracker,
) {
    let broker = &ctx.settings.broker;
    let mut backoff = Backoff::new(
        Duration::from_millis(broker.reconnect_initial_ms),
        Duration::from_millis(broker.reconnect_max_ms),
    );
    let mut generation = 0u64;
    let mut addresses = crate::broker::BrokerAddresses::new(&broker.url);
    ctx.metrics.broker_node.configure(&addresses.nodes());
    loop {
        let name = format!("infermq-worker-{}", std::process::id());
        let Some(connection) =
            connect_with_retry(&mut addresses, &broker.tls, &name, &mut backoff, &shutdown).await
        else {
            // Shutdown while disconnected: nothing can be acked; the broker redelivers.
            return;
        };
        generation += 1;
        ctx.metrics
            .broker_node
            .set(addresses.current_node().as_deref());
        let connection = Arc::new(connection);
        let (end, returned) = session(
            &ctx,
            connection.clone(),
            generation,
            commands,
            &shutdown,
            &batch_tasks,
        )
        .await;
        commands = returned;
        ctx.status.connected.store(false, Ordering::Release);
        ctx.metrics.set_broker_connected(false);
        let _ = connection.close(200, "infermq worker closing".into()).await;
        match end {
            SessionEnd::Stopped => return,
            SessionEnd::Failed(reason) => {
                ctx.metrics.broker_reconnect();
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "Broker session lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn session(
    ctx: &Arc<BrokerContext>,
    connection: Arc<Connection>,
    generation: u64,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
    batch_tasks: &TaskTracker,
) -> (SessionEnd, mpsc::UnboundedReceiver<Command>) {
    let setup = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        ctx.topology.declare_shared(&channel).await?;
        Ok::<_, lapin::Error>(channel)
    }
    .await;
    let publish_channel = match setup {
        Ok(channel) => channel,
        Err(error) => return (SessionEnd::Failed(format!("setup: {error}")), commands),
    };
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let session_stop = CancellationToken::new();
    let publisher_stop = CancellationToken::new();
    let returned_metrics = ctx.metrics.clone();
    let publisher_context = PublisherContext {
        dead_letter_exchange: ctx.topology.dead_letter_exchange(),
        on_returned: Arc::new(move |model: &str| returned_metrics.result_returned(model)),
    };
    let publisher = {
        let stop = publisher_stop.clone();
        tokio::spawn(async move {
            let result = publisher_task(
                publish_channel,
                generation,
                &mut commands,
                publisher_context,
                stop,
            )
            .await;
            (result, commands)
        })
    };
    let training = ctx.training.clone().map(|training| {
        tokio::spawn(super::train::train_consumer_task(
            connection.clone(),
            training,
            generation,
            session_stop.clone(),
            failed_tx.clone(),
        ))
    });
    let events = tokio::spawn(events_task(
        connection.clone(),
        ctx.topology.clone(),
        ctx.reload.clone(),
        session_stop.clone(),
        failed_tx.clone(),
    ));
    let setup = Arc::new(ConsumerSetup {
        connection: connection.clone(),
        topology: ctx.topology.clone(),
        context: Arc::new(PredictContext {
            registry: ctx.registry.clone(),
            answerer: ctx.answerer.clone(),
            topology: ctx.topology.clone(),
            max_message_bytes: ctx.settings.broker.max_message_bytes,
        }),
        generation,
    });
    let prefetch_ctx = ctx.clone();
    let mut consumers = Supervisor::new(
        setup,
        ctx.registry.clone(),
        ctx.metrics.clone(),
        Box::new(move |model| prefetch_for(&prefetch_ctx, model)),
    );
    let mut names = ctx.registry.names();
    let mut connection_events = connection.events_listener();
    ctx.status.connected.store(true, Ordering::Release);
    ctx.metrics.set_broker_connected(true);
    tracing::info!(generation, "Broker connected");
    let mut publisher = publisher;
    // `returned` holds the command queue when the publisher already ended (its failure ended
    // the session); otherwise the publisher is stopped after the consumers.
    let (end, returned) = loop {
        let wanted: BTreeSet<String> = names.borrow().clone();
        consumers.reconcile(&wanted, Instant::now());
        let retry = consumers.next_retry();
        tokio::select! {
            changed = names.changed() => if changed.is_err() { break (SessionEnd::Stopped, None) },
            Some(ended) = consumers.next_end() => {
                let connected = connection.status().connected();
                if let Err(reason) = consumers.on_end(ended, connected, Instant::now()) {
                    break (SessionEnd::Failed(reason), None);
                }
            }
            () = sleep_until(retry) => {}
            Some(reason) = failed_rx.recv() => break (SessionEnd::Failed(reason), None),
            // lapin reports a channel closed by the broker here too: only a connection that is
            // no longer connected ends the session (lapin marks it before it reports).
            event = connection_events.next() => if let Some(lapin::Event::Error(error)) = event {
                if !connection.status().connected() {
                    break (SessionEnd::Failed(format!("connection: {error}")), None);
                }
                tracing::debug!(%error, "A channel failed; its owner handles it");
            },
            joined = &mut publisher => {
                let (result, commands) = joined.expect("publisher task panicked");
                let reason = match result { Err(e) => e.to_string(), Ok(()) => "publisher stopped".into() };
                break (SessionEnd::Failed(reason), Some(commands));
            }
            () = shutdown.cancelled() => break (SessionEnd::Stopped, None),
        }
    };
    // The stop, in order (the same for a shutdown and a lost connection, less what a lost
    // connection cannot do):
    // 1. Stop consuming: every consumer sends basic.cancel; its unstarted prefetched jobs go
    //    back when its channel closes, after its own jobs are settled (consumer.rs). Running
    //    training jobs are told to stop between batches and are requeued.
    session_stop.cancel();
    consumers.stop_all().await;
    let _ = events.await;
    if let Some(training) = training {
        let _ = training.await;
    }
    // 2. The publisher already ended (its failure ended the session): nothing can be answered
    //    on this connection; the broker redelivers what was not acked.
    if let Some(commands) = returned {
        return (end, commands);
    }
    // 3. On shutdown: readiness says so, the batchers run what they hold, and every job held is
    //    answered (or requeued), within `worker.shutdown_timeout_ms`.
    if matches!(end, SessionEnd::Stopped) {
        ctx.status.stopping.store(true, Ordering::Release);
        graceful_drain(ctx, batch_tasks).await;
    }
    // 4. The publisher finishes what it was handed (publish, confirm, settle) and closes its
    //    channel.
    publisher_stop.cancel();
    let (result, commands) = publisher.await.expect("publisher task panicked");
    if let Err(error) = result {
        tracing::warn!(%error, "Publisher stopped with an error");
    }
    // 5. Everything is settled, so the stopped consumers are sending their last acks and
    //    closing their channels: let them finish before the caller closes the connection
    //    (bounded: the broker may be slow to answer).
    if matches!(end, SessionEnd::Stopped) && ctx.answerer.unsettled.load(Ordering::Acquire) <= 0 {
        ctx.answerer.closing.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.answerer.closing.wait()).await;
        ctx.answerer.closing.reopen();
    }
    (end, commands)
}

/// Runs and answers everything already received, within the shutdown deadline.
async fn graceful_drain(ctx: &Arc<BrokerContext>, batch_tasks: &TaskTracker) {
    let deadline = ctx.settings.worker.shutdown_timeout();
    let pending = ctx.answerer.unsettled.load(Ordering::Acquire);
    tracing::info!(
        pending,
        timeout_ms = deadline.as_millis() as u64,
        "Stopping: answering jobs in flight"
    );
    let drained = tokio::time::timeout(deadline, async {
        ctx.registry.clear();
        batch_tasks.close();
        batch_tasks.wait().await;
        ctx.answerer.wait_settled().await;
    })
    .await;
    if drained.is_err() {
        let left = ctx.answerer.unsettled.load(Ordering::Acquire);
        tracing::warn!(
            left,
            "Shutdown deadline reached; unsettled jobs return to their queues"
        );
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `broker.prefetch`, or enough to fill batches: 2 × max_batch_size × instances, at least 64.
fn prefetch_for(ctx: &BrokerContext, model: &str) -> u16 {
    if ctx.settings.broker.prefetch > 0 {
        return ctx.settings.broker.prefetch;
    }
    let wanted = ctx
        .registry
        .resolve(model, None)
        .map(|v| 2 * v.limits.max_batch_size.max(1) * v.instances.max(1))
        .unwrap_or(64);
    wanted.clamp(64, u16::MAX as usize) as u16
}
