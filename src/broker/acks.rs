//! Coalesced acknowledgements: one `basic.ack` with `multiple` for a run of settled deliveries.
//!
//! A consumer channel's deliveries are registered as they arrive. When a job is settled its tag
//! is marked done; whenever every tag up to some N is done (acked or nacked individually), a
//! single `basic.ack(N, multiple = true)` covers them all. Jobs finish out of order (different
//! batches), so the ack waits for the oldest unfinished one; that is bounded by one batch's run.
//! `multiple` only ever covers tags this tracker saw settle, so nothing unanswered is acked.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

#[derive(Debug, Default)]
struct State {
    /// Delivered and not yet settled.
    outstanding: BTreeSet<u64>,
    /// Settled, waiting for the tags before them.
    done: BTreeSet<u64>,
}

/// The pure bookkeeping, apart from the channel.
#[derive(Debug, Default)]
pub struct AckWindow {
    state: State,
}

impl AckWindow {
    pub fn delivered(&mut self, tag: u64) {
        self.state.outstanding.insert(tag);
    }

    /// Marks `tag` settled; `ack` says whether it still needs acking (false when it was nacked
    /// on its own). Returns the tag to ack with `multiple`, if a run became complete.
    pub fn settle(&mut self, tag: u64, ack: bool) -> Option<u64> {
        if !self.state.outstanding.remove(&tag) {
            return None;
        }
        if ack {
            self.state.done.insert(tag);
        }
        let limit = self.state.outstanding.first().copied().unwrap_or(u64::MAX);
        let upto = self.state.done.range(..limit).next_back().copied()?;
        self.state.done = self.state.done.split_off(&(upto + 1));
        Some(upto)
    }

    pub fn outstanding(&self) -> usize {
        self.state.outstanding.len()
    }
}

/// A consumer channel and its window of unsettled deliveries.
#[derive(Clone)]
pub struct AckTracker {
    channel: Channel,
    window: Arc<Mutex<AckWindow>>,
    coalesce: bool,
}

/// One delivery to settle.
#[derive(Clone)]
pub struct DeliveryRef {
    pub tracker: AckTracker,
    pub tag: u64,
}

impl AckTracker {
    /// Coalescing acks: for short jobs that finish in about the order they arrive.
    pub fn new(channel: Channel) -> AckTracker {
        AckTracker {
            channel,
            window: Arc::default(),
            coalesce: true,
        }
    }

    /// One ack per delivery: for long jobs (training), whose ack must not wait for another's.
    pub fn individual(channel: Channel) -> AckTracker {
        AckTracker {
            coalesce: false,
            ..AckTracker::new(channel)
        }
    }

    /// Registers a delivery; every delivery of the channel must pass here before it is settled.
    pub fn delivered(&self, tag: u64) -> DeliveryRef {
        if let Ok(mut window) = self.window.lock() {
            window.delivered(tag);
        }
        DeliveryRef {
            tracker: self.clone(),
            tag,
        }
    }
}

impl DeliveryRef {
    /// Acks this delivery (possibly together with earlier ones). False if the channel is gone.
    pub async fn ack(&self) -> bool {
        let channel = &self.tracker.channel;
        if !self.tracker.coalesce {
            let acked = channel
                .basic_ack(self.tag, BasicAckOptions { multiple: false })
                .await
                .is_ok();
            self.settle(false);
            return acked;
        }
        match self.settle(true) {
            Some(upto) => channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await
                .is_ok(),
            None => channel.status().connected(),
        }
    }

    /// Returns this delivery to its queue. False if the channel is gone.
    pub async fn requeue(&self) -> bool {
        let channel = &self.tracker.channel;
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let nacked = channel.basic_nack(self.tag, options).await.is_ok();
        if let Some(upto) = self.settle(false) {
            let _ = channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await;
        }
        nacked
    }

    /// Marks this delivery settled in the tracker's window (`acked`: to be covered by a
    /// `multiple` ack); the tag up to which an ack may now be sent, if any.
    fn settle(&self, acked: bool) -> Option<u64> {
        self.tracker
            .window
            .lock()
            .ok()
            .and_then(|mut w| w.settle(self.tag, acked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acks_wait_for_the_oldest_outstanding_delivery() {
        let mut w = AckWindow::default();
        for tag in 1..=5 {
            w.delivered(tag);
        }
        assert_eq!(w.settle(2, true), None, "1 is still running");
        assert_eq!(w.settle(3, true), None);
        assert_eq!(w.settle(1, true), Some(3), "1..=3 in one ack");
        assert_eq!(w.settle(5, true), None);
        assert_eq!(
            w.settle(4, false),
            Some(5),
            "4 was nacked on its own; 5 is acked"
        );
        assert_eq!(w.settle(4, true), None, "settling twice does nothing");
        assert_eq!(w.outstanding(), 0);
    }

    proptest! {
        /// Every acked tag is settled-with-ack, every settled-with-ack tag is covered by exactly
        /// one ack, and no ack covers an unsettled or nacked tag.
        #[test]
        fn coalesced_acks_cover_exactly_the_settled_tags(order in Just((1..=40u64).collect::<Vec<_>>()).prop_shuffle(), nacks in proptest::collection::btree_set(1..=40u64, 0..8)) {
            let mut w = AckWindow::default();
            for tag in 1..=40 {
                w.delivered(tag);
            }
            let mut settled = BTreeSet::new();
            let mut covered = BTreeSet::new();
            let mut last_ack = 0;
            for tag in order {
                let ack = !nacks.contains(&tag);
                settled.insert(tag);
                if let Some(upto) = w.settle(tag, ack) {
                    prop_assert!(upto > last_ack);
                    for t in (last_ack + 1)..=upto {
                        prop_assert!(settled.contains(&t), "ack {} covers unsettled {}", upto, t);
                        if !nacks.contains(&t) {
                            covered.insert(t);
                        }
                    }
                    last_ack = upto;
                }
            }
            let want: BTreeSet<u64> = (1..=40).filter(|t| !nacks.contains(t)).collect();
            prop_assert_eq!(covered, want);
        }
    }
}
