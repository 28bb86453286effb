//! Changelog batches: a view's or a collection's changes at closed times, with `_time` and
//! `_diff`; and snapshots.
//!
//! ```text
//!   on_closed_times(view) ──(t, changes of t: retractions first, sorted by key)──▶
//!       batch: view columns… | _fallback | _time: UInt64 = t | _diff: Int64 = ±n
//! ```
//!
//! * `_time` is the [`ClusterTime`] packed as `(t << 32) | i` (`UInt64`, extension name
//!   `changeflow.cluster_time`); [`split_time`] reads it as the struct `{t: UInt32, i: UInt32}`,
//!   and in SQL it is `_time >> 32` and `_time & 4294967295`.
//! * `_diff` is the change in multiplicity: summing `_diff` per row over all batches up to a
//!   time gives the collection at that time.
//! * Within a time, retractions come before insertions and each group is sorted by key
//!   ([`changeflow_operators::handle::on_closed_times`] hands them over that way; for a
//!   document collection the key is the namespace and `_id`).
//!
//! ```
//! use changeflow_core::ClusterTime;
//! use changeflow_operators::documents::DocKey;
//! use changeflow_core::Document;
//! use changeflow_sinks::arrow::changelog_batches::{document_changes, split_time};
//! use changeflow_sinks::arrow::documents::DocumentBatcher;
//! use changeflow_sinks::arrow::schema::SchemaSource;
//! use arrow_array::{Array, UInt64Array, UInt32Array};
//! let doc = Document::from(bson::rawdoc! { "_id": 1, "n": 5 });
//! let key = DocKey::new("db.c", &bson::Bson::Int32(1));
//! let mut batcher = DocumentBatcher::changelog(SchemaSource::inferred());
//! let batches = document_changes(&mut batcher, ClusterTime::new(7, 2), &[((key, doc), 1)]).unwrap();
//! let time = batches[0].column_by_name("_time").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
//! assert_eq!(time.value(0), ClusterTime::new(7, 2).as_u64());
//! let parts = split_time(time);
//! let t = parts.column(0).as_any().downcast_ref::<UInt32Array>().unwrap();
//! assert_eq!(t.value(0), 7);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field};
use changeflow_core::{ClusterTime, Document};
use changeflow_operators::documents::DocKey;

use super::documents::DocumentBatcher;
use super::mapping::{ColumnType, EXTENSION_NAME, timestamp_fields};
use crate::SinkError;

/// The name of the time column.
pub const TIME_COLUMN: &str = "_time";
/// The name of the multiplicity column.
pub const DIFF_COLUMN: &str = "_diff";
/// The name of the column of values that did not fit their columns.
pub const FALLBACK_COLUMN: &str = "_fallback";

/// The `_time` field: `UInt64`, not null, extension name `changeflow.cluster_time`.
pub fn time_field() -> Field {
    Field::new(TIME_COLUMN, DataType::UInt64, false).with_metadata(HashMap::from([(
        EXTENSION_NAME.to_string(),
        "changeflow.cluster_time".to_string(),
    )]))
}

/// The `_diff` field: `Int64`, not null.
pub fn diff_field() -> Field {
    Field::new(DIFF_COLUMN, DataType::Int64, false)
}

/// The `_fallback` field: canonical Extended JSON (`Utf8`, nullable).
pub fn fallback_field() -> Field {
    ColumnType::ExtJson.field(FALLBACK_COLUMN)
}

/// `_time` values as the struct `{t: UInt32, i: UInt32}`.
pub fn split_time(times: &UInt64Array) -> StructArray {
    let t: UInt32Array = times.iter().map(|v| v.map(|v| (v >> 32) as u32)).collect();
    let i: UInt32Array = times.iter().map(|v| v.map(|v| v as u32)).collect();
    StructArray::new(
        timestamp_fields(),
        vec![Arc::new(t), Arc::new(i)],
        times.nulls().cloned(),
    )
}

/// The batches of a document collection's changes at `time` (as
/// [`on_closed_times`](changeflow_operators::handle::on_closed_times) gives them) through a
/// changelog `batcher`: one row per change, its `_diff` the multiplicity.
pub fn document_changes<K>(
    batcher: &mut DocumentBatcher,
    time: ClusterTime,
    changes: &[((K, Document), isize)],
) -> Result<Vec<RecordBatch>, SinkError> {
    for ((_, doc), diff) in changes {
        batcher.push_change(doc.as_bytes(), time, *diff as i64);
    }
    batcher.finish()
}

/// The batches of a snapshot of a document collection (each live document `n` times as a row).
pub fn document_snapshot(
    batcher: &mut DocumentBatcher,
    rows: &[((DocKey, Document), isize)],
) -> Result<Vec<RecordBatch>, SinkError> {
    for ((_, doc), n) in rows {
        for _ in 0..(*n).max(0) {
            batcher.push(doc.as_bytes());
        }
    }
    batcher.finish()
}
