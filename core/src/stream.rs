//! [`EventStream`]: how change events travel through a dataflow.
//!
//! Each record is `(event, time)`: the event and its dataflow time. The time is the event's
//! `clusterTime`, except where a source groups events (a transaction is emitted whole at the time
//! of its last event). As in differential dataflow, a message's capability is only a lower bound
//! of its records' times, so a source sends a whole batch of events, at many times, in one
//! message; operators act on each record's own time.
//!
//! # Invariants
//!
//! * Every record's time is at or after its message's capability.
//! * Records of one time appear in resume-token order within each message; operators that need
//!   a total order within a time (document state) sort by token.

use crate::{ChangeEvent, ClusterTime};

/// A timely stream of change events with their dataflow times (see the module docs).
pub type EventStream<'scope> =
    timely::dataflow::Stream<'scope, ClusterTime, Vec<(ChangeEvent, ClusterTime)>>;
