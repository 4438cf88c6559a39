//! Connecting to RabbitMQ, with capped exponential backoff and full jitter between attempts,
//! over the [`BrokerAddresses`] of a cluster's nodes: every attempt goes to the next address.

use std::time::Duration;

use lapin::Connection;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::addresses::BrokerAddresses;

/// Backoff between connection attempts: `initial · 2^attempt`, capped, with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        self.initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max)
    }

    /// The next delay: uniform in `[ceiling/2, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

use super::tls::{connect, ConnectError, TlsSettings};

/// Connects to the next of `addresses`, moving on to the one after it with `backoff` between
/// attempts, until it succeeds or `cancel` fires (then `None`). On success,
/// [`BrokerAddresses::current_node`] names the node connected to.
pub async fn connect_with_retry(
    addresses: &mut BrokerAddresses,
    tls: &TlsSettings,
    name: &str,
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Option<Connection> {
    loop {
        let url = addresses.next_url().to_string();
        let node = addresses.current_node().unwrap_or_default();
        let attempt = tokio::select! {
            result = connect(&url, tls, name) => result,
            () = cancel.cancelled() => return None,
        };
        match attempt {
            Ok(connection) => {
                backoff.reset();
                tracing::info!(%node, "Broker node connected");
                return Some(connection);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                if error.is_configuration() {
                    // Retrying cannot help until someone fixes a file or a certificate, but the
                    // fix may come without a restart (a mounted Secret), so keep trying.
                    tracing::error!(%error, %node, retry_in_ms, "Broker connection refused");
                } else {
                    tracing::warn!(%error, %node, retry_in_ms, "Broker connection failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
    }
}

/// Tries each of `urls` once, from a random start, and returns the first connection with its
/// node (`host:port`), or the last error. For the producer CLI and the load generator.
pub async fn connect_any(
    urls: &[String],
    tls: &TlsSettings,
    name: &str,
) -> Result<(Connection, String), ConnectError> {
    let mut addresses = BrokerAddresses::new(urls);
    let mut last = ConnectError::Url("no broker address configured".into());
    for _ in 0..addresses.len() {
        let url = addresses.next_url().to_string();
        match connect(&url, tls, name).await {
            Ok(connection) => {
                return Ok((connection, addresses.current_node().unwrap_or_default()))
            }
            Err(error) => {
                let node = addresses.current_node().unwrap_or_default();
                tracing::warn!(%error, %node, "Broker connection failed; trying the next address");
                last = error;
            }
        }
    }
    Err(last)
}

/// Closes `channel` and waits for the broker's close-ok. A channel that is only dropped is
/// closed by lapin from a background task, which can run after the connection has closed:
/// lapin then logs an ERROR ("invalid connection state: Closed"). Does nothing on a channel
/// that is no longer open.
pub async fn close_channel(channel: &lapin::Channel, reason: &str) {
    if channel.status().connected() {
        let _ = channel.close(200, reason.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_inside_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let ceiling = b.ceiling();
                let delay = b.next_delay();
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
                ceiling.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
