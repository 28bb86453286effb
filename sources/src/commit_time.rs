//! Commit-time grouping: every event of a transaction leaves the source at one time.
//!
//! MongoDB gives each event of a multi-document transaction the transaction's `lsid` and
//! `txnNumber`, and sends no end-of-transaction event. A large transaction spans several oplog
//! entries, so its events can carry several clusterTimes. [`CommitGrouper`] holds a
//! transaction's events until the stream has moved past it, then releases all of them at the
//! clusterTime of its **last** event (its commit time), in stream order. Every downstream
//! operator sees the transaction at one dataflow time: whole, or not at all.
//!
//! ```text
//!   stream order ─▶ [CommitGrouper] ─▶ (event, time) records, times never decreasing
//!                     plain event at t ──────────────▶ (e, t) at once
//!                     txn event ─▶ open transactions ──(stream moved past)──▶ (e₁, T) … (eₙ, T)
//!                                  keyed by (lsid, txnNumber)                 T = time of eₙ
//! ```
//!
//! # When a transaction is complete ([`TxnCompletion`])
//!
//! * **Sharded** (the default, right everywhere): only an event or post-batch token at a
//!   clusterTime *later* than the transaction's last event completes it. On a sharded cluster
//!   events of different shards interleave at equal clusterTimes, and the other shards' part of
//!   the same transaction may still follow at that time.
//! * **ReplicaSet**: also the next event *outside* the transaction completes it, whatever its
//!   time. A replica set's oplog is one sequence and a transaction's entries are contiguous in it,
//!   so the first event that is not part of it shows that it has ended. (On a replica set every
//!   other oplog entry has its own later clusterTime, so both rules release at the same point;
//!   this rule is for inputs known to come from one replica set.)
//!
//! # Invariants
//!
//! * Output times never decrease, and within one time events keep stream order.
//! * [`CommitGrouper::safe_time`] is the earliest time anything may still be released at: a
//!   source holds its capability there (the frontier rule, with open transactions).
//! * [`CommitGrouper::resume_token`] is the token of the last event such that it and every event
//!   before it in stream order have been released: the point a restart may resume from.
//! * At the end of the input, open transactions are released as they are: a finite input is the
//!   whole stream (see [`CommitGrouper::finish`]).
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_sources::commit_time::{CommitGrouper, TxnCompletion};
//! let event = |t: u32, txn: Option<i64>| {
//!     let txn = txn.map_or(String::new(), |n| format!(r#", "lsid": {{"id": 1}}, "txnNumber": {n}"#));
//!     ChangeEvent::from_json(format!(r#"{{"_id": {{"_data": "82{t:08X}0000000104"}}, "operationType": "insert",
//!         "clusterTime": {{"$timestamp": {{"t": {t}, "i": 0}}}}, "ns": {{"db": "a", "coll": "b"}},
//!         "documentKey": {{"_id": {t}}}, "fullDocument": {{"_id": {t}}}{txn}}}"#).as_bytes()).unwrap()
//! };
//! let mut grouper = CommitGrouper::new(TxnCompletion::Sharded);
//! let mut out = Vec::new();
//! grouper.push(event(1, None), ClusterTime::new(1, 0), &mut out);     // plain: out at once
//! grouper.push(event(2, Some(7)), ClusterTime::new(2, 0), &mut out);  // a transaction's first oplog entry
//! grouper.push(event(3, Some(7)), ClusterTime::new(3, 0), &mut out);  // … and its second
//! assert_eq!(out.len(), 1);
//! assert_eq!(grouper.safe_time(), Some(ClusterTime::new(3, 0)));
//! grouper.push(event(4, None), ClusterTime::new(4, 0), &mut out);     // the stream moved past: released at t = 3
//! let times: Vec<_> = out.iter().map(|(_, t)| t.seconds()).collect();
//! assert_eq!(times, [1, 3, 3, 4]);
//! ```

use std::collections::{HashSet, VecDeque};

use changeflow_core::{ChangeEvent, ClusterTime, ResumeToken, TokenRef, TxnId};

/// When an open transaction counts as complete (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxnCompletion {
    /// Only an event or token at a later clusterTime completes a transaction (sharded clusters;
    /// correct on replica sets too).
    #[default]
    Sharded,
    /// The next event outside a transaction also completes it (one replica set's oplog).
    ReplicaSet,
}

/// What the grouper has released, for counters and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupingCounts {
    /// Transactions released.
    pub transactions: u64,
    /// Events inside those transactions.
    pub transaction_events: u64,
    /// Transactions whose events carried more than one clusterTime (several oplog entries).
    pub multi_time_transactions: u64,
    /// Events of the largest transaction released.
    pub largest_transaction: u64,
    /// Transactions still open when the input ended, released as they were.
    pub open_at_end: u64,
    /// Events of a transaction that had already been released (the stream showed it complete,
    /// then more of it arrived: a sharded stream whose shards' clocks interleave a
    /// transaction's oplog entries). They are released as a transaction of their own.
    pub late_events: u64,
}

/// How many released transaction ids are remembered to recognise late events.
const RECENT: usize = 4096;

/// A transaction whose end has not been seen.
#[derive(Debug)]
struct Open {
    id: TxnId,
    first: ClusterTime,
    last: ClusterTime,
    events: Vec<ChangeEvent>,
    /// Stream position (count of events pushed before this transaction's first event).
    starts_at: u64,
    /// Its id had already been released: these are late events.
    late: bool,
}

/// Holds transactions until they are complete and re-times their events to their commit time
/// (see the module docs).
#[derive(Debug, Default)]
pub struct CommitGrouper {
    rule: TxnCompletion,
    open: Vec<Open>,
    pushed: u64,
    /// The token of the last event pushed.
    last_pushed: Option<TokenRef>,
    /// While transactions are open: the token of the last event pushed before the first of them.
    before_open: Option<TokenRef>,
    /// The ids of the last [`RECENT`] released transactions, oldest first, and as a set.
    recent: VecDeque<TxnId>,
    recent_set: HashSet<TxnId>,
    counts: GroupingCounts,
}

impl CommitGrouper {
    /// A grouper with no open transaction.
    pub fn new(rule: TxnCompletion) -> Self {
        CommitGrouper {
            rule,
            ..CommitGrouper::default()
        }
    }

    /// Takes the next event in stream order, at `time` (its clusterTime, or the time its source
    /// assigns), and appends what becomes releasable to `out`.
    ///
    /// `time` must not precede the previous event's (stream order).
    pub fn push(
        &mut self,
        event: ChangeEvent,
        time: ClusterTime,
        out: &mut Vec<(ChangeEvent, ClusterTime)>,
    ) {
        let txn = event.txn();
        let rule = self.rule;
        self.release(
            |open| match rule {
                TxnCompletion::Sharded => open.last < time && txn != Some(&open.id),
                TxnCompletion::ReplicaSet => txn != Some(&open.id),
            },
            out,
        );
        self.pushed += 1;
        let previous = self.last_pushed.replace(event.token_ref());
        match event.txn().cloned() {
            None => out.push((event, time)),
            Some(id) => {
                if self.open.is_empty() {
                    self.before_open = previous;
                }
                match self.open.iter_mut().find(|o| o.id == id) {
                    Some(open) => {
                        self.counts.late_events += u64::from(open.late);
                        open.last = time;
                        open.events.push(event);
                    }
                    None => {
                        let late = self.recent_set.contains(&id);
                        self.counts.late_events += u64::from(late);
                        self.open.push(Open {
                            late,
                            id,
                            first: time,
                            last: time,
                            events: vec![event],
                            starts_at: self.pushed - 1,
                        })
                    }
                }
            }
        }
    }

    /// The stream has moved to `time` (a post-batch resume token): releases every transaction
    /// whose last event is earlier.
    pub fn advance(&mut self, time: ClusterTime, out: &mut Vec<(ChangeEvent, ClusterTime)>) {
        self.release(|open| open.last < time, out);
    }

    /// The input ended: releases every open transaction as it is.
    pub fn finish(&mut self, out: &mut Vec<(ChangeEvent, ClusterTime)>) {
        self.counts.open_at_end += self.open.len() as u64;
        self.release(|_| true, out);
    }

    /// The earliest time an event may still be released at: the least last time of the open
    /// transactions (`None` when none is open).
    pub fn safe_time(&self) -> Option<ClusterTime> {
        self.open.iter().map(|o| o.last).min()
    }

    /// Whether a transaction is open.
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// The token of the last event up to which everything has been released (see the module
    /// docs); `None` before the first such event.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        self.resume_point().map(TokenRef::token)
    }

    /// Where [`CommitGrouper::resume_token`]'s token sits (no token is built).
    pub fn resume_point(&self) -> Option<&TokenRef> {
        if self.open.is_empty() {
            self.last_pushed.as_ref()
        } else {
            self.before_open.as_ref()
        }
    }

    /// What has been released so far.
    pub fn counts(&self) -> GroupingCounts {
        self.counts
    }

    /// Releases the open transactions for which `complete` holds, in commit-time order.
    fn release(
        &mut self,
        complete: impl Fn(&Open) -> bool,
        out: &mut Vec<(ChangeEvent, ClusterTime)>,
    ) {
        if self.open.is_empty() || !self.open.iter().any(&complete) {
            return;
        }
        let (mut done, still): (Vec<Open>, Vec<Open>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(complete);
        self.open = still;
        done.sort_by_key(|o| (o.last, o.starts_at));
        for open in done {
            let n = open.events.len() as u64;
            self.counts.transactions += 1;
            self.counts.transaction_events += n;
            self.counts.largest_transaction = self.counts.largest_transaction.max(n);
            if open.first != open.last {
                self.counts.multi_time_transactions += 1;
            }
            let time = open.last;
            out.extend(open.events.into_iter().map(|e| (e, time)));
            if self.recent.len() == RECENT
                && let Some(old) = self.recent.pop_front()
            {
                self.recent_set.remove(&old);
            }
            if self.recent_set.insert(open.id.clone()) {
                self.recent.push_back(open.id);
            }
        }
        if self.open.is_empty() {
            self.before_open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: u32, i: u32, txn: Option<(u8, i64)>) -> ChangeEvent {
        let txn = txn.map_or(String::new(), |(s, n)| {
            format!(r#", "lsid": {{"id": {s}}}, "txnNumber": {n}"#)
        });
        ChangeEvent::from_json(
            format!(
                r#"{{"_id": {{"_data": "82{t:08X}{i:08X}04"}}, "operationType": "delete",
                "clusterTime": {{"$timestamp": {{"t": {t}, "i": {i}}}}}, "ns": {{"db": "a", "coll": "b"}},
                "documentKey": {{"_id": 1}}{txn}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn times(out: &[(ChangeEvent, ClusterTime)]) -> Vec<(u32, u32)> {
        out.iter()
            .map(|(e, t)| (e.cluster_time().seconds(), t.seconds()))
            .collect()
    }

    #[test]
    fn sharded_rule_waits_for_a_later_time() {
        let mut g = CommitGrouper::new(TxnCompletion::Sharded);
        let mut out = Vec::new();
        g.push(event(5, 1, Some((1, 1))), ClusterTime::new(5, 1), &mut out);
        // Another shard's plain event at the same time does not complete the transaction.
        g.push(event(5, 1, None), ClusterTime::new(5, 1), &mut out);
        assert_eq!(times(&out), [(5, 5)]);
        assert!(g.has_open());
        // The token of the plain event is not a resume point: the transaction before it is open.
        assert_eq!(g.resume_token(), None);
        g.advance(ClusterTime::new(5, 1), &mut out);
        assert!(
            g.has_open(),
            "a token at the same time does not complete it"
        );
        g.advance(ClusterTime::new(5, 2), &mut out);
        assert!(!g.has_open());
        assert_eq!(times(&out), [(5, 5), (5, 5)]);
        assert_eq!(g.resume_token(), Some(event(5, 1, None).token()));
    }

    #[test]
    fn replica_set_rule_completes_on_the_next_outside_event() {
        let mut g = CommitGrouper::new(TxnCompletion::ReplicaSet);
        let mut out = Vec::new();
        g.push(event(5, 1, Some((1, 1))), ClusterTime::new(5, 1), &mut out);
        g.push(event(5, 1, None), ClusterTime::new(5, 1), &mut out);
        assert!(!g.has_open());
        assert_eq!(times(&out), [(5, 5), (5, 5)]);
    }

    #[test]
    fn multi_entry_transactions_land_at_their_last_time_in_commit_order() {
        let mut g = CommitGrouper::new(TxnCompletion::Sharded);
        let mut out = Vec::new();
        // Transaction (1, 1) has three oplog entries at t = 1, 2, 3.
        g.push(event(1, 1, Some((1, 1))), ClusterTime::new(1, 1), &mut out);
        g.push(event(2, 1, Some((1, 1))), ClusterTime::new(2, 1), &mut out);
        g.push(event(3, 1, Some((1, 1))), ClusterTime::new(3, 1), &mut out);
        // Transaction (2, 9) commits at t = 3 too (another shard).
        g.push(event(3, 1, Some((2, 9))), ClusterTime::new(3, 1), &mut out);
        assert!(out.is_empty());
        assert_eq!(g.safe_time(), Some(ClusterTime::new(3, 1)));
        g.push(event(6, 1, None), ClusterTime::new(6, 1), &mut out);
        assert_eq!(times(&out), [(1, 3), (2, 3), (3, 3), (3, 3), (6, 6)]);
        let counts = g.counts();
        assert_eq!(counts.transactions, 2);
        assert_eq!(counts.multi_time_transactions, 1);
        assert_eq!(counts.largest_transaction, 3);
        assert_eq!(counts.transaction_events, 4);
        assert_eq!(counts.late_events, 0);
    }

    #[test]
    fn an_event_after_its_transaction_was_released_is_counted_late() {
        let mut g = CommitGrouper::new(TxnCompletion::Sharded);
        let mut out = Vec::new();
        g.push(event(1, 1, Some((1, 1))), ClusterTime::new(1, 1), &mut out);
        // An event of another shard at a later time completes (1, 1) ...
        g.push(event(2, 1, None), ClusterTime::new(2, 1), &mut out);
        // ... so a further entry of it can only be released on its own.
        g.push(event(3, 1, Some((1, 1))), ClusterTime::new(3, 1), &mut out);
        g.finish(&mut out);
        assert_eq!(times(&out), [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(g.counts().late_events, 1);
    }

    #[test]
    fn a_transaction_open_at_the_end_is_released_and_counted() {
        let mut g = CommitGrouper::new(TxnCompletion::Sharded);
        let mut out = Vec::new();
        g.push(event(1, 1, Some((1, 1))), ClusterTime::new(1, 1), &mut out);
        assert!(out.is_empty());
        g.finish(&mut out);
        assert_eq!(times(&out), [(1, 1)]);
        assert_eq!(g.counts().open_at_end, 1);
    }
}
