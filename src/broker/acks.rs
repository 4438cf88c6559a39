//! Coalesced acknowledgements: one `basic.ack` with `multiple` for a run of settled deliveries.
//!
//! A consumer channel's deliveries are registered as they arrive. When a job is settled its tag
//! is marked done; whenever every tag up to some N is done (acked or nacked individually), a
//! single `basic.ack(N, multiple = true)` covers them all. Jobs finish out of order (different
//! batches), so the ack waits for the oldest unfinished one; that is bounded by one batch's run.
//! `multiple` only ever covers tags this tracker saw settle, so nothing unanswered is acked.
//!
//! # Closing a consumer channel
//! Once its consumer is cancelled, a channel is closed by [`AckTracker::close_when_settled`]:
//! from then on nothing is sent per job; when the last registered delivery is settled, one
//! `basic.ack(multiple)` (one command per run of acks or requeues, in tag order) settles them
//! all, then the channel closes. Deliveries the consumer had buffered but not handled are not
//! nacked one by one: the close returns them.
//!
//! Rule: after a cancel, a channel sends at most a few settlement commands before it closes.
//! RabbitMQ's quorum-queue client in the channel holds back settlements once 32 commands are
//! pending (`rabbit_fifo_client` soft limit) and drops what it holds when the channel closes
//! (rabbitmq-server#10327); settlements dropped that way are acks of answered jobs, which the
//! broker would then redeliver.
//!
//! A tracker that acks each delivery on its own ([`AckTracker::individual`], long jobs) holds
//! nothing back: its channel closes once the window has heard of every settlement, each of
//! which was written to the connection before the window heard of it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    /// Delivered and not yet settled.
    outstanding: BTreeSet<u64>,
    /// Settled, waiting for the tags before them.
    done: BTreeSet<u64>,
    /// Closing: requeued, waiting for the final settlement.
    requeued: BTreeSet<u64>,
    /// The consumer is cancelled: settlements wait for [`AckWindow::final_commands`].
    closing: bool,
}

/// One settlement command for the broker, always with `multiple`: it covers every tag up to
/// `upto` that the commands before it left unsettled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCommand {
    /// `basic.ack(upto, multiple)`.
    Ack { upto: u64 },
    /// `basic.nack(upto, multiple, requeue)`.
    Requeue { upto: u64 },
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
    /// on its own, or — while closing — is to be requeued). Returns the tag to ack with
    /// `multiple`, if a run became complete (never while closing).
    pub fn settle(&mut self, tag: u64, ack: bool) -> Option<u64> {
        if !self.state.outstanding.remove(&tag) {
            return None;
        }
        if self.state.closing {
            if ack {
                self.state.done.insert(tag);
            } else {
                self.state.requeued.insert(tag);
            }
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

    /// From now on settlements are held for [`AckWindow::final_commands`].
    pub fn begin_closing(&mut self) {
        self.state.closing = true;
    }

    pub fn is_closing(&self) -> bool {
        self.state.closing
    }

    /// Once nothing is outstanding: the commands that settle everything held, one per run of
    /// acks or requeues in tag order (usually a single ack). `None` while deliveries are
    /// outstanding; empty once nothing is held.
    pub fn final_commands(&mut self) -> Option<Vec<AckCommand>> {
        if !self.state.outstanding.is_empty() {
            return None;
        }
        let done = std::mem::take(&mut self.state.done);
        let requeued = std::mem::take(&mut self.state.requeued);
        let mut tags: Vec<(u64, bool)> = done.into_iter().map(|t| (t, true)).collect();
        tags.extend(requeued.into_iter().map(|t| (t, false)));
        tags.sort_unstable();
        let mut commands: Vec<AckCommand> = Vec::new();
        for (tag, ack) in tags {
            match (commands.last_mut(), ack) {
                (Some(AckCommand::Ack { upto }), true)
                | (Some(AckCommand::Requeue { upto }), false) => *upto = tag,
                (_, true) => commands.push(AckCommand::Ack { upto: tag }),
                (_, false) => commands.push(AckCommand::Requeue { upto: tag }),
            }
        }
        Some(commands)
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
    /// Woken by every settlement while closing.
    settled: Arc<Notify>,
    coalesce: bool,
}

/// One delivery to settle.
#[derive(Clone)]
pub struct DeliveryRef {
    pub tracker: AckTracker,
    pub tag: u64,
}

/// How long a stopping consumer's channel stays open after its last settlement is written.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How often a closing tracker looks at its channel when no settlement wakes it (a channel
/// lost meanwhile ends the wait: its deliveries went back to the broker with it).
const CLOSING_CHECK: Duration = Duration::from_millis(500);

impl AckTracker {
    /// Coalescing acks: for short jobs that finish in about the order they arrive.
    pub fn new(channel: Channel) -> AckTracker {
        AckTracker {
            channel,
            window: Arc::default(),
            settled: Arc::default(),
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

    /// Deliveries registered and not yet settled.
    pub fn outstanding(&self) -> usize {
        self.window.lock().map(|w| w.outstanding()).unwrap_or(0)
    }

    /// For a channel whose consumer is cancelled (or lost): closes it once the last registered
    /// delivery is settled, so no ack of a job answered meanwhile is lost with it. Coalescing
    /// acks, it holds every settlement from now on and sends the held ones, just before the
    /// close, as one `multiple` command per run (see the module documentation); one ack per
    /// delivery, each settlement has been sent on its own before the window hears of it.
    /// Returns early if the channel is lost meanwhile (the broker then returns its deliveries
    /// itself).
    pub async fn close_when_settled(&self, reason: &str) {
        if self.coalesce {
            if let Ok(mut window) = self.window.lock() {
                window.begin_closing();
            }
        }
        loop {
            let notified = self.settled.notified();
            if !self.channel.status().connected() {
                return;
            }
            let commands = match self.window.lock() {
                Ok(mut window) => window.final_commands(),
                Err(_) => Some(Vec::new()),
            };
            if let Some(commands) = commands {
                for command in commands {
                    let sent = match command {
                        AckCommand::Ack { upto } => {
                            self.channel
                                .basic_ack(upto, BasicAckOptions { multiple: true })
                                .await
                        }
                        AckCommand::Requeue { upto } => {
                            let options = BasicNackOptions {
                                multiple: true,
                                requeue: true,
                            };
                            self.channel.basic_nack(upto, options).await
                        }
                    };
                    if let Err(error) = sent {
                        tracing::warn!(%error, "Final settlement failed; the broker redelivers");
                        return;
                    }
                }
                // RabbitMQ 3.10's quorum-queue client drops settlements it still holds back when a
                // channel closes (rabbitmq-server#10327): give it a moment to pass them on.
                tokio::time::sleep(CLOSE_GRACE).await;
                super::connection::close_channel(&self.channel, reason).await;
                return;
            }
            let _ = tokio::time::timeout(CLOSING_CHECK, notified).await;
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

    /// Returns this delivery to its queue (while closing: with the final settlement). False if
    /// the channel is gone.
    pub async fn requeue(&self) -> bool {
        let channel = &self.tracker.channel;
        if self.closing() {
            self.settle(false);
            return channel.status().connected();
        }
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

    fn closing(&self) -> bool {
        self.tracker
            .window
            .lock()
            .map(|w| w.is_closing())
            .unwrap_or(false)
    }

    /// Marks this delivery settled in the tracker's window (`acked`: to be covered by a
    /// `multiple` ack); the tag up to which an ack may now be sent, if any.
    fn settle(&self, acked: bool) -> Option<u64> {
        let upto = self
            .tracker
            .window
            .lock()
            .ok()
            .and_then(|mut w| w.settle(self.tag, acked));
        self.tracker.settled.notify_waiters();
        upto
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

    /// While closing nothing is sent per job; the final commands are one per run, in order,
    /// and only once nothing is outstanding.
    #[test]
    fn closing_holds_settlements_for_one_final_command_per_run() {
        type Case<'a> = (&'a str, &'a [(u64, bool)], &'a [AckCommand]);
        let cases: &[Case] = &[
            (
                "all acked: one ack",
                &[(3, true), (1, true), (2, true)],
                &[AckCommand::Ack { upto: 3 }],
            ),
            (
                "a requeue in the middle",
                &[(1, true), (2, false), (3, true)],
                &[
                    AckCommand::Ack { upto: 1 },
                    AckCommand::Requeue { upto: 2 },
                    AckCommand::Ack { upto: 3 },
                ],
            ),
            (
                "only requeues",
                &[(2, false), (1, false), (3, false)],
                &[AckCommand::Requeue { upto: 3 }],
            ),
        ];
        for (name, settles, want) in cases {
            let mut w = AckWindow::default();
            for tag in 1..=3 {
                w.delivered(tag);
            }
            w.begin_closing();
            for (i, &(tag, ack)) in settles.iter().enumerate() {
                if i + 1 < settles.len() {
                    assert_eq!(w.final_commands(), None, "{name}: outstanding left");
                }
                assert_eq!(
                    w.settle(tag, ack),
                    None,
                    "{name}: nothing sent while closing"
                );
            }
            assert_eq!(w.final_commands().as_deref(), Some(*want), "{name}");
            assert_eq!(w.final_commands(), Some(vec![]), "{name}: flushed once");
        }
    }

    /// Acks sent before closing are not repeated; what was held waiting for an older tag is
    /// sent with the final command.
    #[test]
    fn closing_after_partial_acks_sends_only_what_is_held() {
        let mut w = AckWindow::default();
        for tag in 1..=4 {
            w.delivered(tag);
        }
        assert_eq!(w.settle(1, true), Some(1));
        assert_eq!(w.settle(3, true), None, "waits for 2");
        w.begin_closing();
        assert_eq!(w.settle(2, true), None);
        assert_eq!(w.final_commands(), None, "4 is outstanding");
        assert_eq!(w.settle(4, true), None);
        assert_eq!(w.final_commands(), Some(vec![AckCommand::Ack { upto: 4 }]));
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

        /// Against a model of the broker (every `multiple` command settles all unsettled tags up
        /// to it; a lone requeue settles its tag): closing at any point, each registered tag ends
        /// acked or requeued exactly as settled, and buffered tags the tracker never saw (above
        /// every registered one) stay for the channel close to return.
        #[test]
        fn closing_settles_each_tag_as_asked_and_leaves_buffered_ones(order in Just((1..=40u64).collect::<Vec<_>>()).prop_shuffle(), requeues in proptest::collection::btree_set(1..=40u64, 0..8), close_at in 0..=40usize) {
            let mut w = AckWindow::default();
            for tag in 1..=40 {
                w.delivered(tag);
            }
            let mut unsettled: BTreeSet<u64> = (1..=45).collect();
            let mut acked = BTreeSet::new();
            let mut requeued = BTreeSet::new();
            fn apply(command: AckCommand, unsettled: &mut BTreeSet<u64>, acked: &mut BTreeSet<u64>, requeued: &mut BTreeSet<u64>) {
                let (AckCommand::Ack { upto } | AckCommand::Requeue { upto }) = command;
                let covered: Vec<u64> = unsettled.range(..=upto).copied().collect();
                for t in covered {
                    unsettled.remove(&t);
                    match command {
                        AckCommand::Ack { .. } => acked.insert(t),
                        AckCommand::Requeue { .. } => requeued.insert(t),
                    };
                }
            }
            for (i, &tag) in order.iter().enumerate() {
                if i == close_at {
                    w.begin_closing();
                }
                let ack = !requeues.contains(&tag);
                if !ack && !w.is_closing() {
                    // A lone nack, sent before the window is told.
                    prop_assert!(unsettled.remove(&tag));
                    requeued.insert(tag);
                }
                if let Some(upto) = w.settle(tag, ack) {
                    apply(AckCommand::Ack { upto }, &mut unsettled, &mut acked, &mut requeued);
                }
            }
            w.begin_closing();
            for command in w.final_commands().expect("nothing outstanding") {
                apply(command, &mut unsettled, &mut acked, &mut requeued);
            }
            let want_acked: BTreeSet<u64> = (1..=40).filter(|t| !requeues.contains(t)).collect();
            prop_assert_eq!(&acked, &want_acked);
            prop_assert_eq!(&requeued, &requeues);
            prop_assert_eq!(unsettled, (41..=45).collect::<BTreeSet<u64>>());
        }
    }
}
