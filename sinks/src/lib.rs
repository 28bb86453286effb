//! # changeflow-sinks: where views and collections go
//!
//! The last step of the data walk (event → time → document state → view → **sink**):
//!
//! ```text
//!   documents / view ──on_closed_times──▶ arrow (BSON → Arrow, `_time`, `_diff`) ──▶ BatchWriter
//!                                                                                  ├─ parquet
//!                                                                                  ├─ ipc
//!                                                                                  └─ callback
//! ```
//!
//! Converting:
//!
//! * [`arrow`]: BSON documents and view rows as Arrow record batches. [`arrow::mapping`] is the
//!   type table (every BSON type, nothing lost: what does not fit goes to `_fallback`, or with
//!   [`arrow::schema::FallbackMode::DenseUnion`] mixed types make dense unions),
//!   [`arrow::schema`] declared and inferred schemas, [`arrow::documents`] the document batcher,
//!   [`arrow::changelog_batches`] the `_time` / `_diff` columns.
//!
//! Writing ([`writer::BatchWriter`]: batches, then commits of frontiers; files rolled by
//! [`writer::RollPolicy`] and renamed into place when complete):
//!
//! * [`parquet`]: rolling Parquet files with the frontier in their key-value metadata, and
//!   one-shot snapshots ([`parquet::write_parquet`]).
//! * [`ipc`]: rolling Arrow IPC files (file or stream format), and a live IPC stream to stdout.
//! * [`callback`]: batches handed to a closure in the same process.
//! * [`dataflow`]: any of these attached to a view or a document collection in a dataflow.
//!
//! Text:
//!
//! * [`table`]: a view printed as a text table.
//! * [`changelog`]: a view's changes as JSON lines, one closed time at a time.
//! * [`transaction_log`]: transaction `BEGIN` / `END` metadata as JSON lines.
#![deny(missing_docs)]

pub mod arrow;
pub mod callback;
pub mod changelog;
pub mod checkpoint;
pub mod dataflow;
pub mod ipc;
pub mod parquet;
pub mod table;
pub mod transaction_log;
pub mod writer;

mod rolling;

use std::path::PathBuf;

/// Why a sink could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing a file failed; nothing partial is left under its final name.
    #[error("cannot write {path}: {reason}", path = path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Rows did not fit the schema.
    #[error("cannot build a record batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A declared schema or column cannot be mapped.
    #[error("invalid schema: {0}")]
    Schema(String),
    /// An option this build cannot honour (e.g. a compression codec not compiled in).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A checkpoint could not be written or read (the state directory, the manifest, the
    /// persisted state); no frontier is recorded whose output is not written.
    #[error("checkpoint {path}: {reason}", path = path.display())]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}
