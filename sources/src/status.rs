//! [`SourceStatus`]: what a running source shares with the code that drives the dataflow.
//!
//! A source runs inside a timely worker; the program around it needs to know how far it got
//! (its frontier and the resume token at that frontier, for checkpoints), what it counted, and
//! whether it failed. One `SourceStatus` is shared (an `Arc`) by every worker's copy of the
//! source and by the driver.
//!
//! ```
//! use changeflow_sources::SourceStatus;
//! let status = SourceStatus::new();
//! assert!(!status.is_finished() && status.error().is_none());
//! assert_eq!(status.events(), 0);
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use changeflow_core::{ClusterTime, ResumeToken};

use crate::SourceError;
use crate::commit_time::GroupingCounts;

/// Progress, counters and failure of one source, shared across threads.
#[derive(Debug, Default)]
pub struct SourceStatus {
    events: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    finished: AtomicBool,
    error: Mutex<Option<String>>,
    failure: Mutex<Option<SourceError>>,
    position: Mutex<Option<(ClusterTime, Option<ResumeToken>)>>,
    grouping: Mutex<GroupingCounts>,
    checkpoint_wanted: AtomicBool,
    candidates: Mutex<Vec<(ClusterTime, Option<ResumeToken>)>>,
}

impl SourceStatus {
    /// A fresh status: nothing read, not finished, no error.
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }
    /// Events emitted so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
    /// Bad lines written to the dead-letter file so far.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Events dropped because a restart re-read them from before its checkpoint (already
    /// committed; see [`crate::feed::Feed::skip_before`]).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Whether the source reached the end of its input and released its capability.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
    /// The error that stopped the source, as text (the typed error is taken with
    /// [`SourceStatus::take_error`]).
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
    /// Takes the typed error that stopped the source, if any.
    pub fn take_error(&self) -> Option<SourceError> {
        self.failure.lock().ok().and_then(|mut e| e.take())
    }
    /// The source's frontier `F` and its checkpoint token `K`: everything before `F` is
    /// emitted, more events may still follow at `F`, and a restart that resumes after `K` and
    /// skips what is released before `F` emits exactly what was not emitted before `F`
    /// (`K` is `None` when the restart must begin where the source first began).
    pub fn position(&self) -> Option<(ClusterTime, Option<ResumeToken>)> {
        self.position.lock().ok().and_then(|p| p.clone())
    }

    /// Asks the source for a checkpoint candidate: the next time its frontier moves (or its
    /// input ends), it records the new `(frontier, checkpoint token)` pair
    /// ([`SourceStatus::checkpoint_candidates`]) *before* emitting anything at or after that
    /// frontier. So an operator that sees a time `t` can already see every candidate `F ≤ t`,
    /// and can close its output at exactly `F` (an aligned checkpoint, with no marker records).
    pub fn request_checkpoint(&self) {
        self.checkpoint_wanted.store(true, Ordering::SeqCst);
    }

    /// The checkpoint candidates recorded after `after` (all of them for `None`), oldest first.
    pub fn checkpoint_candidates(
        &self,
        after: Option<ClusterTime>,
    ) -> Vec<(ClusterTime, Option<ResumeToken>)> {
        self.candidates
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(t, _)| after.is_none_or(|a| *t > a))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets the candidates at or before `time` (they were checkpointed or abandoned).
    pub fn forget_candidates_through(&self, time: ClusterTime) {
        if let Ok(mut c) = self.candidates.lock() {
            c.retain(|(t, _)| *t > time);
        }
    }

    /// Records a checkpoint candidate if one was asked for (called by the feed before it sends
    /// the frontier `time`).
    pub(crate) fn offer_candidate(&self, time: ClusterTime, token: &Option<ResumeToken>) {
        if self.checkpoint_wanted.swap(false, Ordering::SeqCst) {
            self.record_candidate(time, token);
        }
    }

    /// Records a checkpoint candidate whether or not one was asked for: the input ended, and a
    /// final checkpoint covers everything read.
    pub(crate) fn record_candidate(&self, time: ClusterTime, token: &Option<ResumeToken>) {
        if let Ok(mut c) = self.candidates.lock()
            && c.last().is_none_or(|(t, _)| *t < time)
        {
            c.push((time, token.clone()));
        }
    }

    /// What commit-time grouping has done: transactions released, their sizes, how many spanned
    /// several clusterTimes.
    pub fn transactions(&self) -> GroupingCounts {
        self.grouping.lock().map(|g| *g).unwrap_or_default()
    }

    pub(crate) fn set_grouping(&self, counts: GroupingCounts) {
        if let Ok(mut g) = self.grouping.lock() {
            *g = counts;
        }
    }
    pub(crate) fn add_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set_dead_lettered(&self, n: u64) {
        self.dead_lettered.store(n, Ordering::Relaxed);
    }
    pub(crate) fn set_position(&self, time: ClusterTime, token: Option<ResumeToken>) {
        if let Ok(mut p) = self.position.lock() {
            *p = Some((time, token));
        }
    }
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }
    pub(crate) fn fail(&self, error: SourceError) {
        if let (Ok(mut text), Ok(mut typed)) = (self.error.lock(), self.failure.lock())
            && text.is_none()
        {
            *text = Some(error.to_string());
            *typed = Some(error);
        }
    }
}
