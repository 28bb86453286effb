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
