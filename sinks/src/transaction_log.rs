//! A transaction log: the `BEGIN` / `END` metadata of every transaction as JSON lines, like
//! Debezium's transaction topic.
//!
//! ```text
//!   transactions(events).metadata ──▶ TransactionLog ──▶ {"status":"BEGIN","id":"…:7",…}
//!                                                        {"status":"END","id":"…:7","event_count":4,…}
//! ```
//!
//! Records arrive at their transaction's commit time, `BEGIN` before `END`; the log writes them
//! in that order, one line each (see [`TxnMetadata::to_json`] for the fields).
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_operators::transactions::Transaction;
//! use changeflow_sinks::transaction_log::TransactionLog;
//! let e = ChangeEvent::from_json(br#"{"_id": {"_data": "82000000070000000104"}, "operationType": "delete",
//!     "clusterTime": {"$timestamp": {"t": 7, "i": 0}}, "ns": {"db": "a", "coll": "b"}, "documentKey": {"_id": 1},
//!     "lsid": {"id": 1}, "txnNumber": 2}"#).unwrap();
//! let txn = Transaction::from_events(vec![e], ClusterTime::new(7, 0)).unwrap();
//! let mut log = TransactionLog::new(Vec::new());
//! for record in txn.metadata() {
//!     log.write(&record).unwrap();
//! }
//! let text = String::from_utf8(log.into_inner()).unwrap();
//! assert!(text.lines().nth(1).unwrap().contains(r#""data_collections":[{"data_collection":"a.b","event_count":1}]"#));
//! ```
//!
//! [`TxnMetadata::to_json`]: changeflow_operators::transactions::TxnMetadata::to_json

use std::io::Write;
use std::path::Path;

use changeflow_operators::transactions::TxnMetadata;

use crate::SinkError;

/// Writes transaction metadata records as JSON lines.
pub struct TransactionLog<W: Write> {
    out: W,
    lines: u64,
}

impl TransactionLog<std::io::BufWriter<std::fs::File>> {
    /// A log written to a new file at `path`.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let file = std::fs::File::create(path).map_err(|e| SinkError::Write {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(TransactionLog::new(std::io::BufWriter::new(file)))
    }
}

impl<W: Write> TransactionLog<W> {
    /// A log written to `out`.
    pub fn new(out: W) -> Self {
        TransactionLog { out, lines: 0 }
    }

    /// Writes one record as one line.
    pub fn write(&mut self, record: &TxnMetadata) -> std::io::Result<()> {
        let mut line = record.to_json();
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}
