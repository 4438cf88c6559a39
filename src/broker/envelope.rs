//! The inbound reader: every delivery's AMQP properties and headers, read once into a typed
//! [`Envelope`], the same way for prediction and training jobs.
//!
//! What it decides, and why:
//! - **Where answers go**: `reply_to`, or the results queue when it is absent or empty. A
//!   `reply_to` naming one of this fleet's own job queues (`<prefix>.predict.*`,
//!   `<prefix>.train`, `<prefix>.dead`) is refused: answering there would feed results back to
//!   workers as jobs. Such a job is dead-lettered with the reason, never answered.
//! - **Which delivery this is**: `x-delivery-count` is set by quorum queues on redeliveries; on a
//!   first delivery (`redelivered` false) a producer-set value is ignored, so nobody can make a
//!   job's first failure its last.
//! - **The contract's headers** ([`JobHeaders`]): read here, with the error naming the header
//!   kept for the job's answer (the route and names are known even when a header is bad).
//! - **Whose job it is**: the `x-infermq-tenant` header, for counting only ([`TenantTag`]; any
//!   producer may set it, so it grants nothing).

use lapin::types::ShortString;
use lapin::BasicProperties;

use super::headers::{as_string, find, HeaderError, JobHeaders, TENANT};
use super::Topology;
use crate::protocol::TenantTag;

/// Where a job's answers may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A queue on the default exchange: `reply_to`, or the results queue.
    Queue(String),
    /// `reply_to` names one of the fleet's own queues; the message says which.
    Refused(String),
}

/// Where a job's answers go, and the `correlation_id` they carry back: handed to the job's
/// in-flight guard whole (not copied) once the envelope is read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub route: Route,
    pub correlation_id: Option<ShortString>,
}

/// One delivery's properties and headers, read.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub reply: Reply,
    /// The AMQP `message_id`: names a job whose body gives no `id`.
    pub message_id: Option<String>,
    /// The AMQP `user_id`, which RabbitMQ checks against the publishing connection's user.
    pub user_id: Option<String>,
    /// Earlier deliveries of this message: 0 on a first delivery, whatever the headers say.
    pub delivery_count: u32,
    /// The contract's headers, or the first one that could not be read.
    pub headers: Result<JobHeaders, HeaderError>,
    /// The `x-infermq-tenant` header.
    pub tenant: TenantTag,
}

impl Envelope {
    /// Reads a delivery of `topology`'s fleet. Never fails: what cannot be read is kept as an
    /// error for the job's answer.
    pub fn read(properties: &BasicProperties, redelivered: bool, topology: &Topology) -> Envelope {
        let route = match properties
            .reply_to()
            .as_ref()
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
        {
            None => Route::Queue(topology.results_queue()),
            Some(queue) => match topology.own_queue(queue) {
                Some(what) => Route::Refused(format!(
                    "reply_to: {} is {what}; results are never published there",
                    crate::protocol::text::quoted(queue)
                )),
                None => Route::Queue(queue.to_string()),
            },
        };
        let headers = JobHeaders::read(properties);
        let delivery_count = match (&headers, redelivered) {
            (Ok(h), true) => h.delivery_count,
            _ => 0,
        };
        let tenant = match find(properties.headers().as_ref(), TENANT) {
            None => TenantTag::Anonymous,
            Some(value) => TenantTag::of(as_string(value).as_deref()),
        };
        Envelope {
            reply: Reply {
                route,
                correlation_id: properties.correlation_id().clone(),
            },
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            user_id: properties.user_id().as_ref().map(|u| u.to_string()),
            delivery_count,
            headers,
            tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};

    fn topology() -> Topology {
        Topology::new("acme", 5)
    }

    fn with_count(count: i64) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(count));
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn delivery_count_is_trusted_only_on_redeliveries() {
        assert_eq!(
            Envelope::read(&with_count(100), false, &topology()).delivery_count,
            0
        );
        assert_eq!(
            Envelope::read(&with_count(3), true, &topology()).delivery_count,
            3
        );
    }

    #[test]
    fn the_tenant_header_is_a_name_anonymous_or_invalid() {
        let tenant = |value: Option<AMQPValue>| {
            let mut table = FieldTable::default();
            if let Some(value) = value {
                table.insert("x-infermq-tenant".into(), value);
            }
            let p = BasicProperties::default().with_headers(table);
            Envelope::read(&p, false, &topology()).tenant
        };
        assert_eq!(tenant(None), TenantTag::Anonymous);
        let named = tenant(Some(AMQPValue::LongString("team-a".into())));
        assert!(matches!(named, TenantTag::Named(n) if n.as_str() == "team-a"));
        let long = "x".repeat(65);
        assert_eq!(
            tenant(Some(AMQPValue::LongString(long.as_str().into()))),
            TenantTag::Invalid
        );
        assert_eq!(tenant(Some(AMQPValue::Boolean(true))), TenantTag::Invalid);
    }

    #[test]
    fn answers_never_go_to_the_fleets_own_queues() {
        let route = |reply_to: &str| {
            let p = BasicProperties::default().with_reply_to(reply_to.into());
            Envelope::read(&p, false, &topology()).reply.route
        };
        assert_eq!(route(""), Route::Queue("acme.results".into()));
        assert_eq!(route("amq.gen-1"), Route::Queue("amq.gen-1".into()));
        assert_eq!(route("acme.results"), Route::Queue("acme.results".into()));
        assert_eq!(
            route("acme.predictions"),
            Route::Queue("acme.predictions".into())
        );
        for own in ["acme.predict.iris", "acme.train", "acme.dead"] {
            assert!(
                matches!(route(own), Route::Refused(m) if m.contains(own)),
                "{own}"
            );
        }
    }
}
