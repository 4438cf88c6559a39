//! The gateway's side of the broker: connections from a `deadpool` pool (to any node of
//! `broker.url`, with `broker.tls`), and a pool of reply channels over them. A reply channel
//! ([`ReplyChannel`]) is a confirm-mode channel that consumes RabbitMQ's direct reply-to
//! pseudo-queue (`amq.rabbitmq.reply-to`, no-ack, set up before anything is published
//! on the channel) and hands each answer to the request waiting for its correlation id.
//!
//! Every job carries `user_id` = the broker user of `broker.url` (RabbitMQ checks it against
//! the connection's user), so a model's `allowed_users` can name the gateway's user.
//!
//! A request holds a reply channel only while it publishes; the confirm and the answer are
//! awaited after the channel went back to the pool, so a few channels carry many requests at
//! once. A reply channel that closed (broker restart, lost connection) fails its waiting
//! requests at once and is discarded by the pool's recycle check; the next request opens a new
//! one, over a new connection if the old one is gone: that is the gateway's reconnection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ErrorKind};

use crate::broker::connection::connect_any;
use crate::broker::tls::{ConnectError, TlsAuth, TlsSettings};
use crate::broker::{PublishOutcome, Topology};
use crate::client::JobProperties;
use tokio::sync::{mpsc, oneshot};

use super::policy::QueueState;

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why a call through the broker got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("no queue {0}: no worker serves that model (the broker returned the request)")]
    Unroutable(String),
    #[error("the broker refused the request (nack)")]
    Refused,
    #[error("the broker channel closed before the answer came")]
    ChannelLost,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Who waits for the answers to one correlation id: a request for its one answer, or a
/// generation job streamed for each of its messages.
enum Waiter {
    Once(oneshot::Sender<Delivery>),
    Stream(mpsc::UnboundedSender<Delivery>),
}

type Pending = Arc<Mutex<HashMap<String, Waiter>>>;

/// One channel with its reply consumers: of direct reply-to, and of the channel's own
/// exclusive queue (for generation jobs, see [`BrokerPools::stream`]).
pub struct ReplyChannel {
    channel: Channel,
    /// The channel's exclusive, server-named reply queue (gone with the channel).
    queue: String,
    pending: Pending,
}

/// Makes the gateway's broker connections for its pool: to any of the configured nodes
/// (`broker.url` may list a cluster), with the worker's TLS settings (`broker.tls`).
pub struct ConnectionManager {
    urls: Vec<String>,
    tls: TlsSettings,
}

impl deadpool::managed::Manager for ConnectionManager {
    type Type = Connection;
    type Error = ConnectError;

    async fn create(&self) -> Result<Connection, ConnectError> {
        connect_any(&self.urls, &self.tls, "infermq-gateway")
            .await
            .map(|(connection, _node)| connection)
    }

    async fn recycle(
        &self,
        connection: &mut Connection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message(
                "connection closed",
            ))
        }
    }
}

/// The gateway's pool of broker connections.
pub type ConnectionPool = deadpool::managed::Pool<ConnectionManager>;

/// Creates and checks [`ReplyChannel`]s for the deadpool pool.
pub struct ReplyChannelManager {
    connections: ConnectionPool,
}

impl deadpool::managed::Manager for ReplyChannelManager {
    type Type = ReplyChannel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<ReplyChannel, lapin::Error> {
        let connection = self.connections.get().await.map_err(|e| match e {
            deadpool::managed::PoolError::Backend(ConnectError::Broker { source, .. }) => source,
            other => lapin::Error::from(std::io::Error::other(other.to_string())),
        })?;
        let channel = connection.create_channel().await?;
        // The connection goes back to its pool; the channel keeps it in use.
        drop(connection);
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let direct = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await?;
        let queue = crate::broker::topology::declare_private_queue(&channel).await?;
        let own = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await?;
        let mut replies = futures_util::stream::select(direct, own);
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                let id = id.to_string();
                let Ok(mut pending) = waiting.lock() else {
                    break;
                };
                // No waiter: the request timed out or its client left; the answer is dropped.
                // A stream waits for more until its reader lets go ([`Waiting`]).
                let reader_gone = match pending.get(&id) {
                    None => false,
                    Some(Waiter::Stream(messages)) => messages.send(delivery).is_err(),
                    Some(Waiter::Once(_)) => {
                        if let Some(Waiter::Once(answer)) = pending.remove(&id) {
                            let _ = answer.send(delivery);
                        }
                        false
                    }
                };
                if reader_gone {
                    pending.remove(&id);
                }
            }
            // Channel gone: every waiting request learns it now (its sender is dropped).
            if let Ok(mut p) = waiting.lock() {
                p.clear();
            }
        });
        Ok(ReplyChannel {
            channel,
            queue,
            pending,
        })
    }

    async fn recycle(
        &self,
        reply: &mut ReplyChannel,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<lapin::Error> {
        if reply.channel.status().connected() {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message("channel closed"))
        }
    }
}

/// Removes a request's entry when it stops waiting (answered, timed out, or cancelled).
struct Waiting {
    pending: Pending,
    id: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

/// The messages answered to one job, in the order they came ([`BrokerPools::stream`]); the
/// job's entry goes when this is dropped, and later messages are dropped by the consumer.
pub struct ReplyStream {
    messages: mpsc::UnboundedReceiver<Delivery>,
    _waiting: Waiting,
}

impl ReplyStream {
    /// The next message; `None` once the reply channel closed (no more can come).
    pub async fn next(&mut self) -> Option<Delivery> {
        self.messages.recv().await
    }
}

/// `Ok` for a confirmed publish, else why the broker did not take it.
fn confirmed_or(outcome: PublishOutcome, target: &str) -> Result<(), CallError> {
    match outcome {
        PublishOutcome::Confirmed => Ok(()),
        PublishOutcome::Returned(_) => Err(CallError::Unroutable(target.to_string())),
        PublishOutcome::Nacked(_) => Err(CallError::Refused),
        PublishOutcome::ChannelLost(_) => Err(CallError::ChannelLost),
    }
}

impl CallError {
    /// A deadline that passed before publishing, named with the request's whole timeout.
    fn or_timeout(self, timeout: Duration) -> CallError {
        match self {
            CallError::Timeout(_) => CallError::Timeout(timeout),
            other => other,
        }
    }
}

/// The gateway's broker handle: cheap to clone.
#[derive(Clone)]
pub struct BrokerPools {
    pub connections: ConnectionPool,
    pub reply_channels: deadpool::managed::Pool<ReplyChannelManager>,
    /// Correlation ids: this gateway's random prefix and a counter.
    instance: Arc<str>,
    next_id: Arc<AtomicU64>,
    /// Sent as every job's `user_id`: the broker user of `broker.url` (none when the login is
    /// the client certificate's), which RabbitMQ checks, so a model's `allowed_users` can name
    /// the gateway.
    user_id: Option<Arc<str>>,
}

impl BrokerPools {
    /// Pools for `urls` (a cluster's nodes, or one): at most `connections` connections and
    /// `channels` reply channels. Nothing connects until the first request.
    pub fn new(
        urls: &[String],
        tls: &TlsSettings,
        connections: usize,
        channels: usize,
    ) -> Result<BrokerPools, String> {
        let manager = ConnectionManager {
            urls: urls.to_vec(),
            tls: tls.clone(),
        };
        let connections = deadpool::managed::Pool::builder(manager)
            .max_size(connections)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let reply_channels = deadpool::managed::Pool::builder(ReplyChannelManager {
            connections: connections.clone(),
        })
        .max_size(channels)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())?;
        let user_id = match tls.auth {
            TlsAuth::Plain => urls.iter().find_map(|url| crate::client::url_user(url)),
            TlsAuth::External => None,
        };
        Ok(BrokerPools {
            connections,
            reply_channels,
            instance: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
            next_id: Arc::default(),
            user_id: user_id.map(Arc::from),
        })
    }

    /// A correlation id unique among this gateway's jobs (a random instance prefix and a
    /// counter): what answers are matched by, and what names a generation job for cancelling.
    pub fn job_id(&self) -> String {
        // Unique among this gateway's requests, which is all a reply needs (it comes back only to
        // this channel); a counter costs no random bytes per request.
        format!(
            "{}-{:x}",
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Publishes `body` to `queue` (persistent, mandatory, confirmed, `reply_to` direct
    /// reply-to) and waits, at most `timeout` in all, for the answer with the same correlation id.
    pub async fn call(
        &self,
        queue: &str,
        body: &[u8],
        properties: JobProperties,
        timeout: Duration,
    ) -> Result<Delivery, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.job_id();
        let (tx, rx) = oneshot::channel();
        let (confirm, _waiting) = self
            .publish_waiting(queue, &id, Waiter::Once(tx), body, properties, deadline)
            .await
            .map_err(|e| e.or_timeout(timeout))?;
        // The answer may come before the confirm; a returned job comes before its ack.
        let mut confirm = std::pin::pin!(confirm);
        let mut rx = std::pin::pin!(rx);
        let mut expiry = std::pin::pin!(tokio::time::sleep_until(deadline));
        let mut confirmed = false;
        loop {
            tokio::select! {
                answer = &mut rx => return answer.map_err(|_| CallError::ChannelLost),
                result = &mut confirm, if !confirmed => match confirmed_or(result.into(), queue) {
                    Ok(()) => confirmed = true,
                    Err(e) => return Err(e),
                },
                () = &mut expiry => return Err(CallError::Timeout(timeout)),
            }
        }
    }

    /// Publishes a job under the correlation id `id` (from [`BrokerPools::job_id`]) like
    /// [`BrokerPools::call`], and once the broker confirmed it (within `timeout`), hands back
    /// every message answered to it, in order: a generation job streams several.
    ///
    /// Its `reply_to` is the reply channel's own exclusive queue, not direct reply-to: a
    /// worker publishes each streamed piece `mandatory` and regenerates the job when a piece is
    /// not confirmed as routed, and RabbitMQ 3.10 returns a `mandatory` message to direct
    /// reply-to as unroutable (312 `NO_ROUTE`) although it delivers it.
    pub async fn stream(
        &self,
        queue: &str,
        id: &str,
        body: &[u8],
        properties: JobProperties,
        timeout: Duration,
    ) -> Result<ReplyStream, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, messages) = mpsc::unbounded_channel();
        let (confirm, waiting) = self
            .publish_waiting(queue, id, Waiter::Stream(tx), body, properties, deadline)
            .await
            .map_err(|e| e.or_timeout(timeout))?;
        // Messages that come before the confirm wait in the stream.
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(result) => confirmed_or(result.into(), queue)?,
            Err(_) => return Err(CallError::Timeout(timeout)),
        }
        Ok(ReplyStream {
            messages,
            _waiting: waiting,
        })
    }

    /// Registers `waiter` for `id` on a reply channel and publishes the job; the confirm is
    /// awaited by the caller, after the channel went back to the pool. `Timeout(ZERO)` stands
    /// for "the deadline passed" until the caller names its timeout.
    async fn publish_waiting(
        &self,
        queue: &str,
        id: &str,
        waiter: Waiter,
        body: &[u8],
        properties: JobProperties,
        deadline: tokio::time::Instant,
    ) -> Result<(lapin::PublisherConfirm, Waiting), CallError> {
        let own_queue = matches!(waiter, Waiter::Stream(_));
        let reply = tokio::time::timeout_at(deadline, self.reply_channels.get())
            .await
            .map_err(|_| CallError::Timeout(Duration::ZERO))?
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        reply
            .pending
            .lock()
            .map_err(|_| CallError::ChannelLost)?
            .insert(id.to_string(), waiter);
        let waiting = Waiting {
            pending: reply.pending.clone(),
            id: id.to_string(),
        };
        let reply_to = if own_queue {
            reply.queue.as_str()
        } else {
            DIRECT_REPLY_TO
        };
        let properties = properties
            .reply_to(reply_to)
            .correlation_id(id)
            .user_id(self.user_id.as_deref())
            .build();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = reply
            .channel
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        Ok((confirm, waiting))
    }

    /// Publishes a cancel message (`{"id", "model"}`) on `prefix`'s cancel exchange, so that
    /// the worker holding that generation job ends it (docs/PROTOCOL.md "Cancelling").
    pub async fn cancel(&self, prefix: &str, body: &[u8]) -> Result<(), CallError> {
        let reply = self
            .reply_channels
            .get()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        // The delivery limit names a queue argument, which a publish does not use.
        let exchange = Topology::new(prefix, 0).cancel_exchange();
        let properties = JobProperties::new().build();
        let confirm = reply
            .channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        drop(reply);
        confirmed_or(PublishOutcome::of(confirm).await, &exchange)
    }

    /// A passive declare of `queue` on a channel of its own (a missing queue closes it).
    pub async fn probe(&self, queue: &str) -> Result<QueueState, CallError> {
        let connection = self
            .connections
            .get()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        drop(connection);
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        match declared {
            Ok(q) => {
                crate::broker::connection::close_channel(&channel, "probed").await;
                Ok(QueueState::Present {
                    ready: q.message_count(),
                    consumers: q.consumer_count(),
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::ProtocolError(a) if a.get_id() == 404) => {
                Ok(QueueState::Missing)
            }
            Err(e) => Err(CallError::Unavailable(e.to_string())),
        }
    }

    /// True when a broker connection is open (or can be opened now).
    pub async fn connected(&self) -> bool {
        match self.connections.get().await {
            Ok(connection) => connection.status().connected(),
            Err(_) => false,
        }
    }

    /// Closes every pooled connection (graceful stop, after the last answer).
    pub async fn close(&self) {
        // Channels closed first and waited for: a channel only dropped is closed by lapin in
        // the background, possibly after its connection (an ERROR in the logs).
        let wait = Duration::from_millis(100);
        for _ in 0..self.reply_channels.status().size {
            match tokio::time::timeout(wait, self.reply_channels.get()).await {
                Ok(Ok(reply)) => {
                    crate::broker::connection::close_channel(&reply.channel, "gateway stopping")
                        .await;
                    let _ = deadpool::managed::Object::take(reply);
                }
                _ => break,
            }
        }
        self.reply_channels.close();
        let status = self.connections.status();
        for _ in 0..status.size {
            match tokio::time::timeout(wait, self.connections.get()).await {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "gateway stopping".into()).await;
                    let _ = deadpool::managed::Object::take(connection);
                }
                _ => break,
            }
        }
        self.connections.close();
    }
}
