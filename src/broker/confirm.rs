//! What a publisher confirm says about one published message: the one reading of lapin's
//! [`Confirmation`] for every publisher of the contract — the worker's results
//! ([`super::publisher`]), the gateway's requests, the client's jobs and the load generator's.
//! Each caller decides what an outcome means for it (an HTTP status, a client error, a bench
//! counter, a requeue); none matches lapin's confirmation by hand.

use lapin::message::BasicReturnMessage;
use lapin::Confirmation;

/// The broker's answer to one publish on a confirm-mode channel.
#[derive(Debug)]
pub enum PublishOutcome {
    /// `basic.ack` with nothing returned: the broker has the message. (A channel without
    /// confirms also ends here: every publisher of infermq enables them.)
    Confirmed,
    /// `basic.return` then `basic.ack`: published `mandatory` and no queue took it (for a job:
    /// no worker serves that model; for a result: its `reply_to` queue is gone). The message
    /// comes back whole.
    Returned(Box<BasicReturnMessage>),
    /// `basic.nack`: the broker did not take the message (publish it again); the returned
    /// message when it came back too.
    Nacked(Option<Box<BasicReturnMessage>>),
    /// The channel failed before the confirm came: the message may or may not be in the broker.
    ChannelLost(lapin::Error),
}

impl From<lapin::Result<Confirmation>> for PublishOutcome {
    fn from(confirmation: lapin::Result<Confirmation>) -> PublishOutcome {
        match confirmation {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => PublishOutcome::Confirmed,
            Ok(Confirmation::Ack(Some(returned))) => PublishOutcome::Returned(Box::new(returned)),
            Ok(Confirmation::Nack(returned)) => PublishOutcome::Nacked(returned.map(Box::new)),
            Err(error) => PublishOutcome::ChannelLost(error),
        }
    }
}

impl PublishOutcome {
    /// Waits for `confirm` and reads it.
    pub async fn of(confirm: lapin::PublisherConfirm) -> PublishOutcome {
        confirm.await.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_confirmation_has_one_outcome() {
        let outcome = |c: lapin::Result<Confirmation>| PublishOutcome::from(c);
        assert!(matches!(
            outcome(Ok(Confirmation::Ack(None))),
            PublishOutcome::Confirmed
        ));
        assert!(matches!(
            outcome(Ok(Confirmation::NotRequested)),
            PublishOutcome::Confirmed
        ));
        assert!(matches!(
            outcome(Ok(Confirmation::Nack(None))),
            PublishOutcome::Nacked(None)
        ));
        let lost = lapin::Error::from(std::io::Error::other("connection reset"));
        assert!(matches!(outcome(Err(lost)), PublishOutcome::ChannelLost(_)));
    }
}
