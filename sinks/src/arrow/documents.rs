//! Whole BSON documents as Arrow record batches: one row per document, one column per field.
//!
//! ```text
//!   push(doc) ──▶ [sample] ──first N──▶ infer schema ──▶ DocBuilder ──finish──▶ RecordBatch(es)
//!                                                          │  a value that does not fit ─▶ `_fallback`
//!                                                          └─ a document that widens the schema:
//!                                                             cut the batch before it, widen,
//!                                                             start a new series with it
//! ```
//!
//! Every batch has the document's columns (per [`SchemaSource`]) and `_fallback`: a `Utf8`
//! column holding, for a row where some value did not fit its column, a canonical Extended JSON
//! document `{"dotted.path": value, …}` of those values (null otherwise). Each such value is
//! counted in [`BatchStats::fallback_values`]. A changelog batcher ([`DocumentBatcher::changelog`])
//! adds `_time` and `_diff` (see [`crate::arrow::changelog_batches`]).
//!
//! # Invariants
//!
//! * No value is lost: each one is in its column or, under its dotted path, in `_fallback`.
//! * Rows keep the order they were pushed in. Batches of one series share one schema; a new
//!   series (a widened schema) starts a new batch, never mid-batch.
//! * With an inferred schema, a document that widens it is converted with the widened schema:
//!   widening is preferred over fallback; only values whose type conflicts (see
//!   [`crate::arrow::infer`]) reach the fallback.
//!
//! ```
//! use changeflow_sinks::arrow::documents::DocumentBatcher;
//! use changeflow_sinks::arrow::schema::SchemaSource;
//! let mut batcher = DocumentBatcher::new(SchemaSource::inferred());
//! batcher.push(bson::rawdoc! { "a": 1, "b": "x" }.as_bytes());
//! batcher.push(bson::rawdoc! { "a": 2, "c": true }.as_bytes());
//! let batches = batcher.finish().unwrap();
//! assert_eq!(batches.len(), 1);
//! let names: Vec<_> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
//! assert_eq!(names, ["a", "b", "c", "_fallback"]);
//! assert_eq!(batcher.stats().rows, 2);
//! ```

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use changeflow_core::ClusterTime;
use changeflow_operators::value::lookup;

use super::builders::{Cx, DocBuilder, Path};
use super::changelog_batches::{diff_field, fallback_field, time_field};
use super::infer::absorb_document;
use super::mapping::ColumnType;
use super::schema::{FallbackMode, SchemaSource};
use crate::SinkError;

/// What a [`DocumentBatcher`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Rows output.
    pub rows: u64,
    /// Values that did not fit their column and went to `_fallback`.
    pub fallback_values: u64,
    /// Rows with a non-null `_fallback`.
    pub fallback_rows: u64,
    /// Times the inferred schema widened (each starts a new series).
    pub schema_changes: u64,
    /// Documents whose bytes broke off mid-walk (the rest of such a document is not output).
    pub malformed: u64,
}

/// Fields an inferred embedded document may have before it is kept as Extended JSON instead.
pub const DEFAULT_MAX_FIELDS: usize = 1024;

/// A row's `_time` and `_diff`.
type Change = (ClusterTime, i64);

/// Builds record batches of BSON documents (see the [module docs](self)).
pub struct DocumentBatcher {
    source: SchemaSource,
    unions: bool,
    max_fields: usize,
    columns: Vec<(String, ColumnType)>,
    /// Declared columns with a dotted path: (column index, path, dotted path).
    deep: Vec<(usize, Vec<String>, String)>,
    top: Option<DocBuilder>,
    fallback: StringBuilder,
    changes: Option<(UInt64Builder, Int64Builder)>,
    sample: Vec<(Vec<u8>, Option<Change>)>,
    done: Vec<RecordBatch>,
    stats: BatchStats,
    cx: Cx,
}

impl DocumentBatcher {
    /// A batcher of documents (a snapshot: no `_time`, `_diff`).
    pub fn new(source: SchemaSource) -> DocumentBatcher {
        let mut batcher = DocumentBatcher {
            source,
            unions: false,
            max_fields: DEFAULT_MAX_FIELDS,
            columns: Vec::new(),
            deep: Vec::new(),
            top: None,
            fallback: StringBuilder::new(),
            changes: None,
            sample: Vec::new(),
            done: Vec::new(),
            stats: BatchStats::default(),
            cx: Cx::default(),
        };
        if let SchemaSource::Declared(columns) = &batcher.source {
            let keys = columns
                .iter()
                .map(|c| match c.path.as_slice() {
                    [single] => single.as_bytes().to_vec(),
                    // BSON keys hold no NUL: this key never matches; the column is looked up.
                    _ => vec![0],
                })
                .collect();
            let types: Vec<ColumnType> = columns.iter().map(|c| c.ty.clone()).collect();
            batcher.deep = columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.path.len() != 1)
                .map(|(i, c)| (i, c.path.clone(), c.path.join(".")))
                .collect();
            batcher.columns = columns
                .iter()
                .map(|c| (c.name.clone(), c.ty.clone()))
                .collect();
            batcher.top = Some(DocBuilder::with_keys(keys, &types));
        }
        batcher
    }

    /// A batcher of changes: rows pushed with [`DocumentBatcher::push_change`] get `_time` and
    /// `_diff`.
    pub fn changelog(source: SchemaSource) -> DocumentBatcher {
        let mut batcher = DocumentBatcher::new(source);
        batcher.changes = Some((UInt64Builder::new(), Int64Builder::new()));
        batcher
    }

    /// Where values of conflicting types go (default [`FallbackMode::ExtJson`]).
    ///
    /// ```
    /// use changeflow_sinks::arrow::documents::DocumentBatcher;
    /// use changeflow_sinks::arrow::schema::{FallbackMode, SchemaSource};
    /// let mut batcher = DocumentBatcher::new(SchemaSource::inferred()).with_fallback(FallbackMode::DenseUnion);
    /// batcher.push(bson::rawdoc! { "v": 1 }.as_bytes());
    /// batcher.push(bson::rawdoc! { "v": "one" }.as_bytes());
    /// let batch = batcher.finish().unwrap().remove(0);
    /// assert!(matches!(batch.schema().field(0).data_type(), arrow_schema::DataType::Union(..)));
    /// assert_eq!(batcher.stats().fallback_values, 0);
    /// ```
    pub fn with_fallback(mut self, mode: FallbackMode) -> DocumentBatcher {
        self.unions = mode == FallbackMode::DenseUnion;
        self
    }

    /// An inferred embedded document with more than `n` distinct fields (a map keyed by data,
    /// say) becomes one Extended JSON column instead of a struct of `n` columns
    /// (default [`DEFAULT_MAX_FIELDS`]). Top-level fields are never capped.
    ///
    /// ```
    /// use changeflow_sinks::arrow::documents::DocumentBatcher;
    /// use changeflow_sinks::arrow::schema::SchemaSource;
    /// let mut batcher = DocumentBatcher::new(SchemaSource::inferred()).with_max_fields(2);
    /// batcher.push(bson::rawdoc! { "by_day": { "mon": 1, "tue": 2, "wed": 3 }, "n": { "a": 1 } }.as_bytes());
    /// let batch = batcher.finish().unwrap().remove(0);
    /// assert_eq!(batch.schema().field(0).data_type(), &arrow_schema::DataType::Utf8);
    /// assert!(matches!(batch.schema().field(1).data_type(), arrow_schema::DataType::Struct(_)));
    /// ```
    pub fn with_max_fields(mut self, n: usize) -> DocumentBatcher {
        self.max_fields = n;
        self
    }

    /// Adds the document `doc` (BSON bytes) as a row.
    pub fn push(&mut self, doc: &[u8]) {
        self.push_row(doc, None);
    }

    /// Adds the document `doc` as a change at `time` with multiplicity `diff`.
    pub fn push_change(&mut self, doc: &[u8], time: ClusterTime, diff: i64) {
        self.push_row(doc, Some((time, diff)));
    }

    fn push_row(&mut self, doc: &[u8], change: Option<Change>) {
        if self.top.is_some() {
            return self.row(doc, change, true);
        }
        self.sample.push((doc.to_vec(), change));
        let wanted = match self.source {
            SchemaSource::Inferred { sample, .. } => sample.max(1),
            SchemaSource::Declared(_) => 1,
        };
        if self.sample.len() >= wanted {
            self.fix_sampled_schema();
        }
    }

    /// Infers the schema from the sampled documents and converts them.
    fn fix_sampled_schema(&mut self) {
        let mut ty = ColumnType::Document(Vec::new());
        for (doc, _) in &self.sample {
            absorb_document(&mut ty, doc, self.unions);
        }
        cap_fields(&mut ty, self.max_fields);
        self.set_columns(ty);
        for (doc, change) in std::mem::take(&mut self.sample) {
            self.row(&doc, change, true);
        }
    }

    fn set_columns(&mut self, ty: ColumnType) {
        if let ColumnType::Document(fields) = ty {
            self.top = Some(DocBuilder::new(&fields));
            self.columns = fields;
        }
    }

    fn row(&mut self, doc: &[u8], change: Option<Change>, may_widen: bool) {
        let Some(top) = self.top.as_mut() else { return };
        let cx = &mut self.cx;
        cx.start_row();
        for (i, path, dotted) in &self.deep {
            let child = &mut top.children[*i];
            match lookup(doc, path) {
                Some(e) => {
                    let at = Path {
                        key: dotted.as_bytes(),
                        parent: None,
                    };
                    child.append(&e, &at, cx);
                }
                None => child.append_null(),
            }
        }
        top.append_fields(doc, None, cx);
        let widens = matches!(self.source, SchemaSource::Inferred { widen: true, .. });
        if cx.misses > 0 && may_widen && widens {
            let current = ColumnType::Document(self.columns.clone());
            let mut joined = current.clone();
            absorb_document(&mut joined, doc, self.unions);
            cap_fields(&mut joined, self.max_fields);
            if joined != current {
                // Cut the series before this document, then convert it with the wider schema.
                self.fallback.append_null();
                if let Some((times, diffs)) = self.changes.as_mut() {
                    times.append_value(0);
                    diffs.append_value(0);
                }
                if let Ok(batch) = self.build()
                    && batch.num_rows() > 1
                {
                    self.done.push(batch.slice(0, batch.num_rows() - 1));
                }
                self.stats.schema_changes += 1;
                self.set_columns(joined);
                return self.row(doc, change, false);
            }
        }
        self.stats.rows += 1;
        self.stats.malformed += std::mem::take(&mut cx.malformed);
        if cx.misses > 0 {
            self.stats.fallback_values += cx.misses;
            self.stats.fallback_rows += 1;
        }
        match cx.take_fallback() {
            Some(json) => self.fallback.append_value(json),
            None => self.fallback.append_null(),
        }
        if let Some((times, diffs)) = self.changes.as_mut() {
            let (time, diff) = change.unwrap_or((ClusterTime::MIN, 1));
            times.append_value(time.as_u64());
            diffs.append_value(diff);
        }
    }

    /// The schema batches have now (`None` before the first document of an inferred schema).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.top.as_ref().map(|_| self.schema_of())
    }

    fn schema_of(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(name, ty)| ty.field(name))
            .collect();
        fields.push(fallback_field());
        if self.changes.is_some() {
            fields.push(time_field());
            fields.push(diff_field());
        }
        Arc::new(Schema::new(fields))
    }

    fn build(&mut self) -> Result<RecordBatch, SinkError> {
        let schema = self.schema_of();
        let Some(top) = self.top.as_mut() else {
            return Ok(RecordBatch::new_empty(schema));
        };
        let types: Vec<&ColumnType> = self.columns.iter().map(|(_, ty)| ty).collect();
        let mut arrays: Vec<ArrayRef> = top.finish_children(&types)?;
        arrays.push(Arc::new(self.fallback.finish()));
        if let Some((times, diffs)) = self.changes.as_mut() {
            arrays.push(Arc::new(times.finish()));
            arrays.push(Arc::new(diffs.finish()));
        }
        Ok(RecordBatch::try_new(schema, arrays)?)
    }

    /// The batches of every row pushed since the last call: one per schema series, in order
    /// (none if no rows). With an inferred schema still sampling, the sample is taken as is.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>, SinkError> {
        if self.top.is_none() && !self.sample.is_empty() {
            self.fix_sampled_schema();
        }
        if self.top.as_ref().is_some_and(|t| t.len > 0) {
            let batch = self.build()?;
            self.done.push(batch);
        }
        Ok(std::mem::take(&mut self.done))
    }

    /// What this batcher did so far.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }
}

/// Replaces every embedded document type below the top level with more than `max` fields by
/// `ExtJson`.
fn cap_fields(ty: &mut ColumnType, max: usize) {
    fn cap(ty: &mut ColumnType, max: usize) {
        match ty {
            ColumnType::Document(fields) if fields.len() > max => *ty = ColumnType::ExtJson,
            ColumnType::Document(fields) => fields.iter_mut().for_each(|(_, t)| cap(t, max)),
            ColumnType::Array(element) => cap(element, max),
            ColumnType::Union(members) => members.iter_mut().for_each(|t| cap(t, max)),
            _ => {}
        }
    }
    if let ColumnType::Document(fields) = ty {
        fields.iter_mut().for_each(|(_, t)| cap(t, max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::schema::DeclaredColumn;
    use arrow_array::{Array, Int64Array, StringArray};

    #[test]
    fn a_new_field_starts_a_new_series_and_nothing_is_lost() {
        let mut b = DocumentBatcher::new(SchemaSource::Inferred {
            sample: 1,
            widen: true,
        });
        b.push(bson::rawdoc! { "a": 1 }.as_bytes());
        b.push(bson::rawdoc! { "a": 2 }.as_bytes());
        b.push(bson::rawdoc! { "a": 3, "b": "new" }.as_bytes());
        b.push(bson::rawdoc! { "a": 4 }.as_bytes());
        let batches = b.finish().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].num_rows(), 2);
        assert_eq!(batches[1].num_rows(), 2);
        assert_eq!(batches[1].schema().field(1).name(), "b");
        let bs = batches[1]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(bs.value(0), "new");
        assert!(bs.is_null(1));
        assert_eq!(b.stats().schema_changes, 1);
        assert_eq!(b.stats().fallback_values, 0);
    }

    #[test]
    fn conflicting_values_go_to_the_fallback_and_are_counted() {
        let mut b = DocumentBatcher::new(SchemaSource::inferred());
        b.push(bson::rawdoc! { "a": 1_i64, "n": { "x": "s" } }.as_bytes());
        b.push(bson::rawdoc! { "a": "text", "n": { "x": 5 } }.as_bytes());
        let batches = b.finish().unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let a = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(a.value(0), 1);
        assert!(a.is_null(1));
        let fallback = batch
            .column_by_name("_fallback")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(fallback.is_null(0));
        let json: serde_json::Value = serde_json::from_str(fallback.value(1)).unwrap();
        assert_eq!(json["a"], "text");
        assert_eq!(json["n.x"]["$numberInt"], "5");
        assert_eq!(b.stats().fallback_values, 2);
        assert_eq!(b.stats().fallback_rows, 1);
    }

    #[test]
    fn dense_unions_hold_mixed_types_without_fallback() {
        use arrow_array::UnionArray;
        let mut b = DocumentBatcher::new(SchemaSource::Inferred {
            sample: 3,
            widen: true,
        })
        .with_fallback(FallbackMode::DenseUnion);
        b.push(bson::rawdoc! { "v": 1, "w": [1, "x"] }.as_bytes());
        b.push(bson::rawdoc! { "v": "two" }.as_bytes());
        b.push(bson::rawdoc! { "v": 3.5 }.as_bytes());
        b.push(bson::rawdoc! { "v": true }.as_bytes());
        let batches = b.finish().unwrap();
        assert_eq!(b.stats().fallback_values, 0);
        assert_eq!(
            b.stats().schema_changes,
            1,
            "bool joins the union in a new series"
        );
        let v = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<UnionArray>()
            .unwrap();
        assert_eq!(v.type_ids(), &[0, 1, 0]);
        let doubles = v
            .child(0)
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap();
        assert_eq!(doubles.value(v.value_offset(0)), 1.0);
        assert_eq!(doubles.value(v.value_offset(2)), 3.5);
        let w = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap();
        assert!(matches!(w.value_type(), arrow_schema::DataType::Union(..)));
        assert_eq!(batches[1].num_rows(), 1);
    }

    #[test]
    fn wide_embedded_documents_stay_whole_as_extended_json() {
        let mut b = DocumentBatcher::new(SchemaSource::Inferred {
            sample: 1,
            widen: true,
        })
        .with_max_fields(3);
        b.push(bson::rawdoc! { "m": { "a": 1, "b": 2 } }.as_bytes());
        b.push(bson::rawdoc! { "m": { "c": 3, "d": 4 } }.as_bytes());
        b.push(bson::rawdoc! { "m": { "e": 5 } }.as_bytes());
        let batches = b.finish().unwrap();
        assert_eq!(
            b.stats().schema_changes,
            1,
            "once past 3 fields, `m` is JSON for good"
        );
        assert_eq!(b.stats().fallback_values, 0);
        let m = batches[1]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(m.value(0)).unwrap();
        assert_eq!(json["d"]["$numberInt"], "4");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn declared_columns_read_dotted_paths_and_project() {
        let mut b = DocumentBatcher::new(SchemaSource::Declared(vec![
            DeclaredColumn::new("qty", "items.1.qty", ColumnType::Int64),
            DeclaredColumn::new("region", "region", ColumnType::String),
        ]));
        b.push(
            bson::rawdoc! { "region": "eu", "other": 1, "items": [{ "qty": 1 }, { "qty": 7 }] }
                .as_bytes(),
        );
        b.push(bson::rawdoc! { "region": 5 }.as_bytes());
        let batch = b.finish().unwrap().remove(0);
        assert_eq!(batch.num_columns(), 3);
        let qty = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(qty.value(0), 7);
        assert!(qty.is_null(1));
        let region = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(region.value(0), "eu");
        assert!(region.is_null(1));
        assert_eq!(b.stats().fallback_values, 1);
    }

    #[test]
    fn repeated_keys_keep_the_first_value_and_the_rest_fall_back() {
        let mut w = changeflow_core::raw::DocWriter::new();
        w.append(changeflow_core::raw::kind::INT32, "a", &1i32.to_le_bytes());
        w.append(changeflow_core::raw::kind::INT32, "a", &2i32.to_le_bytes());
        let doc = w.finish();
        let mut b = DocumentBatcher::new(SchemaSource::inferred());
        b.push(&doc);
        let batch = b.finish().unwrap().remove(0);
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(b.stats().fallback_values, 1);
    }
}
