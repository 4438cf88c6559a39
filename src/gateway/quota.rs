//! Rate limits of the gateway, pure: each takes `now: Instant` and imports neither axum nor
//! lapin.
//!
//! - [`TokenBucket`]: a level that refills at `rate` per second up to `capacity`.
//! - [`TenantQuota`]: an API key's `requests_per_second` (one token per request, bursts up to
//!   one second's worth) and `tokens_per_minute` (generation: a job is admitted while the
//!   bucket holds a token, and charged the prompt and completion tokens of its answer, which
//!   may take the level below zero: the next requests wait until it refills).
//! - [`FailedAuth`]: failed key checks per client address, a bucket of
//!   `gateway.auth_failures_per_minute` each; an address whose bucket is empty is refused until
//!   it refills. At most [`FailedAuth::MAX_ADDRESSES`] addresses are remembered.
//!
//! A refusal says how long to wait ([`retry_after`]: whole seconds, at least 1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::keys::Limits;

/// A token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            rate,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// How long until the bucket holds `n` tokens (zero: it does now).
    fn wait_for(&self, n: f64) -> Duration {
        if self.level >= n {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((n - self.level) / self.rate).min(1e9))
    }

    /// Takes `n` tokens if the bucket holds them; else how long until it will.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            return Ok(());
        }
        Err(self.wait_for(n))
    }

    /// `Ok` while the bucket holds at least one token (nothing is taken); else how long until
    /// it will.
    pub fn ready(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        match self.wait_for(1.0) {
            Duration::ZERO => Ok(()),
            wait => Err(wait),
        }
    }

    /// Takes `n` tokens whatever the level (it may go below zero).
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level -= n;
    }

    /// New limits for a bucket in use: what it held is kept (at most the new capacity), so a
    /// reload gives nobody a fresh burst.
    pub fn set(&mut self, capacity: f64, rate: f64, now: Instant) {
        self.refill(now);
        self.capacity = capacity;
        self.rate = rate;
        self.level = self.level.min(capacity);
    }

    #[cfg(test)]
    fn level(&self) -> f64 {
        self.level
    }

    /// True when the bucket has refilled to its capacity by `now`.
    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level + elapsed * self.rate >= self.capacity
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// Which limit refused a request (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Tokens => "tokens",
        }
    }
}

/// An API key's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantQuota {
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

impl TenantQuota {
    pub fn new(limits: Limits, now: Instant) -> TenantQuota {
        let mut quota = TenantQuota {
            requests: None,
            tokens: None,
        };
        quota.set(limits, now);
        quota
    }

    /// The key's limits from a reloaded file; the buckets keep what they held.
    pub fn set(&mut self, limits: Limits, now: Instant) {
        let requests = limits.requests_per_second.map(|rps| (rps.max(1.0), rps));
        let tokens = limits
            .tokens_per_minute
            .map(|tpm| (tpm as f64, tpm as f64 / 60.0));
        for (bucket, wanted) in [(&mut self.requests, requests), (&mut self.tokens, tokens)] {
            match (bucket.as_mut(), wanted) {
                (Some(b), Some((capacity, rate))) => b.set(capacity, rate, now),
                (None, Some((capacity, rate))) => {
                    *bucket = Some(TokenBucket::new(capacity, rate, now));
                }
                (_, None) => *bucket = None,
            }
        }
    }

    /// One request: a token of `requests_per_second`, and for a generation (`generates`) a
    /// token left in `tokens_per_minute` (checked, not taken). The refusal says which limit
    /// and how long to wait; a refused request takes nothing.
    pub fn admit(&mut self, generates: bool, now: Instant) -> Result<(), (Limit, Duration)> {
        if generates {
            if let Some(tokens) = self.tokens.as_mut() {
                tokens.ready(now).map_err(|wait| (Limit::Tokens, wait))?;
            }
        }
        if let Some(requests) = self.requests.as_mut() {
            requests
                .take(1.0, now)
                .map_err(|wait| (Limit::Requests, wait))?;
        }
        Ok(())
    }

    /// Charges a generation's tokens (prompt and completion) once its answer is known.
    pub fn charge_tokens(&mut self, n: u64, now: Instant) {
        if let Some(tokens) = self.tokens.as_mut() {
            tokens.charge(n as f64, now);
        }
    }
}

/// Failed key checks per client address.
#[derive(Debug)]
pub struct FailedAuth {
    per_minute: f64,
    addresses: HashMap<IpAddr, TokenBucket>,
}

impl FailedAuth {
    /// Addresses remembered at most; past it, recovered ones are forgotten first, then the one
    /// whose last failure is oldest.
    pub const MAX_ADDRESSES: usize = 4096;

    pub fn new(per_minute: u32) -> FailedAuth {
        FailedAuth {
            per_minute: f64::from(per_minute.max(1)),
            addresses: HashMap::new(),
        }
    }

    /// How long `address` is still refused, if it is.
    pub fn blocked(&mut self, address: IpAddr, now: Instant) -> Option<Duration> {
        let bucket = self.addresses.get_mut(&address)?;
        bucket.ready(now).err()
    }

    /// Counts a failed key check from `address`.
    pub fn failed(&mut self, address: IpAddr, now: Instant) {
        if !self.addresses.contains_key(&address) && self.addresses.len() >= Self::MAX_ADDRESSES {
            self.addresses.retain(|_, bucket| !bucket.full(now));
            if self.addresses.len() >= Self::MAX_ADDRESSES {
                let oldest = self
                    .addresses
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.updated)
                    .map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    self.addresses.remove(&oldest);
                }
            }
        }
        let per_minute = self.per_minute;
        self.addresses
            .entry(address)
            .or_insert_with(|| TokenBucket::new(per_minute, per_minute / 60.0, now))
            .charge(1.0, now);
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn requests_burst_one_second_then_come_at_the_rate() {
        let t0 = Instant::now();
        let limits = Limits {
            requests_per_second: Some(5.0),
            tokens_per_minute: None,
        };
        let mut quota = TenantQuota::new(limits, t0);
        for _ in 0..5 {
            assert_eq!(quota.admit(false, t0), Ok(()));
        }
        let (limit, wait) = quota.admit(false, t0).unwrap_err();
        assert_eq!(limit, Limit::Requests);
        assert_eq!(wait, Duration::from_millis(200));
        assert_eq!(retry_after(wait), 1);
        assert_eq!(quota.admit(false, at(t0, 200)), Ok(()));
        assert!(quota.admit(false, at(t0, 200)).is_err());
    }

    #[test]
    fn tokens_are_checked_before_and_charged_after_and_may_go_below_zero() {
        let t0 = Instant::now();
        let limits = Limits {
            requests_per_second: None,
            tokens_per_minute: Some(600),
        };
        let mut quota = TenantQuota::new(limits, t0);
        assert_eq!(quota.admit(true, t0), Ok(()));
        // A long answer takes the bucket below zero: 10 tokens a second bring it back.
        quota.charge_tokens(650, t0);
        let (limit, wait) = quota.admit(true, t0).unwrap_err();
        assert_eq!(limit, Limit::Tokens);
        assert_eq!(wait, Duration::from_millis(5100));
        assert_eq!(retry_after(wait), 6);
        // Predictions do not spend tokens.
        assert_eq!(quota.admit(false, t0), Ok(()));
        assert_eq!(quota.admit(true, at(t0, 5100)), Ok(()));
    }

    #[test]
    fn a_reload_keeps_what_the_buckets_held() {
        let t0 = Instant::now();
        let five = Limits {
            requests_per_second: Some(5.0),
            tokens_per_minute: None,
        };
        let mut quota = TenantQuota::new(five, t0);
        for _ in 0..5 {
            quota.admit(false, t0).unwrap();
        }
        let fifty = Limits {
            requests_per_second: Some(50.0),
            tokens_per_minute: None,
        };
        quota.set(fifty, t0);
        assert!(quota.admit(false, t0).is_err(), "no fresh burst");
        quota.set(Limits::default(), t0);
        assert_eq!(quota.admit(false, t0), Ok(()), "no limit");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn an_address_is_refused_after_its_failures_then_recovers() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut failed = FailedAuth::new(3);
        for _ in 0..3 {
            assert_eq!(failed.blocked(ip, t0), None);
            failed.failed(ip, t0);
        }
        assert_eq!(failed.blocked(ip, t0), Some(Duration::from_secs(20)));
        assert_eq!(failed.blocked(other, t0), None);
        assert_eq!(failed.blocked(ip, at(t0, 20_000)), None);
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let t0 = Instant::now();
        let mut failed = FailedAuth::new(2);
        for i in 0..(FailedAuth::MAX_ADDRESSES as u32 + 100) {
            let ip = IpAddr::from(i.to_be_bytes());
            failed.failed(ip, at(t0, u64::from(i)));
            failed.failed(ip, at(t0, u64::from(i)));
        }
        assert_eq!(failed.len(), FailedAuth::MAX_ADDRESSES);
        // The newest are kept (and still refused), the oldest forgotten.
        let newest = IpAddr::from((FailedAuth::MAX_ADDRESSES as u32 + 99).to_be_bytes());
        assert!(failed.blocked(newest, at(t0, 5000)).is_some());
        assert_eq!(failed.blocked(IpAddr::from(0u32.to_be_bytes()), t0), None);
    }

    proptest! {
        /// Whatever the arrivals, a bucket admits at most its capacity plus what it refilled
        /// over any window, never holds more than its capacity, and a refused request told to
        /// wait is admitted once it has.
        #[test]
        fn a_bucket_never_admits_more_than_its_rate(
            rate in 0.5f64..200.0,
            gaps in proptest::collection::vec(0u64..300, 1..300),
        ) {
            let t0 = Instant::now();
            let capacity = rate.max(1.0);
            let mut bucket = TokenBucket::new(capacity, rate, t0);
            let mut now = t0;
            let mut admitted: Vec<Instant> = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(gap);
                match bucket.take(1.0, now) {
                    Ok(()) => admitted.push(now),
                    Err(wait) => {
                        prop_assert!(wait > Duration::ZERO);
                        let mut later = bucket.clone();
                        prop_assert!(later.take(1.0, now + wait + Duration::from_micros(1)).is_ok());
                    }
                }
                prop_assert!(bucket.level() <= capacity + 1e-9);
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let window = end.duration_since(*start).as_secs_f64();
                    let most = capacity + rate * window + 1e-6;
                    prop_assert!(((j - i + 1) as f64) <= most, "{} in {window} s", j - i + 1);
                }
            }
        }

        /// Tokens charged are never forgiven: over a run, the tokens charged are at most the
        /// capacity, plus what refilled, plus one answer's worth beyond what was left.
        #[test]
        fn tokens_charged_stay_within_the_rate(
            answers in proptest::collection::vec((0u64..2000, 1u64..500), 1..200),
        ) {
            let t0 = Instant::now();
            let tpm = 6000u64;
            let limits = Limits { requests_per_second: None, tokens_per_minute: Some(tpm) };
            let mut quota = TenantQuota::new(limits, t0);
            let mut now = t0;
            let mut charged = 0u64;
            let mut largest = 0u64;
            for (gap, tokens) in answers {
                now += Duration::from_millis(gap);
                if quota.admit(true, now).is_ok() {
                    quota.charge_tokens(tokens, now);
                    charged += tokens;
                    largest = largest.max(tokens);
                }
            }
            let refilled = now.duration_since(t0).as_secs_f64() * tpm as f64 / 60.0;
            prop_assert!(charged as f64 <= tpm as f64 + refilled + largest as f64 + 1.0);
        }
    }
}
