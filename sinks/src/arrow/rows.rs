//! View rows (typed [`Value`]s) as Arrow record batches.
//!
//! | view column type | Arrow type |
//! |---|---|
//! | `Int64` | `Int64` |
//! | `Double` | `Float64` |
//! | `String` | `Utf8` |
//! | `Bool` | `Boolean` |
//! | `DateTime` | `Timestamp(Millisecond, "UTC")` |
//! | `ObjectId` | `FixedSizeBinary(12)` (`changeflow.bson.objectid`) |
//!
//! [`Value::Null`] becomes an Arrow null. A changelog batch adds `_time` (`UInt64`, the packed
//! cluster time) and `_diff` (`Int64`).
//!
//! ```
//! use changeflow_operators::value::{Value, ValueType};
//! use changeflow_sinks::arrow::{schema_of, rows_to_batch};
//! let schema = schema_of(&[("region".into(), ValueType::String), ("orders".into(), ValueType::Int64)]);
//! let batch = rows_to_batch(&schema, &[vec![Value::String("eu".into()), Value::Int(3)]]).unwrap();
//! assert_eq!(batch.num_rows(), 1);
//! assert_eq!(batch.schema().field(1).name(), "orders");
//! ```

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use super::changelog_batches::{diff_field, time_field};
use super::mapping::ColumnType;
use changeflow_core::ClusterTime;
use changeflow_operators::value::{Value, ValueType};

/// The column type of a view column type (see [`crate::arrow::mapping`]).
pub fn column_type(ty: ValueType) -> ColumnType {
    match ty {
        ValueType::Int64 => ColumnType::Int64,
        ValueType::Double => ColumnType::Double,
        ValueType::String => ColumnType::String,
        ValueType::Bool => ColumnType::Bool,
        ValueType::DateTime => ColumnType::DateTime,
        ValueType::ObjectId => ColumnType::ObjectId,
    }
}

/// The Arrow type of a view column type.
pub fn data_type(ty: ValueType) -> DataType {
    column_type(ty).data_type()
}

/// The Arrow schema of a view's columns (all nullable).
pub fn schema_of(columns: &[(String, ValueType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, ty)| column_type(*ty).field(name))
            .collect::<Vec<_>>(),
    ))
}

/// The schema of a changelog: the view's columns plus `_time` and `_diff`.
pub fn changelog_schema_of(columns: &[(String, ValueType)]) -> SchemaRef {
    let mut fields: Vec<Field> = schema_of(columns)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(time_field());
    fields.push(diff_field());
    Arc::new(Schema::new(fields))
}

fn column(ty: &DataType, values: &mut dyn Iterator<Item = &Value>) -> Result<ArrayRef, ArrowError> {
    let mismatch = |v: &Value| {
        ArrowError::InvalidArgumentError(format!("value {v} does not fit a column of type {ty}"))
    };
    Ok(match ty {
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            for v in values {
                match v {
                    Value::Int(x) => b.append_value(*x),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    other => b.append_value(other.as_f64().ok_or_else(|| mismatch(other))?),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    Value::String(s) => b.append_value(s),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            for v in values {
                match v {
                    Value::Bool(x) => b.append_value(*x),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
            for v in values {
                match v {
                    Value::DateTime(x) => b.append_value(*x),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::FixedSizeBinary(12) => {
            let mut b = FixedSizeBinaryBuilder::new(12);
            for v in values {
                match v {
                    Value::ObjectId(x) => b.append_value(x)?,
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(ArrowError::NotYetImplemented(format!(
                "view column of Arrow type {other}"
            )));
        }
    })
}

/// A record batch of `rows` (each with one value per schema field).
pub fn rows_to_batch(schema: &SchemaRef, rows: &[Vec<Value>]) -> Result<RecordBatch, ArrowError> {
    check_widths(schema.fields().len(), rows.iter().map(Vec::len))?;
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| column(f.data_type(), &mut rows.iter().map(|r| &r[i])))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// A snapshot batch of a whole view on demand: each row of `rows` (as a
/// [`ViewHandle`](changeflow_operators::handle::ViewHandle) snapshot gives them) repeated as
/// many times as its multiplicity.
///
/// ```
/// use changeflow_operators::value::{Value, ValueType};
/// use changeflow_sinks::arrow::{schema_of, snapshot_to_batch};
/// let schema = schema_of(&[("n".into(), ValueType::Int64)]);
/// let batch = snapshot_to_batch(&schema, &[(vec![Value::Int(1)], 2), (vec![Value::Int(5)], 1)]).unwrap();
/// assert_eq!(batch.num_rows(), 3);
/// ```
pub fn snapshot_to_batch(
    schema: &SchemaRef,
    rows: &[(Vec<Value>, isize)],
) -> Result<RecordBatch, ArrowError> {
    let expanded: Vec<Vec<Value>> = rows
        .iter()
        .flat_map(|(row, n)| std::iter::repeat_n(row.clone(), (*n).max(0) as usize))
        .collect();
    rows_to_batch(schema, &expanded)
}

/// A changelog batch: `changes` at `time` with `_time` and `_diff` columns (`schema` from
/// [`changelog_schema_of`]).
pub fn changes_to_batch(
    schema: &SchemaRef,
    time: ClusterTime,
    changes: &[(Vec<Value>, isize)],
) -> Result<RecordBatch, ArrowError> {
    let width = schema.fields().len().saturating_sub(2);
    check_widths(width, changes.iter().map(|(r, _)| r.len()))?;
    let mut columns = schema.fields()[..width]
        .iter()
        .enumerate()
        .map(|(i, f)| column(f.data_type(), &mut changes.iter().map(|(r, _)| &r[i])))
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = UInt64Builder::new();
    let mut diffs = Int64Builder::new();
    for (_, diff) in changes {
        times.append_value(time.as_u64());
        diffs.append_value(*diff as i64);
    }
    columns.push(Arc::new(times.finish()));
    columns.push(Arc::new(diffs.finish()));
    RecordBatch::try_new(Arc::clone(schema), columns)
}

fn check_widths(width: usize, mut rows: impl Iterator<Item = usize>) -> Result<(), ArrowError> {
    match rows.find(|&w| w != width) {
        Some(w) => Err(ArrowError::InvalidArgumentError(format!(
            "row has {w} values, schema has {width} columns"
        ))),
        None => Ok(()),
    }
}
