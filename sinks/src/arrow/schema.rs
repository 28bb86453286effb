//! Where a document batch's schema comes from: declared by the user, or inferred.
//!
//! * [`SchemaSource::Declared`]: the user names each column, the dotted path it is read from
//!   and its type ([`ColumnType`], or an Arrow [`DataType`] through [`DeclaredColumn::arrow`]).
//!   Fields not declared are not output (a projection); a declared column's value of another type
//!   goes to the row's fallback. The schema never changes.
//! * [`FallbackMode`]: values whose type conflicts with their column go to the `_fallback`
//!   column (the default), or make the column a dense union of the types met.
//! * [`SchemaSource::Inferred`]: the columns are the union of the top-level fields of the first
//!   `sample` documents, each typed by the widening rule ([`crate::arrow::infer`]); a field
//!   missing from a document is null. With `widen`, a later document with a new field or a type
//!   that widens a column ends the current batch series and starts a new one with the widened
//!   schema (see [`crate::arrow::documents`]); values of conflicting types go to the fallback.
//!
//! ```
//! use changeflow_sinks::arrow::schema::{DeclaredColumn, SchemaSource};
//! use changeflow_sinks::arrow::mapping::ColumnType;
//! use arrow_schema::DataType;
//! let declared = SchemaSource::Declared(vec![
//!     DeclaredColumn::new("id", "_id", ColumnType::ObjectId),
//!     DeclaredColumn::arrow("qty", "items.0.qty", &DataType::Int64).unwrap(),
//! ]);
//! assert!(matches!(SchemaSource::inferred(), SchemaSource::Inferred { sample: 1000, widen: true }));
//! # let _ = declared;
//! ```

use arrow_schema::DataType;

use super::mapping::ColumnType;
use crate::SinkError;

/// How a [`DocumentBatcher`](crate::arrow::documents::DocumentBatcher) gets its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaSource {
    /// Inferred from the first `sample` documents; with `widen`, widened as new fields and types
    /// appear later (each change starts a new batch series).
    Inferred {
        /// Documents read before the first schema is fixed (at least one).
        sample: usize,
        /// Whether later documents may widen the schema (else their odd values go to the
        /// fallback).
        widen: bool,
    },
    /// Declared columns, in output order.
    Declared(Vec<DeclaredColumn>),
}

impl SchemaSource {
    /// Inferred from the first 1000 documents, widening afterwards.
    pub fn inferred() -> SchemaSource {
        SchemaSource::Inferred {
            sample: 1000,
            widen: true,
        }
    }
}

/// Where values of a type that conflicts with their column go (see [`crate::arrow::infer`]).
///
/// Either way nothing is lost and every value outside its column is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FallbackMode {
    /// To the row's `_fallback` column, as canonical Extended JSON under the value's dotted path.
    #[default]
    ExtJson,
    /// An inferred column whose values have conflicting types becomes a dense `Union` of them
    /// (Arrow IPC and in-process only: Parquet has no unions). Values a declared schema cannot
    /// hold still go to `_fallback`.
    DenseUnion,
}

/// A declared column: its name, the dotted path it reads, and its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredColumn {
    /// The column name.
    pub name: String,
    /// The path, split at dots (array elements by index).
    pub path: Vec<String>,
    /// The column type.
    pub ty: ColumnType,
}

impl DeclaredColumn {
    /// The column `name` read from the dotted `path` as `ty`.
    pub fn new(name: &str, path: &str, ty: ColumnType) -> DeclaredColumn {
        DeclaredColumn {
            name: name.to_string(),
            path: path.split('.').map(str::to_string).collect(),
            ty,
        }
    }

    /// The column `name` read from `path` as the Arrow type `data_type` (the plain types of
    /// [`ColumnType::from_arrow`]).
    pub fn arrow(
        name: &str,
        path: &str,
        data_type: &DataType,
    ) -> Result<DeclaredColumn, SinkError> {
        let ty = ColumnType::from_arrow(data_type).ok_or_else(|| {
            SinkError::Schema(format!(
                "column {name}: no BSON mapping for Arrow type {data_type}"
            ))
        })?;
        Ok(DeclaredColumn::new(name, path, ty))
    }
}
