//! [`TimeStash`]: hold updates until their time is closed, then hand them out in time order.
//!
//! The document-state and aggregate operators both need all of a time's input before acting on
//! it (a transaction's events share one time and must apply in token order; an aggregate emits
//! one change per key per time). A `TimeStash` keeps received records by *their own* time (as in
//! differential, a message's capability is only a lower bound of its records' times, so one
//! message carries many times) and one capability at or below the least pending time;
//! [`TimeStash::take_closed`] returns the records of every time the input frontier has passed,
//! in time order, with one capability valid for all of them, so the operator can send all its
//! output in one message.
//!
//! # Invariants
//!
//! * The held capability is at most the least pending time, and is dropped when nothing is
//!   pending, so an operator built on a stash never holds back the frontier without pending data.
//! * After `take_closed` the held capability is downgraded to the least remaining time.

use std::collections::BTreeMap;

use changeflow_core::ClusterTime;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// Data held by time until the input frontier passes it.
pub(crate) struct TimeStash<D> {
    held: Option<Capability<ClusterTime>>,
    pending: BTreeMap<ClusterTime, Vec<D>>,
}

impl<D> TimeStash<D> {
    pub(crate) fn new() -> Self {
        TimeStash { held: None, pending: BTreeMap::new() }
    }

    /// Keeps `records` (each with its time, at or after `cap`'s) until their times are closed.
    pub(crate) fn stash(&mut self, cap: &InputCapability<ClusterTime>, output: usize, records: impl IntoIterator<Item = (ClusterTime, D)>) {
        let Some(time) = cap.least().copied() else { return };
        let mut any = false;
        for (t, d) in records {
            debug_assert!(t >= time, "a record's time precedes its message's capability");
            self.pending.entry(t).or_default().push(d);
            any = true;
        }
        if any && self.held.as_ref().is_none_or(|h| time < *h.time()) {
            self.held = cap.retain_least(output);
        }
    }

    /// Removes and returns, in time order, the data of every time not in `frontier`'s future,
    /// with a capability valid for all of them (`None` if nothing is closed).
    pub(crate) fn take_closed(&mut self, frontier: &MutableAntichain<ClusterTime>) -> Option<(Capability<ClusterTime>, Vec<(ClusterTime, Vec<D>)>)> {
        let first = *self.pending.keys().next()?;
        if frontier.less_equal(&first) {
            return None;
        }
        let mut closed = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            let (time, data) = entry.remove_entry();
            closed.push((time, data));
        }
        let held = self.held.take()?;
        let cap = held.clone();
        if let Some(next) = self.pending.keys().next() {
            let mut held = held;
            held.downgrade(next);
            self.held = Some(held);
        }
        Some((cap, closed))
    }
}
