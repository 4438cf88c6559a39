//! The contract's topology: names derived from the prefix, and their idempotent declaration.
//!
//! Declarations use exactly the contract's arguments, so workers, the bundled CLI and producers
//! in any language that declare the same objects never conflict.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Names of every object of the topology for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: impl Into<String>, delivery_limit: u32) -> Topology {
        Topology {
            prefix: prefix.into(),
            delivery_limit,
        }
    }

    pub fn train_queue(&self) -> String {
        format!("{}.train", self.prefix)
    }

    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn models_exchange(&self) -> String {
        format!("{}.models", self.prefix)
    }

    /// The fanout exchange of cancel messages: every worker's cancel queue is bound to it, so a
    /// cancel reaches whichever worker holds the job.
    pub fn cancel_exchange(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// What `queue` is, when it is one of this fleet's job or dead-letter queues (answers must
    /// never be published there).
    pub fn own_queue(&self, queue: &str) -> Option<&'static str> {
        let rest = queue
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        if rest.starts_with("predict.") {
            Some("a model's job queue")
        } else if rest == "train" {
            Some("the training queue")
        } else if rest == "dead" {
            Some("the dead-letter queue")
        } else {
            None
        }
    }

    /// Arguments of the job queues (`predict.<model>` and `train`).
    pub fn job_queue_arguments(&self) -> FieldTable {
        let mut args = quorum();
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange())),
        );
        args
    }

    /// Declares the shared objects: results and dead-letter queues, the dead-letter, models and
    /// cancel exchanges, and the training queue.
    pub async fn declare_shared(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .queue_declare(self.results_queue().as_str().into(), durable, quorum())
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().as_str().into(),
                ExchangeKind::Fanout,
                exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.dead_queue().as_str().into(), durable, quorum())
            .await?;
        channel
            .queue_bind(
                self.dead_queue().as_str().into(),
                self.dead_letter_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.models_exchange().as_str().into(),
                ExchangeKind::Fanout,
                exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.cancel_exchange().as_str().into(),
                ExchangeKind::Fanout,
                exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.train_queue().as_str().into(),
                durable,
                self.job_queue_arguments(),
            )
            .await?;
        Ok(())
    }

    /// Declares the prediction queue of one model.
    pub async fn declare_model(&self, channel: &Channel, model: &str) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                predict_queue(&self.prefix, model).as_str().into(),
                durable,
                self.job_queue_arguments(),
            )
            .await?;
        Ok(())
    }

    /// Declares this worker's exclusive queue on the models exchange; returns its name.
    pub async fn declare_events_queue(&self, channel: &Channel) -> lapin::Result<String> {
        self.declare_bound_queue(channel, self.models_exchange())
            .await
    }

    /// Declares this worker's exclusive queue on the cancel exchange; returns its name.
    pub async fn declare_cancel_queue(&self, channel: &Channel) -> lapin::Result<String> {
        self.declare_bound_queue(channel, self.cancel_exchange())
            .await
    }

    async fn declare_bound_queue(
        &self,
        channel: &Channel,
        exchange: String,
    ) -> lapin::Result<String> {
        let name = declare_private_queue(channel).await?;
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(name)
    }
}

/// `<prefix>.predict.<model>`: the queue of a model's jobs, for a worker, the gateway and any
/// producer. With a name of at most [`crate::protocol::ModelName::MAX_LEN`] bytes it is a legal
/// queue name (an AMQP short string, at most 255 bytes) for every prefix of at most 118 bytes.
pub fn predict_queue(prefix: &str, model: &str) -> String {
    format!("{prefix}.predict.{model}")
}

/// Declares a server-named queue that lives as long as this connection (events, replies).
pub async fn declare_private_queue(channel: &Channel) -> lapin::Result<String> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    Ok(queue.name().to_string())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason for the model name's limit: under the longest prefix, the longest model name
    /// makes a queue name of exactly 255 bytes, AMQP's limit for a short string.
    #[test]
    fn the_longest_model_name_fits_a_queue_name() {
        use crate::protocol::ModelName;
        let longest_prefix = 255 - ".predict.".len() - ModelName::MAX_LEN;
        assert_eq!(longest_prefix, 118);
        let name = ModelName::parse(&"m".repeat(ModelName::MAX_LEN)).unwrap();
        let queue = predict_queue(&"p".repeat(longest_prefix), &name);
        assert_eq!(queue.len(), 255);
        assert!(ShortString::try_new(queue).is_ok());
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("acme", 5);
        assert_eq!(predict_queue(&t.prefix, "iris"), "acme.predict.iris");
        assert_eq!(t.train_queue(), "acme.train");
        assert_eq!(t.results_queue(), "acme.results");
        assert_eq!(t.dead_letter_exchange(), "acme.dlx");
        assert_eq!(t.dead_queue(), "acme.dead");
        assert_eq!(t.models_exchange(), "acme.models");
        let args = t.job_queue_arguments();
        let inner = args.inner();
        assert_eq!(inner.get("x-delivery-limit"), Some(&AMQPValue::LongInt(5)));
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            inner.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("acme.dlx".into()))
        );
    }
}
