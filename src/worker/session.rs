//! The broker side of the worker: one connection at a time, with its publisher and consumers,
//! reconnecting after failures until shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{events_task, ConsumerSetup};
use super::kinds::JobKind;
use super::supervisor::{Supervisor, Wake};
use super::WorkerStatus;
use crate::broker::connection::{connect_with_retry, Backoff};
use crate::broker::publisher::{publisher_task, PublisherContext, PublisherError};
use crate::broker::{Command, Topology};
use crate::config::Settings;
use crate::jobs::answerer::Answerer;
use crate::serving::ModelRegistry;
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
    /// The kinds of job consumed (`kinds.rs`).
    pub kinds: Vec<JobKind>,
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

/// The publisher's task: its end, and the command queue it gives back.
type PublisherTask = JoinHandle<(Result<(), PublisherError>, mpsc::UnboundedReceiver<Command>)>;

/// What runs during one session: the publisher, the events consumer, the consumers of jobs.
struct Running {
    publisher: PublisherTask,
    publisher_stop: CancellationToken,
    events: JoinHandle<()>,
    events_stop: CancellationToken,
    /// The events consumer's failure, which ends the session.
    failed: mpsc::UnboundedReceiver<String>,
    consumers: Supervisor,
}

/// One session on `connection`: setup, serve until shutdown or a failure, then stop in order.
async fn session(
    ctx: &Arc<BrokerContext>,
    connection: Arc<Connection>,
    generation: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
    batch_tasks: &TaskTracker,
) -> (SessionEnd, mpsc::UnboundedReceiver<Command>) {
    let publish_channel = match publish_channel(ctx, &connection).await {
        Ok(channel) => channel,
        Err(error) => return (SessionEnd::Failed(format!("setup: {error}")), commands),
    };
    let mut running = start(ctx, &connection, generation, publish_channel, commands);
    ctx.status.connected.store(true, Ordering::Release);
    ctx.metrics.set_broker_connected(true);
    tracing::info!(generation, "Broker connected");
    let (end, returned) = serve(&connection, &mut running, shutdown).await;
    stop(ctx, running, end, returned, batch_tasks).await
}

/// The publisher's channel (in confirm mode), once the shared topology is declared.
async fn publish_channel(ctx: &BrokerContext, connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    ctx.topology.declare_shared(&channel).await?;
    Ok(channel)
}

/// Starts the publisher, the events consumer and the supervisor of the job consumers.
fn start(
    ctx: &Arc<BrokerContext>,
    connection: &Arc<Connection>,
    generation: u64,
    channel: Channel,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Running {
    let publisher_stop = CancellationToken::new();
    let returned_metrics = ctx.metrics.clone();
    let context = PublisherContext {
        dead_letter_exchange: ctx.topology.dead_letter_exchange(),
        on_returned: Arc::new(move |model: &str| returned_metrics.result_returned(model)),
    };
    let stop = publisher_stop.clone();
    let publisher = tokio::spawn(async move {
        let result = publisher_task(channel, generation, &mut commands, context, stop).await;
        (result, commands)
    });
    let (failed_tx, failed) = mpsc::unbounded_channel::<String>();
    let events_stop = CancellationToken::new();
    let events = tokio::spawn(events_task(
        connection.clone(),
        ctx.topology.clone(),
        ctx.reload.clone(),
        events_stop.clone(),
        failed_tx,
    ));
    let setup = Arc::new(ConsumerSetup {
        connection: connection.clone(),
        answerer: ctx.answerer.clone(),
        generation,
    });
    let consumers = Supervisor::new(
        ctx.kinds.clone(),
        setup,
        ctx.registry.clone(),
        ctx.metrics.clone(),
    );
    Running {
        publisher,
        publisher_stop,
        events,
        events_stop,
        failed,
        consumers,
    }
}

/// Keeps the consumers in step with what their kinds want until shutdown or a failure.
/// Returns the command queue too when the publisher already ended (its failure ended the
/// session); otherwise the publisher is stopped after the consumers.
async fn serve(
    connection: &Connection,
    running: &mut Running,
    shutdown: &CancellationToken,
) -> (SessionEnd, Option<mpsc::UnboundedReceiver<Command>>) {
    let mut connection_events = connection.events_listener();
    loop {
        running.consumers.reconcile(Instant::now());
        tokio::select! {
            wake = running.consumers.next() => match wake {
                Wake::Reconcile => {}
                Wake::Closed => return (SessionEnd::Stopped, None),
                Wake::Ended(ended) => {
                    let connected = connection.status().connected();
                    if let Err(reason) = running.consumers.on_end(ended, connected, Instant::now()) {
                        return (SessionEnd::Failed(reason), None);
                    }
                }
            },
            Some(reason) = running.failed.recv() => return (SessionEnd::Failed(reason), None),
            // lapin reports a channel closed by the broker here too: only a connection that is
            // no longer connected ends the session (lapin marks it before it reports).
            event = connection_events.next() => if let Some(lapin::Event::Error(error)) = event {
                if !connection.status().connected() {
                    return (SessionEnd::Failed(format!("connection: {error}")), None);
                }
                tracing::debug!(%error, "A channel failed; its owner handles it");
            },
            joined = &mut running.publisher => {
                let (result, commands) = joined.expect("publisher task panicked");
                let reason = match result { Err(e) => e.to_string(), Ok(()) => "publisher stopped".into() };
                return (SessionEnd::Failed(reason), Some(commands));
            }
            () = shutdown.cancelled() => return (SessionEnd::Stopped, None),
        }
    }
}

/// The stop, in order (the same for a shutdown and a lost connection, less what a lost
/// connection cannot do).
async fn stop(
    ctx: &Arc<BrokerContext>,
    mut running: Running,
    end: SessionEnd,
    returned: Option<mpsc::UnboundedReceiver<Command>>,
    batch_tasks: &TaskTracker,
) -> (SessionEnd, mpsc::UnboundedReceiver<Command>) {
    // 1. Stop consuming: every consumer sends basic.cancel; its unstarted prefetched jobs go
    //    back when its channel closes, after its own jobs are settled (consumer.rs). Running
    //    training jobs are told to stop between batches and are requeued.
    running.events_stop.cancel();
    running.consumers.stop_all().await;
    let _ = running.events.await;
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
    running.publisher_stop.cancel();
    let (result, commands) = (running.publisher.await).expect("publisher task panicked");
    if let Err(error) = result {
        tracing::warn!(%error, "Publisher stopped with an error");
    }
    // 5. Everything is settled, so the stopped consumers are sending their last acks and
    //    closing their channels: let them finish before the caller closes the connection
    //    (bounded: the broker may be slow to answer).
    if matches!(end, SessionEnd::Stopped) {
        ctx.answerer
            .wait_channels_closed(Duration::from_secs(2))
            .await;
    }
    (end, commands)
}

/// Runs and answers everything already received, within the shutdown deadline.
async fn graceful_drain(ctx: &Arc<BrokerContext>, batch_tasks: &TaskTracker) {
    let deadline = ctx.settings.worker.shutdown_timeout();
    let pending = ctx.answerer.unsettled();
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
        let left = ctx.answerer.unsettled();
        tracing::warn!(
            left,
            "Shutdown deadline reached; unsettled jobs return to their queues"
        );
    }
}
