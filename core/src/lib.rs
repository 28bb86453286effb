//! # changeflow-core: the change-event model
//!
//! Everything that flows through a changeflow dataflow starts here:
//!
//! * [`ChangeEvent`]: one MongoDB change event, kept as its BSON bytes with its header decoded
//!   once ([`OperationType`], [`Namespace`], [`TxnId`], the resume token) and every other field
//!   read lazily.
//! * [`ClusterTime`]: MongoDB's `Timestamp(t, i)` packed as `(t << 32) | i`, the dataflow time.
//!   It implements timely's `Timestamp`, `Refines<()>`, `TotalOrder` and differential's `Lattice`.
//! * [`ResumeToken`]: where a stream is; decodes the cluster time at the front of `_data` and
//!   orders tokens like the stream.
//! * [`Document`]: a BSON document as cheap shared bytes; [`raw`] walks and writes them.
//! * [`extjson`]: MongoDB Extended JSON (relaxed and canonical) straight to BSON bytes, so that
//!   recorded streams replay exactly as they arrived.
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! let line = br#"{"_id": {"_data": "8200000007000000012B"}, "operationType": "delete",
//!     "clusterTime": {"$timestamp": {"t": 7, "i": 1}}, "ns": {"db": "shop", "coll": "orders"},
//!     "documentKey": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}"#;
//! let event = ChangeEvent::from_json(line)?;
//! assert_eq!(event.cluster_time(), ClusterTime::new(7, 1));
//! assert_eq!(event.token().cluster_time(), Some(event.cluster_time()));
//! # Ok::<(), changeflow_core::Error>(())
//! ```
#![deny(missing_docs)]

pub mod calendar;
pub mod cluster_time;
pub mod document;
pub mod error;
pub mod event;
pub mod extjson;
pub mod raw;
pub mod resume_token;
pub mod stream;
pub mod synthetic;

pub use cluster_time::{ClusterTime, ClusterTimeSummary};
pub use document::Document;
pub use error::Error;
pub use event::{ChangeEvent, Namespace, OperationType, TokenRef, TxnId};
pub use resume_token::ResumeToken;
pub use stream::EventStream;
