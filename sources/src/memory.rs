//! A source of change events held in memory: for tests, examples and the book.
//!
//! The events must be in stream order (non-decreasing cluster times). All are emitted at their
//! times in the first activation, then the capability is dropped, which is the frontier rule for
//! a stream known to be complete.
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_sources::memory::from_events;
//! use timely::dataflow::operators::{Inspect, Probe};
//! let event = ChangeEvent::from_json(br#"{"_id": {"_data": "82000000030000000104"}, "operationType": "drop",
//!     "clusterTime": {"$timestamp": {"t": 3, "i": 1}}, "ns": {"db": "a", "coll": "b"}}"#).unwrap();
//! timely::execute_directly(move |worker| {
//!     worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         from_events(scope, vec![event.clone()]).inspect_time(|t, e| assert_eq!(*t, e.cluster_time()));
//!     });
//! });
//! ```

use changeflow_core::{ChangeEvent, ClusterTime};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

/// Emits `events` (in stream order) at their cluster times on worker 0, then closes.
///
/// # Panics
///
/// If the events are not in non-decreasing time order: that is a bug in the caller's test data.
pub fn from_events<'scope>(scope: Scope<'scope, ClusterTime>, events: Vec<ChangeEvent>) -> Stream<'scope, ClusterTime, Vec<ChangeEvent>> {
    let mine = scope.index() == 0;
    source(scope, "MemoryEvents", move |capability, _| {
        let mut capability = Some(capability);
        let mut events = if mine { Some(events) } else { None };
        move |output| {
            let Some(mut cap) = capability.take() else { return };
            for event in events.take().unwrap_or_default() {
                let time = event.cluster_time();
                assert!(*cap.time() <= time, "events must be in stream order");
                cap.downgrade(&time);
                output.session(&cap).give(event);
            }
        }
    })
}
