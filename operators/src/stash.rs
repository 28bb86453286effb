//! [`TimeStash`]: hold updates until their time is closed, then hand them out in time order.
//!
//! The document-state and aggregate operators both need all of a time's input before acting on
//! it (a transaction's events share one time and must apply in token order; an aggregate emits
//! one change per key per time). A `TimeStash` keeps received records with *their own* times (as
//! in differential, a message's capability is only a lower bound of its records' times, so one
//! message carries many times) and one capability at or below the least pending time;
//! [`TimeStash::take_closed`] returns the records of every time the input frontier has passed,
//! sorted by time (stably: arrival order is kept within a time), with one capability valid for
//! all of them, so the operator can send all its output in one message.
//!
//! # Invariants
//!
//! * The held capability is at most the least pending time, and is dropped when nothing is
//!   pending, so an operator built on a stash never holds back the frontier without pending data.
//! * After `take_closed` the held capability is downgraded to the least remaining time.

use changeflow_core::ClusterTime;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// The records of closed times, sorted by time, and a capability valid for all of them.
pub(crate) struct Closed<D> {
    /// A capability at or before every record's time.
    pub(crate) cap: Capability<ClusterTime>,
    /// The records, sorted by time; arrival order within a time.
    pub(crate) records: Vec<(ClusterTime, D)>,
}

/// Records held until the input frontier passes their times.
pub(crate) struct TimeStash<D> {
    held: Option<Capability<ClusterTime>>,
    pending: Vec<(ClusterTime, D)>,
    /// An empty buffer handed back by [`TimeStash::recycle`], reused for the next closed
    /// records: batches are large, and a fresh large allocation per batch costs page faults.
    spare: Vec<(ClusterTime, D)>,
}

impl<D> TimeStash<D> {
    pub(crate) fn new() -> Self {
        TimeStash {
            held: None,
            pending: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Keeps `records` (each with its time, at or after `cap`'s) until their times are closed.
    pub(crate) fn stash(
        &mut self,
        cap: &InputCapability<ClusterTime>,
        output: usize,
        records: impl IntoIterator<Item = (ClusterTime, D)>,
    ) {
        let Some(time) = cap.least().copied() else {
            return;
        };
        let before = self.pending.len();
        self.pending.extend(records);
        debug_assert!(
            self.pending[before..].iter().all(|(t, _)| *t >= time),
            "a record's time precedes its message's capability"
        );
        if self.pending.len() > before && self.held.as_ref().is_none_or(|h| time < *h.time()) {
            self.held = cap.retain_least(output);
        }
    }

    /// Removes and returns the records of every time not in `frontier`'s future (`None` if
    /// there are none).
    pub(crate) fn take_closed(
        &mut self,
        frontier: &MutableAntichain<ClusterTime>,
    ) -> Option<Closed<D>> {
        if self.pending.is_empty() {
            self.held = None;
            return None;
        }
        // Records arrive mostly in time order, so the stable sort is usually one pass (and
        // skipped when already sorted); with a total order the closed times are then a prefix.
        if !self.pending.is_sorted_by_key(|(t, _)| *t) {
            self.pending.sort_by_key(|(t, _)| *t);
        }
        let closed = self
            .pending
            .partition_point(|(t, _)| !frontier.less_equal(t));
        if closed == 0 {
            return None;
        }
        let mut records = std::mem::take(&mut self.spare);
        if closed == self.pending.len() {
            std::mem::swap(&mut records, &mut self.pending);
        } else {
            records.extend(self.pending.drain(..closed));
        }
        let cap = self.held.as_ref()?.clone();
        match self.pending.first().map(|(t, _)| *t) {
            Some(next) => {
                if let Some(held) = self.held.as_mut() {
                    held.downgrade(&next);
                }
            }
            None => self.held = None,
        }
        Some(Closed { cap, records })
    }

    /// Hands back the records of a [`Closed`] once they are used (emptying them), so that
    /// their buffer is reused.
    pub(crate) fn recycle(&mut self, mut records: Vec<(ClusterTime, D)>) {
        records.clear();
        if records.capacity() > self.spare.capacity() {
            self.spare = records;
        }
    }
}
