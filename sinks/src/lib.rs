//! # changeflow-sinks: where views go
//!
//! * [`arrow`]: view rows and changelogs as Arrow record batches (`_time`, `_diff`).
//! * [`parquet`]: snapshots written as Parquet files, atomically (temporary name, then rename).
//! * [`table`]: a view printed as a text table.
//! * [`changelog`]: a view's changes as JSON lines, one closed time at a time.
#![deny(missing_docs)]

pub mod arrow;
pub mod changelog;
pub mod parquet;
pub mod table;

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
}
