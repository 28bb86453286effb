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
//! * The source starts with a capability at `ClusterTime::MIN`.
//! * Each activation reads up to `batch` events and sends them in one message under the current
//!   capability, each record carrying its own `clusterTime` (see [`EventStream`]); then it
//!   downgrades the capability to the time of the last event emitted: more events at that time may follow,
//!   so the source never releases a time it may still emit at, and it never holds a time it has
//!   passed (the capability moves as soon as a later event is read).
//! * At the end of the input (or after an `invalidate`, which ends a change stream) it drops the
//!   capability; the frontier becomes empty and every view settles.
//! * When following a growing file, reaching the end holds the capability and re-activates the
//!   operator after `poll_interval`.
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
use timely::dataflow::operators::generic::operator::source;

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
            status: SourceStatus::new(),
        }
    }
    /// The status shared by every worker's copy of this source and the driver.
    pub fn status(&self) -> Arc<SourceStatus> {
        Arc::clone(&self.status)
    }
}

/// Replays the file in `options` into `scope` as a stream of change events at their cluster
/// times (see the module docs for the frontier rule). Worker 0 reads; other workers emit nothing.
pub fn replay<'scope>(
    scope: Scope<'scope, ClusterTime>,
    options: ReplayOptions,
) -> EventStream<'scope> {
    let reads = scope.index() == 0;
    let activations = scope.activations();
    source(scope, "Replay", move |capability, info| {
        let activator = timely::scheduling::Activator::new(info.address, activations);
        let mut capability = reads.then_some(capability);
        let mut reader: Option<EventReader> = None;
        let mut last_data = Instant::now();
        let mut run: Vec<(ChangeEvent, ClusterTime)> = Vec::new();
        let status = options.status();
        move |output| {
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if status.error().is_some() {
                return;
            }
            if reader.is_none() {
                match EventReader::open(options.reader.clone()) {
                    Ok(r) => reader = Some(r),
                    Err(e) => return status.fail(e),
                }
            }
            let Some(input) = reader.as_mut() else { return };
            let mut emitted = 0u64;
            let mut last_event: Option<(ClusterTime, Option<changeflow_core::ResumeToken>)> = None;
            let mut outcome = Outcome::More;
            let mut run_time = *cap.time();
            for _ in 0..options.batch {
                match input.next_event() {
                    Ok(Read::Event { line, event }) => {
                        let time = event.cluster_time();
                        if time < *cap.time() {
                            let frontier = *cap.time();
                            outcome = Outcome::Failed(SourceError::OutOfOrder {
                                path: input.path().to_path_buf(),
                                line,
                                time,
                                frontier,
                            });
                            break;
                        }
                        if time < run_time {
                            outcome = Outcome::Failed(SourceError::OutOfOrder {
                                path: input.path().to_path_buf(),
                                line,
                                time,
                                frontier: run_time,
                            });
                            break;
                        }
                        run_time = time;
                        let ends = event.operation() == &OperationType::Invalidate
                            && !options.continue_after_invalidate;
                        if ends {
                            last_event = Some((time, Some(event.token())));
                        }
                        run.push((event, time));
                        emitted += 1;
                        if ends {
                            outcome = Outcome::End;
                            break;
                        }
                    }
                    Ok(Read::DeadLettered { .. }) => {
                        status.set_dead_lettered(input.dead_lettered())
                    }
                    Ok(Read::Idle) => {
                        outcome = Outcome::Idle;
                        break;
                    }
                    Ok(Read::End) => {
                        outcome = Outcome::End;
                        break;
                    }
                    Err(e) => {
                        outcome = Outcome::Failed(e);
                        break;
                    }
                }
            }
            if let Some((last, time)) = run.last() {
                last_event.get_or_insert_with(|| (*time, Some(last.token())));
                output.session(&*cap).give_iterator(run.drain(..));
            }
            status.add_events(emitted);
            if let Some((time, token)) = last_event {
                cap.downgrade(&time);
                status.set_position(time, token);
                last_data = Instant::now();
            }
            match outcome {
                Outcome::More => activator.activate(),
                Outcome::Idle => {
                    if options
                        .idle_timeout
                        .is_some_and(|limit| last_data.elapsed() >= limit)
                    {
                        capability = None;
                        status.finish();
                    } else {
                        activator.activate_after(options.poll_interval);
                    }
                }
                Outcome::End => {
                    capability = None;
                    status.finish();
                }
                Outcome::Failed(e) => status.fail(e),
            }
        }
    })
}

enum Outcome {
    More,
    Idle,
    End,
    Failed(SourceError),
}
