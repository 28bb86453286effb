//! What every record-batch writer does: take batches, commit frontiers, roll files.
//!
//! ```text
//!   write(batch) ─▶ same schema as the open file? ── no ──▶ close it (complete up to the last
//!                   │ yes                                    committed frontier), open the next
//!                   ▼                                        file of a new series
//!               append to the open file (under a temporary name)
//!   commit(frontier) ─▶ roll policy reached (rows / bytes / age)? ── yes ──▶ close: write the
//!                                                                  frontier into the metadata,
//!                                                                  fsync, rename into place
//!   commit(None) ─▶ the input ended: close the open file as final (`changeflow.complete=true`);
//!                   if the last file was just rolled, write an empty final file
//! ```
//!
//! # Invariants
//!
//! * A file appears under its final name only when complete: it is written under a hidden
//!   temporary name in the same directory and renamed, so readers never see half a file.
//! * Files end at commits (a roll waits for the next committed frontier) or at a schema change.
//!   Each file's metadata says the frontier `F` it is complete up to: every change at a time
//!   before `F` is in this file or an earlier one. Summing `_diff` per row over all files up to
//!   one whose frontier is `F` gives the collection as of every time before `F`.
//! * The last file of a finished input always says `changeflow.complete = true`.
//! * A file's metadata keys: `changeflow.frontier` (the packed cluster time, absent when final),
//!   `changeflow.complete` (`true` when the input ended), `changeflow.series` (the schema
//!   series, from 0; a new series starts whenever the schema changes).

use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use changeflow_core::ClusterTime;

use crate::SinkError;

/// A destination for record batches, committed up to frontiers.
pub trait BatchWriter {
    /// Writes one batch. A batch whose schema differs from the previous one starts a new series
    /// (a new file, or a new IPC stream).
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError>;

    /// Everything at times before `frontier` has been written (`None`: the input ended, and the
    /// writer closes its output).
    fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError>;

    /// The complete files written so far, in order (none for writers that do not write files).
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// A checkpoint at `frontier`: everything before it is written and made durable now (a
    /// file writer closes its open file, whatever the roll policy says). Returns the writer's
    /// position to record in the checkpoint: for file writers the number the next file gets.
    fn checkpoint(&mut self, frontier: ClusterTime) -> Result<u64, SinkError> {
        self.commit(Some(frontier))?;
        Ok(0)
    }

    /// A restart from a checkpoint whose position was `position`: output written after it is
    /// removed (for file writers: temporaries and files numbered `position` or later) and
    /// writing continues from there.
    fn recover(&mut self, position: u64) -> Result<(), SinkError> {
        let _ = position;
        Ok(())
    }
}

impl<W: BatchWriter + ?Sized> BatchWriter for Box<W> {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        (**self).write(batch)
    }
    fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        (**self).commit(frontier)
    }
    fn files(&self) -> Vec<PathBuf> {
        (**self).files()
    }
    fn checkpoint(&mut self, frontier: ClusterTime) -> Result<u64, SinkError> {
        (**self).checkpoint(frontier)
    }
    fn recover(&mut self, position: u64) -> Result<(), SinkError> {
        (**self).recover(position)
    }
}

/// When a rolling writer starts a new file (checked at each commit; any limit reached rolls).
///
/// ```
/// use changeflow_sinks::writer::RollPolicy;
/// let policy = RollPolicy::rows(10_000).with_bytes(64 << 20);
/// assert!(policy.due(10_000, 0, std::time::Duration::ZERO));
/// assert!(!policy.due(9_999, 1 << 20, std::time::Duration::from_secs(3600)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollPolicy {
    /// Roll once a file has this many rows.
    pub max_rows: Option<u64>,
    /// Roll once a file has about this many bytes (encoded, or buffered for IPC).
    pub max_bytes: Option<u64>,
    /// Roll once a file has been open this long.
    pub max_age: Option<Duration>,
}

impl RollPolicy {
    /// One file per series: roll only when the schema changes or the input ends.
    pub fn never() -> RollPolicy {
        RollPolicy::default()
    }
    /// Roll every `n` rows.
    pub fn rows(n: u64) -> RollPolicy {
        RollPolicy {
            max_rows: Some(n),
            ..RollPolicy::default()
        }
    }
    /// Also roll at `n` bytes.
    pub fn with_bytes(mut self, n: u64) -> RollPolicy {
        self.max_bytes = Some(n);
        self
    }
    /// Also roll after `age`.
    pub fn with_age(mut self, age: Duration) -> RollPolicy {
        self.max_age = Some(age);
        self
    }
    /// Whether a file with `rows` rows, `bytes` bytes, open for `age`, is due to roll.
    pub fn due(&self, rows: u64, bytes: u64, age: Duration) -> bool {
        self.max_rows.is_some_and(|n| rows >= n)
            || self.max_bytes.is_some_and(|n| bytes >= n)
            || self.max_age.is_some_and(|n| age >= n)
    }
}

/// The metadata of a closed file: frontier, completeness and series.
pub(crate) fn file_metadata(frontier: Option<ClusterTime>, series: u64) -> Vec<(String, String)> {
    let mut metadata = Vec::new();
    if let Some(t) = frontier {
        metadata.push(("changeflow.frontier".to_string(), t.as_u64().to_string()));
    }
    metadata.push((
        "changeflow.complete".to_string(),
        frontier.is_none().to_string(),
    ));
    metadata.push(("changeflow.series".to_string(), series.to_string()));
    metadata
}
