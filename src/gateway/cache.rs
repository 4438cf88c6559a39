//! A small time-bounded cache for what the gateway asks the broker and the fleet often: a
//! queue's state (readiness, backpressure) and a model's metadata. Pure: the caller passes
//! `now`. Keys come from request paths, so the number of entries is bounded: when full, the
//! cache is emptied (entries are cheap to fetch again, and an attacker's random names cannot
//! grow memory).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most.
pub const MAX_ENTRIES: usize = 4096;

/// What [`TtlCache::get_or_claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// A value younger than the ttl (or one being fetched again by another caller).
    Fresh(V),
    /// The value expired and this caller is the one to fetch it again.
    Refresh,
    /// Nothing stored: fetch it.
    Missing,
}

/// Values valid for `ttl` after they were stored.
pub struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> TtlCache<V> {
        TtlCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The value stored for `key` less than `ttl` before `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        self.fresh(*at, now).then(|| value.clone())
    }

    /// Whether a value stored `at` is still valid `now`.
    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.ttl
    }

    /// Like [`TtlCache::get`], but an expired entry is handed out to one caller only: the first
    /// to find it expired gets [`Lookup::Refresh`] (it fetches the value again and stores it) and
    /// the entry is stamped `now`, so the callers that come while it fetches get the old value as
    /// [`Lookup::Fresh`] instead of fetching it all at once.
    pub fn get_or_claim(&self, key: &str, now: Instant) -> Lookup<V> {
        let Ok(mut entries) = self.entries.lock() else {
            return Lookup::Missing;
        };
        match entries.get_mut(key) {
            None => Lookup::Missing,
            Some((at, value)) if self.fresh(*at, now) => Lookup::Fresh(value.clone()),
            Some((at, _)) => {
                *at = now;
                Lookup::Refresh
            }
        }
    }

    pub fn put(&self, key: &str, value: V, now: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
                entries.clear();
            }
            entries.insert(key.to_string(), (now, value));
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TtlCache::new(Duration::from_millis(500));
        let t0 = Instant::now();
        cache.put("a", 1, t0);
        assert_eq!(cache.get("a", t0), Some(1));
        assert_eq!(cache.get("a", t0 + Duration::from_millis(499)), Some(1));
        assert_eq!(cache.get("a", t0 + Duration::from_millis(500)), None);
        assert_eq!(cache.get("b", t0), None);
        cache.remove("a");
        assert_eq!(cache.get("a", t0), None);
    }

    #[test]
    fn an_expired_entry_is_fetched_again_by_one_caller_only() {
        let ttl = Duration::from_millis(500);
        let cache = TtlCache::new(ttl);
        let t0 = Instant::now();
        assert_eq!(cache.get_or_claim("a", t0), Lookup::Missing);
        cache.put("a", 1, t0);
        assert_eq!(cache.get_or_claim("a", t0 + ttl / 2), Lookup::Fresh(1));
        let expired = t0 + ttl;
        assert_eq!(cache.get_or_claim("a", expired), Lookup::Refresh);
        // While the first caller fetches, the others get the old value.
        assert_eq!(cache.get_or_claim("a", expired), Lookup::Fresh(1));
        assert_eq!(cache.get_or_claim("a", expired + ttl / 2), Lookup::Fresh(1));
        cache.put("a", 2, expired + ttl / 2);
        assert_eq!(cache.get_or_claim("a", expired + ttl / 2), Lookup::Fresh(2));
        // A caller that never stores leaves the claim to the next one after another ttl.
        assert_eq!(cache.get_or_claim("a", expired + 2 * ttl), Lookup::Refresh);
    }

    #[test]
    fn the_number_of_entries_is_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(3 * MAX_ENTRIES) {
            cache.put(&format!("model-{i}"), i, now);
            assert!(cache.len() <= MAX_ENTRIES);
        }
        // Replacing an existing key never empties the cache.
        let last = format!("model-{}", 3 * MAX_ENTRIES - 1);
        let before = cache.len();
        cache.put(&last, 0, now);
        assert_eq!(cache.len(), before);
    }
}
