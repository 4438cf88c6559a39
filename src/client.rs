//! A small producer for the contract: publishes jobs with confirms and `mandatory`, and reads
//! answers from its own exclusive reply queue. Used by `infermq predict`, the tests and any Rust
//! program that wants to call the fleet. The producer's side of the contract is here once for
//! every producer (this client, the gateway, the load generator in `tools/`): a job's
//! properties ([`JobProperties`]) and a model's queue ([`model_queue`]).

mod properties;

pub use properties::JobProperties;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use crate::broker::headers::BINARY_HEADER;
use crate::broker::tls::{ConnectError, TlsAuth, TlsSettings};
use crate::broker::PublishOutcome;
use crate::protocol::{EncodedBody, ModelName, ModelNameError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The model name breaks the rule, so no worker can serve it (refused before publishing).
    #[error("model name {0}")]
    InvalidModel(#[from] ModelNameError),
    #[error("no queue {0}: no worker serves that model (the broker returned the job)")]
    Unroutable(String),
    #[error("the broker refused the job (nack)")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A connection with a confirm-mode channel and an exclusive reply queue.
pub struct Client {
    connection: Connection,
    channel: Channel,
    reply_queue: String,
    replies: Consumer,
    /// Sent as the `user_id` property of every job.
    user_id: Option<String>,
}

/// The user named in `url` (`amqp://user:pass@host`), when it names one.
pub(crate) fn url_user(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1.split(['/', '?']).next()?;
    if !authority.contains('@') {
        return None;
    }
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    Some(uri.authority.userinfo.username).filter(|u| !u.is_empty())
}

impl Client {
    /// Connects to `url`, or to the first reachable of a comma-separated list of URLs (the
    /// nodes of a cluster); `tls` is used by `amqps://` URLs. Jobs carry `user_id` = the user of
    /// the URL, which RabbitMQ checks against the connection's user; none when the login is the
    /// client certificate's (`broker.tls.auth = "external"`) or the URL names no user.
    pub async fn connect(url: &str, tls: &TlsSettings) -> Result<Client, ClientError> {
        Self::connect_any(&broker_urls(url), tls).await
    }

    /// Connects to the first reachable of `urls`, from a random start (see [`Client::connect`]).
    pub async fn connect_any(urls: &[String], tls: &TlsSettings) -> Result<Client, ClientError> {
        let (connection, _node) = connect_broker(urls, tls, "infermq-client").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let reply_queue = crate::broker::topology::declare_private_queue(&channel).await?;
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await?;
        let user_id = match tls.auth {
            TlsAuth::Plain => urls.iter().find_map(|url| url_user(url)),
            TlsAuth::External => None,
        };
        Ok(Client {
            connection,
            channel,
            reply_queue,
            replies,
            user_id,
        })
    }

    /// Replaces the `user_id` property sent with each job.
    pub fn set_user_id(&mut self, user_id: Option<String>) {
        self.user_id = user_id;
    }

    /// The exclusive queue answers come to.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Properties for a job: persistent, `reply_to` this client, the given correlation id and
    /// headers, and the binary header when the body is binary.
    pub fn job_properties(
        &self,
        correlation_id: &str,
        body: &EncodedBody,
        headers: FieldTable,
    ) -> BasicProperties {
        JobProperties::new()
            .binary_header_len(body.header_len)
            .reply_to(&self.reply_queue)
            .correlation_id(correlation_id)
            .user_id(self.user_id.as_deref())
            .headers(headers)
            .build()
    }

    /// Publishes to the default exchange with `mandatory` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), ClientError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await?;
        match PublishOutcome::of(confirm).await {
            PublishOutcome::Confirmed => Ok(()),
            PublishOutcome::Returned(_) => Err(ClientError::Unroutable(queue.to_string())),
            PublishOutcome::Nacked(_) => Err(ClientError::Refused),
            PublishOutcome::ChannelLost(error) => Err(error.into()),
        }
    }

    /// The next answer on the reply queue, within `timeout`.
    pub async fn next_reply(&mut self, timeout: Duration) -> Result<Delivery, ClientError> {
        match tokio::time::timeout(timeout, self.replies.next()).await {
            Ok(Some(Ok(delivery))) => Ok(delivery),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(None) | Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Publishes one job and waits for its answer.
    pub async fn call(
        &mut self,
        queue: &str,
        body: &EncodedBody,
        headers: FieldTable,
        timeout: Duration,
    ) -> Result<Delivery, ClientError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let properties = self.job_properties(&correlation_id, body, headers);
        self.publish(queue, &body.body, properties).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let delivery = self.next_reply(left).await?;
            if delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str())
                == Some(correlation_id.as_str())
            {
                return Ok(delivery);
            }
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// The broker URLs of a comma-separated list (`--url`, `AMQP_URL`: the nodes of a cluster),
/// blanks trimmed, empty items skipped.
pub fn broker_urls(list: &str) -> Vec<String> {
    crate::broker::BrokerAddresses::parse_list(list)
}

/// A plain connection to the first reachable of `urls`, tried once each from a random start,
/// with the node (`host:port`) it reached; `tls` is used by `amqps://` URLs and `name` is the
/// connection name the broker shows. For producers that drive their own channels (the load
/// generator); [`Client::connect_any`] is this plus a confirm channel and a reply queue.
pub async fn connect_broker(
    urls: &[String],
    tls: &TlsSettings,
    name: &str,
) -> Result<(Connection, String), ClientError> {
    Ok(crate::broker::connection::connect_any(urls, tls, name).await?)
}

/// The job queue of `model` under `prefix` (`<prefix>.predict.<model>`), when the name follows
/// the rule every worker applies ([`ModelName`]); a name that breaks it is refused here, before
/// anything is published.
pub fn model_queue(prefix: &str, model: &str) -> Result<String, ClientError> {
    let model = ModelName::parse(model)?;
    Ok(crate::broker::topology::predict_queue(prefix, &model))
}

/// Reads a header as text (for `x-error-code`, `x-event`).
pub fn header_str(delivery: &Delivery, name: &str) -> Option<String> {
    use crate::broker::headers::{as_string, find};
    find(delivery.properties.headers().as_ref(), name).and_then(as_string)
}

/// The binary header length of an answer, if it is binary.
pub fn binary_header_len(delivery: &Delivery) -> Option<usize> {
    header_str(delivery, BINARY_HEADER).and_then(|v| v.parse().ok())
}

/// A header table from string pairs.
pub fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::{model_queue, url_user, ClientError};

    #[test]
    fn the_user_of_the_url() {
        let cases = [
            ("amqp://alice:secret@host:5672/%2f", Some("alice")),
            ("amqps://bob@host/vh", Some("bob")),
            ("amqp://host:5672/%2f", None),
            ("amqp://host/a@b", None),
        ];
        for (url, user) in cases {
            assert_eq!(url_user(url).as_deref(), user, "{url}");
        }
    }

    #[test]
    fn model_queues_take_names_by_the_one_rule() {
        let longest = "m".repeat(crate::protocol::ModelName::MAX_LEN);
        assert_eq!(
            model_queue("acme", &longest).unwrap(),
            format!("acme.predict.{longest}")
        );
        for bad in [format!("{longest}m"), "a/b".into(), String::new()] {
            let e = model_queue("acme", &bad).unwrap_err();
            assert!(matches!(e, ClientError::InvalidModel(_)), "{bad}");
            assert!(e.to_string().starts_with("model name \""), "{e}");
        }
    }
}
