//! BSON and view rows as Arrow record batches.
//!
//! ```text
//!   BSON document ──mapping (type table)──▶ infer / schema (declared or inferred, widening)
//!        │                                          │
//!        └──────────── documents::DocumentBatcher ◀─┘ ──▶ RecordBatch(es) + `_fallback`
//!   view rows (Value) ──rows──▶ RecordBatch
//!   changes at a closed time ──changelog_batches──▶ + `_time` (UInt64) + `_diff` (Int64)
//! ```
//!
//! * [`mapping`]: every BSON type's column type and Arrow type (the table), Decimal128 decoding.
//! * [`infer`]: the column type of a value, and the widening / type-conflict rule.
//! * [`schema`]: declared and inferred schemas.
//! * [`documents`]: whole documents → record batches (one walk per document, fallback, series).
//! * [`changelog_batches`]: `_time`, `_diff`, `_fallback`; changes and snapshots of collections.
//! * [`rows`]: a view's typed rows → record batches (re-exported here).
//!
//! Nothing is silently lost: a value that cannot be represented in its column is written, with
//! its dotted path, to the row's `_fallback` column as canonical Extended JSON and counted.
//!
//! ```
//! use changeflow_operators::value::{Value, ValueType};
//! use changeflow_sinks::arrow::{schema_of, rows_to_batch};
//! let schema = schema_of(&[("region".into(), ValueType::String), ("orders".into(), ValueType::Int64)]);
//! let batch = rows_to_batch(&schema, &[vec![Value::String("eu".into()), Value::Int(3)]]).unwrap();
//! assert_eq!(batch.num_rows(), 1);
//! assert_eq!(batch.schema().field(1).name(), "orders");
//! ```

mod builders;
pub mod changelog_batches;
pub mod documents;
pub mod infer;
pub mod mapping;
pub mod rows;
pub mod schema;

pub use rows::{
    changelog_schema_of, changes_to_batch, column_type, data_type, rows_to_batch, schema_of,
    snapshot_to_batch,
};
