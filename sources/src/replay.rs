//! The replay source: a file of recorded change events as a timely stream.
//!
//! ```text
//!   file (JSON lines / BSON) ──EventReader──▶ [replay source] ──▶ Stream<ClusterTime, ChangeEvent>
//!                                  │ bad lines                      (worker 0 reads; other workers
//!                                  ▼                                 hold no capability)
//!                           dead-letter file
//! ```
//!
//! # Progress tracking (the frontier rule)
//!
//! A reader thread reads and decodes the file and hands batches to the source operator
//! ([`crate::feed`]), so decoding runs beside the dataflow on another core.
//!
//! * The source starts with a capability at `ClusterTime::MIN`.
//! * Each batch of up to `batch` events is sent in one message under the current
//!   capability, each record carrying its own `clusterTime` (a transaction's events: the
//!   clusterTime of its last event, once complete; see [`crate::commit_time`]); then it
//!   downgrades the capability to the time of the last event emitted: more events at that time may follow,
//!   so the source never releases a time it may still emit at, and it never holds a time it has
//!   passed (the capability moves as soon as a later event is read).
//! * At the end of the input (or after an `invalidate`, which ends a change stream) it drops the
//!   capability; the frontier becomes empty and every view settles.
//! * When following a growing file, reaching the end holds the capability; the reader looks
//!   again after `poll_interval`.
//! * On a fatal error the source records it in its [`SourceStatus`] and *keeps* its capability:
//!   no time is released that was not fully read, so nothing downstream commits a partial time.
//!   The driver sees the error and stops the dataflow.
//!
//! An event whose time is earlier than the capability (an input not in stream order) is a fatal
//! [`SourceError::OutOfOrder`].
//!
//! ```
//! use changeflow_core::ClusterTime;
//! use changeflow_sources::{replay::{replay, ReplayOptions}, reader::ReaderOptions};
//! use timely::dataflow::operators::{Inspect, Probe};
//! let path = std::env::temp_dir().join(format!("cf-replay-doc-{}.jsonl", std::process::id()));
//! std::fs::write(&path, concat!(
//!     r#"{"_id": {"_data": "82000000010000000104"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "a", "coll": "b"}}"#, "\n",
//!     r#"{"_id": {"_data": "82000000020000000104"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 2, "i": 1}}, "ns": {"db": "a", "coll": "c"}}"#, "\n")).unwrap();
//! let options = ReplayOptions::new(ReaderOptions::new(&path));
//! let status = options.status();
//! timely::execute_directly(move |worker| {
//!     let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         replay(scope, options.clone()).probe().0
//!     });
//!     while !probe.done() { worker.step(); }
//! });
//! assert_eq!(status.events(), 2);
//! assert!(status.is_finished());
//! # std::fs::remove_file(&path).ok();
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use changeflow_core::{ChangeEvent, ClusterTime, EventStream, OperationType};
use timely::dataflow::Scope;

use crate::commit_time::TxnCompletion;
use crate::feed::{Feed, fed_source};
use crate::reader::{EventReader, Read, ReaderOptions};
use crate::{SourceError, SourceStatus};

/// How to replay a file.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The input and its bad-input policy.
    pub reader: ReaderOptions,
    /// At most this many events per activation (bounds latency and batch size).
    pub batch: usize,
    /// When following, how long to wait at the end of the file before looking again.
    pub poll_interval: Duration,
    /// When following, end the input after this long without new data (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Keep reading after an `invalidate` event (a recording resumed with `startAfter`).
    pub continue_after_invalidate: bool,
    /// When a transaction counts as complete (see [`crate::commit_time`]).
    pub txn_completion: TxnCompletion,
    /// Drop every event released before this time: a restart from a checkpoint at this
    /// frontier re-reads the file from its start and emits only what was not committed.
    pub skip_before: Option<ClusterTime>,
    status: Arc<SourceStatus>,
}

impl ReplayOptions {
    /// Replays `reader` once, in batches of 4096 events.
    pub fn new(reader: ReaderOptions) -> Self {
        ReplayOptions {
            reader,
            batch: 4096,
            poll_interval: Duration::from_millis(50),
            idle_timeout: None,
            continue_after_invalidate: false,
            txn_completion: TxnCompletion::default(),
            skip_before: None,
            status: SourceStatus::new(),
        }
    }
    /// The status shared by every worker's copy of this source and the driver.
    pub fn status(&self) -> Arc<SourceStatus> {
        Arc::clone(&self.status)
    }
}

/// Replays the file in `options` into `scope` as a stream of change events at their cluster
/// times (see the module docs for the frontier rule). A reader thread started by worker 0 reads
/// and decodes; other workers emit nothing.
pub fn replay<'scope>(
    scope: Scope<'scope, ClusterTime>,
    options: ReplayOptions,
) -> EventStream<'scope> {
    let status = options.status();
    fed_source(scope, "Replay", status.clone(), 4, move |feed| {
        read_file(feed, &options, &status)
    })
}

/// The reader thread: reads the file in batches and feeds them to the source.
fn read_file(mut feed: Feed, options: &ReplayOptions, status: &SourceStatus) {
    feed.set_txn_completion(options.txn_completion);
    if let Some(time) = options.skip_before {
        feed.skip_before(time);
    }
    let mut input = match EventReader::open(options.reader.clone()) {
        Ok(input) => input,
        Err(e) => return feed.fail(e),
    };
    let mut last_data = Instant::now();
    let mut batch: Vec<(ChangeEvent, ClusterTime)> = Vec::with_capacity(options.batch);
    let mut last_time = ClusterTime::MIN;
    loop {
        let mut idle = false;
        let mut ended = false;
        while batch.len() < options.batch {
            match input.next_event() {
                Ok(Read::Event { line, event }) => {
                    let time = event.cluster_time();
                    if time < last_time {
                        let _ = feed.events(std::mem::take(&mut batch));
                        return feed.fail(SourceError::OutOfOrder {
                            path: input.path().to_path_buf(),
                            line,
                            time,
                            frontier: last_time,
                        });
                    }
                    last_time = time;
                    let invalidates = event.operation() == &OperationType::Invalidate
                        && !options.continue_after_invalidate;
                    batch.push((event, time));
                    if invalidates {
                        ended = true;
                        break;
                    }
                }
                Ok(Read::DeadLettered { .. }) => status.set_dead_lettered(input.dead_lettered()),
                Ok(Read::Idle) => {
                    idle = true;
                    break;
                }
                Ok(Read::End) => {
                    ended = true;
                    break;
                }
                Err(e) => {
                    let _ = feed.events(std::mem::take(&mut batch));
                    return feed.fail(e);
                }
            }
        }
        if !batch.is_empty() {
            last_data = Instant::now();
            let full = std::mem::replace(&mut batch, feed.buffer(options.batch));
            if feed.events(full).is_err() {
                return;
            }
        }
        if ended {
            return feed.end();
        }
        if idle {
            if options
                .idle_timeout
                .is_some_and(|limit| last_data.elapsed() >= limit)
            {
                return feed.end();
            }
            std::thread::sleep(options.poll_interval);
        }
    }
}
