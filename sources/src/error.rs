//! The one error type of changeflow-sources.

use std::path::PathBuf;

use changeflow_core::ClusterTime;

/// Why a source stopped. Every variant names the input (file and line, or document index).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An input line or document is not a valid change event (the message names file and line).
    #[error("{path}:{line}: {source}", path = path.display())]
    BadEvent {
        /// The input file.
        path: PathBuf,
        /// 1-based line number (JSON lines) or document number (BSON).
        line: u64,
        /// What is wrong with the event.
        source: changeflow_core::Error,
    },
    /// An event's cluster time is earlier than a time the source already released.
    #[error("{path}:{line}: event at {time} is earlier than the source's frontier {frontier}; the input is not in stream order", path = path.display())]
    OutOfOrder {
        /// The input file.
        path: PathBuf,
        /// 1-based line or document number.
        line: u64,
        /// The event's time.
        time: ClusterTime,
        /// The time the source had already advanced to.
        frontier: ClusterTime,
    },
    /// A BSON file whose framing is broken, so no later document can be found.
    #[error("{path}: document {line} at byte {offset}: {reason}", path = path.display())]
    BsonFraming {
        /// The input file.
        path: PathBuf,
        /// 1-based document number.
        line: u64,
        /// Byte offset of the document's length prefix.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the input failed.
    #[error("cannot read {path}: {source}", path = path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source's reader thread could not start or stopped unexpectedly.
    #[error("source reader thread: {0}")]
    Thread(String),
    /// Writing the dead-letter file failed (the bad input is not lost: the source stops).
    #[error("cannot write dead letters to {path}: {source}", path = path.display())]
    DeadLetter {
        /// The dead-letter file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
