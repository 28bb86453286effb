//! # changeflow-sources: where change events come from
//!
//! A source turns a change stream into a timely stream of [`ChangeEvent`]s at their
//! [`ClusterTime`]s, and follows one rule for its frontier: after emitting an event at `t` it
//! holds its capability at `t` (more events at `t` may follow) and moves past `t` only when a
//! later event (or, for live streams, a post-batch resume token) shows the stream has moved on.
//!
//! * [`replay`]: recorded events from a file of Extended JSON lines or BSON documents, once or
//!   following the file as it grows; bad lines stop the source or go to a dead-letter file.
//! * [`feed`]: a source fed by a reader thread through a bounded channel (replay uses it; live
//!   streams will).
//! * [`commit_time`]: every event of a transaction is emitted at one time, the clusterTime of
//!   its last event, once the stream has moved past it (the feed applies it to every source).
//! * [`memory`]: events held in memory, for tests and examples.
//! * [`reader`]: the file reader under the replay source, usable without timely.
//! * [`SourceStatus`]: progress, counters and failure, shared with the driver.
//!
//! [`ChangeEvent`]: changeflow_core::ChangeEvent
//! [`ClusterTime`]: changeflow_core::ClusterTime
#![deny(missing_docs)]

pub mod commit_time;
pub mod error;
pub mod feed;
pub mod memory;
pub mod reader;
pub mod replay;
pub mod status;

pub use error::SourceError;
pub use status::SourceStatus;
