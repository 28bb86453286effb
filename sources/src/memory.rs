//! A source of change events held in memory: for tests, examples and the book.
//!
//! The events must be in stream order (non-decreasing cluster times). All are emitted in one
//! message in the first activation, each at its cluster time, except that a transaction's
//! events are emitted together at the time of its last event (commit-time grouping, as every
//! source does: see [`crate::commit_time`]); then the capability is dropped, which is the
//! frontier rule for a stream known to be complete.
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_sources::memory::from_events;
//! use timely::dataflow::operators::Inspect;
//! let event = ChangeEvent::from_json(br#"{"_id": {"_data": "82000000030000000104"}, "operationType": "drop",
//!     "clusterTime": {"$timestamp": {"t": 3, "i": 1}}, "ns": {"db": "a", "coll": "b"}}"#).unwrap();
//! timely::execute_directly(move |worker| {
//!     worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         from_events(scope, vec![event.clone()]).inspect(|(e, t)| assert_eq!(*t, e.cluster_time()));
//!     });
//! });
//! ```

use changeflow_core::{ChangeEvent, ClusterTime, EventStream};

use crate::commit_time::{CommitGrouper, TxnCompletion};
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;

/// Emits `events` (in stream order) at their cluster times (transactions at their commit
/// times) on worker 0, then closes.
///
/// # Panics
///
/// If the events are not in non-decreasing time order: that is a bug in the caller's test data.
pub fn from_events<'scope>(
    scope: Scope<'scope, ClusterTime>,
    events: Vec<ChangeEvent>,
) -> EventStream<'scope> {
    let mine = scope.index() == 0;
    source(scope, "MemoryEvents", move |capability, _| {
        let mut capability = Some(capability);
        let mut events = if mine { Some(events) } else { None };
        move |output| {
            let Some(cap) = capability.take() else { return };
            let events = events.take().unwrap_or_default();
            assert!(
                events
                    .windows(2)
                    .all(|w| w[0].cluster_time() <= w[1].cluster_time()),
                "events must be in stream order"
            );
            let mut grouper = CommitGrouper::new(TxnCompletion::default());
            let mut records = Vec::with_capacity(events.len());
            for event in events {
                let time = event.cluster_time();
                grouper.push(event, time, &mut records);
            }
            grouper.finish(&mut records);
            output.session(&cap).give_iterator(records.into_iter());
        }
    })
}

/// Emits `events` (in stream order) like [`from_events`], but `batch` events per activation,
/// downgrading the capability after each batch to the earliest time still to come (the last
/// event's time, or an open transaction's): the frontier advances through the stream as it
/// does with the file and live sources, so downstream operators see closed times while the
/// input is read, not one closed time at the end. Benches use it to compare pipelines as they
/// run on a real stream.
///
/// ```
/// use changeflow_core::{ChangeEvent, ClusterTime};
/// use changeflow_sources::memory::from_events_in_batches;
/// use timely::dataflow::operators::{Inspect, Probe};
/// let events: Vec<ChangeEvent> = (1..=5u32)
///     .map(|t| {
///         ChangeEvent::from_json(format!(r#"{{"_id": {{"_data": "82{t:08X}0000000104"}},
///             "operationType": "drop", "clusterTime": {{"$timestamp": {{"t": {t}, "i": 1}}}},
///             "ns": {{"db": "a", "coll": "b"}}}}"#).as_bytes()).unwrap()
///     })
///     .collect();
/// let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let record = seen.clone();
/// timely::execute_directly(move |worker| {
///     let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
///         from_events_in_batches(scope, events, 2)
///             .inspect(move |(e, t)| record.lock().unwrap().push((e.cluster_time(), *t)))
///             .probe()
///             .0
///     });
///     while !probe.done() {
///         worker.step();
///     }
/// });
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen.len(), 5);
/// assert!(seen.iter().all(|(event_time, time)| event_time == time));
/// ```
///
/// # Panics
///
/// If the events are not in non-decreasing time order, or `batch` is 0.
pub fn from_events_in_batches<'scope>(
    scope: Scope<'scope, ClusterTime>,
    events: Vec<ChangeEvent>,
    batch: usize,
) -> EventStream<'scope> {
    assert!(batch > 0, "batch must be at least 1");
    assert!(
        events
            .windows(2)
            .all(|w| w[0].cluster_time() <= w[1].cluster_time()),
        "events must be in stream order"
    );
    let mine = scope.index() == 0;
    source(scope, "MemoryEventBatches", move |capability, info| {
        let activator = scope.worker().activator_for(info.address.clone());
        let mut capability = Some(capability);
        let mut events = if mine { events } else { Vec::new() }.into_iter();
        let mut grouper = CommitGrouper::new(TxnCompletion::default());
        let mut records = Vec::with_capacity(batch);
        move |output| {
            let Some(cap) = capability.as_mut() else {
                return;
            };
            let mut last = None;
            for event in events.by_ref().take(batch) {
                let time = event.cluster_time();
                last = Some(time);
                grouper.push(event, time, &mut records);
            }
            if last.is_none() {
                grouper.finish(&mut records);
            }
            if !records.is_empty() {
                output.session(cap).give_iterator(records.drain(..));
            }
            match last {
                Some(time) => {
                    let next = grouper.safe_time().map_or(time, |open| open.min(time));
                    cap.downgrade(&next);
                    activator.activate();
                }
                None => capability = None,
            }
        }
    })
}
