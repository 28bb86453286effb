//! Group-by views: count, sum, min, max and avg per key, maintained incrementally.
//!
//! ```text
//!   Documents ──filter ns──▶ map: document ─▶ (key row, input values)   one pass per document
//!                                   │
//!                                   ▼ exchange by key
//!                         [GroupAggregate]  per key: count, exact sums, value multisets
//!                                   │   stash by time; at a closed time apply its changes and
//!                                   ▼   emit (old row, -1), (new row, +1) per changed key
//!                  View: Collection<(Row, ClusterTime, isize)>   row = keys ++ aggregates
//! ```
//!
//! # Semantics
//!
//! As MongoDB's `$group`: a document whose key field is missing or null groups under null;
//! `count` counts documents; `sum` and `avg` ignore non-numeric values; `min`/`max` ignore
//! nulls; a group disappears when its last document does. Sums are exact for integers and kept
//! as a double-double (about 106 bits) for floats, so retractions cancel without drift.
//!
//! # Invariants
//!
//! * At every closed time the view holds exactly one row per live group, equal to a batch
//!   recomputation over the document state at that time (tested against the reference model).
//! * A time's changes are emitted together, so a reader never sees half of a time.
//!
//! # Progress tracking
//!
//! Like document state: updates are stashed by time, one capability is held at the least
//! stashed time, and a time is processed once the input frontier has passed it.
//!
//! ```
//! use changeflow_operators::views::GroupBy;
//! use changeflow_operators::value::ValueType;
//! let v1 = GroupBy::new("shop.orders")
//!     .key("region", "region", ValueType::String)
//!     .count("orders")
//!     .sum("amount", "amount", ValueType::Double);
//! let names: Vec<_> = v1.columns().iter().map(|(n, _)| n.clone()).collect();
//! assert_eq!(names, ["region", "orders", "amount"]);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use changeflow_core::{ClusterTime, Document};
use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::documents::{DocKey, Documents, hash_of};
use crate::fxhash::FxHashMap;
use crate::stash::TimeStash;
use crate::value::{F64, Field, Interner, Value, ValueType, extract_row_interned};

/// One row of a view: key columns followed by aggregate columns.
pub type Row = Vec<Value>;

/// A view as a differential collection of rows.
pub type View<'scope> = VecCollection<'scope, ClusterTime, Row, isize>;

/// What an aggregate computes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    /// Number of documents in the group.
    Count,
    /// Sum of the field's numeric values.
    Sum,
    /// Least non-null value.
    Min,
    /// Greatest non-null value.
    Max,
    /// Mean of the field's numeric values.
    Avg,
}

/// One aggregate column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Aggregate {
    /// The column name.
    pub name: String,
    /// What it computes.
    pub kind: AggregateKind,
    /// The input field (none for `Count`).
    pub field: Option<Field>,
}

impl Aggregate {
    /// The output column type.
    pub fn output_type(&self) -> ValueType {
        match (self.kind, &self.field) {
            (AggregateKind::Count, _) => ValueType::Int64,
            (AggregateKind::Avg, _) => ValueType::Double,
            (_, Some(f)) => f.ty,
            (_, None) => ValueType::Int64,
        }
    }
}

/// Counts what a view could not read as declared, shared by all workers.
#[derive(Debug, Default)]
pub struct ViewStats {
    type_mismatches: AtomicU64,
    overflows: AtomicU64,
}

impl ViewStats {
    /// Values present but not of the declared type (read as null).
    pub fn type_mismatches(&self) -> u64 {
        self.type_mismatches.load(Ordering::Relaxed)
    }
    /// Integer sums that left the `i64` range (shown as null).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// A group-by view definition over one namespace of the document state.
#[derive(Clone, Debug)]
pub struct GroupBy {
    namespace: String,
    keys: Vec<Field>,
    aggregates: Vec<Aggregate>,
    stats: Arc<ViewStats>,
}

impl GroupBy {
    /// A view over the documents of `namespace` (`"db.coll"`), with no keys or aggregates yet.
    pub fn new(namespace: &str) -> Self {
        GroupBy {
            namespace: namespace.into(),
            keys: Vec::new(),
            aggregates: Vec::new(),
            stats: Arc::default(),
        }
    }
    /// Adds a key column `name` read from `path` as `ty`.
    pub fn key(mut self, name: &str, path: &str, ty: ValueType) -> Self {
        self.keys.push(Field::new(name, path, ty));
        self
    }
    /// Adds a count column.
    pub fn count(mut self, name: &str) -> Self {
        self.aggregates.push(Aggregate {
            name: name.into(),
            kind: AggregateKind::Count,
            field: None,
        });
        self
    }
    /// Adds a sum column over `path`; `ty` is `Double` or `Int64` (exact integer sum).
    pub fn sum(self, name: &str, path: &str, ty: ValueType) -> Self {
        self.with(name, AggregateKind::Sum, path, ty)
    }
    /// Adds a min column over `path`.
    pub fn min(self, name: &str, path: &str, ty: ValueType) -> Self {
        self.with(name, AggregateKind::Min, path, ty)
    }
    /// Adds a max column over `path`.
    pub fn max(self, name: &str, path: &str, ty: ValueType) -> Self {
        self.with(name, AggregateKind::Max, path, ty)
    }
    /// Adds an average column over `path` (a double).
    pub fn avg(self, name: &str, path: &str) -> Self {
        self.with(name, AggregateKind::Avg, path, ValueType::Double)
    }
    fn with(mut self, name: &str, kind: AggregateKind, path: &str, ty: ValueType) -> Self {
        self.aggregates.push(Aggregate {
            name: name.into(),
            kind,
            field: Some(Field::new(name, path, ty)),
        });
        self
    }
    /// The namespace this view reads.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The key fields.
    pub fn keys(&self) -> &[Field] {
        &self.keys
    }
    /// The aggregates.
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }
    /// Output columns: keys then aggregates, with their types.
    pub fn columns(&self) -> Vec<(String, ValueType)> {
        self.keys
            .iter()
            .map(|k| (k.name.clone(), k.ty))
            .chain(
                self.aggregates
                    .iter()
                    .map(|a| (a.name.clone(), a.output_type())),
            )
            .collect()
    }
    /// What the view could not read as declared.
    pub fn stats(&self) -> Arc<ViewStats> {
        Arc::clone(&self.stats)
    }

    /// Reads the key row and aggregate inputs of one document, in one pass over its elements.
    fn read(&self, doc: &Document, fields: &[Field], strings: &mut Interner) -> (Row, Row) {
        let mut values = extract_row_interned(doc.as_bytes(), fields, strings, |_| {
            self.stats.type_mismatches.fetch_add(1, Ordering::Relaxed);
        });
        let inputs = values.split_off(self.keys.len());
        (values, inputs)
    }

    /// Every field the view reads: keys, then one per aggregate (`Count` reads nothing).
    fn fields(&self) -> Vec<Field> {
        let nothing = Field {
            name: String::new(),
            path: Vec::new(),
            ty: ValueType::Int64,
        };
        self.keys
            .iter()
            .cloned()
            .chain(
                self.aggregates
                    .iter()
                    .map(|a| a.field.clone().unwrap_or_else(|| nothing.clone())),
            )
            .collect()
    }

    /// Builds the view over `documents` (see the module docs).
    pub fn build<'scope>(&self, documents: Documents<'scope>) -> View<'scope> {
        let spec = self.clone();
        let ns: Arc<str> = self.namespace.as_str().into();
        let fields = self.fields();
        let mut strings = Interner::default();
        let contributions = documents.flat_map(move |(key, doc): (DocKey, Document)| {
            (key.ns() == &*ns).then(|| spec.read(&doc, &fields, &mut strings))
        });
        let spec = self.clone();
        contributions
            .inner
            .unary_frontier(
                Exchange::new(|((keys, _), _, _): &((Row, Row), ClusterTime, isize)| hash_of(keys)),
                "GroupAggregate",
                move |_, _| {
                    let mut stash: TimeStash<((Row, Row), isize)> = TimeStash::new();
                    let mut groups: FxHashMap<Row, Group> = FxHashMap::default();
                    let mut before: FxHashMap<Row, Option<Row>> = FxHashMap::default();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))));
                        });
                        if let Some(closed) = stash.take_closed(frontier) {
                            let mut session = output.session(&closed.cap);
                            let mut records = closed.records.into_iter().peekable();
                            while let Some(&(time, _)) = records.peek() {
                                while let Some((_, ((keys, inputs), diff))) =
                                    records.next_if(|(t, _)| *t == time)
                                {
                                    let group = match groups.get_mut(&keys) {
                                        Some(group) => group,
                                        None => groups
                                            .entry(keys.clone())
                                            .or_insert_with(|| Group::new(&spec.aggregates)),
                                    };
                                    if let std::collections::hash_map::Entry::Vacant(slot) =
                                        before.entry(keys)
                                    {
                                        let old = group.row(slot.key(), &spec);
                                        slot.insert(old);
                                    }
                                    group.update(&inputs, diff, &spec.aggregates);
                                }
                                for (keys, old) in before.drain() {
                                    let (new, emptied) = match groups.get(&keys) {
                                        Some(g) => (g.row(&keys, &spec), g.count == 0),
                                        None => (None, false),
                                    };
                                    if emptied {
                                        groups.remove(&keys);
                                    }
                                    if old == new {
                                        continue;
                                    }
                                    if let Some(old) = old {
                                        session.give((old, time, -1));
                                    }
                                    if let Some(new) = new {
                                        session.give((new, time, 1));
                                    }
                                }
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Running state of one aggregate within one group.
#[derive(Clone, Debug, Default)]
struct Partial {
    /// Numeric values seen (for avg) and exact sums.
    numeric: i64,
    int_sum: i128,
    hi: f64,
    lo: f64,
    /// Value multiset, for min / max.
    values: BTreeMap<Value, i64>,
}

impl Partial {
    fn add_f64(&mut self, x: f64) {
        // Double-double accumulation (TwoSum): hi + lo carries ~106 bits.
        let s = self.hi + x;
        let bp = s - self.hi;
        let err = (self.hi - (s - bp)) + (x - bp);
        self.hi = s;
        self.lo += err;
        let t = self.hi + self.lo;
        self.lo -= t - self.hi;
        self.hi = t;
    }
    fn float_sum(&self) -> f64 {
        self.hi + self.lo
    }
}

/// Running state of one group.
#[derive(Clone, Debug)]
struct Group {
    count: i64,
    partials: Vec<Partial>,
}

impl Group {
    fn new(aggregates: &[Aggregate]) -> Self {
        Group {
            count: 0,
            partials: vec![Partial::default(); aggregates.len()],
        }
    }

    fn update(&mut self, inputs: &Row, diff: isize, aggregates: &[Aggregate]) {
        let diff = diff as i64;
        self.count += diff;
        for ((partial, agg), value) in self.partials.iter_mut().zip(aggregates).zip(inputs) {
            match agg.kind {
                AggregateKind::Count => {}
                AggregateKind::Sum | AggregateKind::Avg => match value {
                    Value::Int(v) => {
                        partial.numeric += diff;
                        partial.int_sum += *v as i128 * diff as i128;
                    }
                    Value::Double(F64(v)) => {
                        partial.numeric += diff;
                        partial.add_f64(*v * diff as f64);
                    }
                    _ => {}
                },
                AggregateKind::Min | AggregateKind::Max => {
                    if !value.is_null() {
                        let n = partial.values.entry(value.clone()).or_insert(0);
                        *n += diff;
                        if *n == 0 {
                            partial.values.remove(value);
                        }
                    }
                }
            }
        }
    }

    /// The group's current row, or `None` if it holds no documents.
    fn row(&self, keys: &Row, spec: &GroupBy) -> Option<Row> {
        if self.count <= 0 {
            return None;
        }
        let mut row = Vec::with_capacity(keys.len() + self.partials.len());
        row.extend_from_slice(keys);
        for (partial, agg) in self.partials.iter().zip(&spec.aggregates) {
            row.push(match agg.kind {
                AggregateKind::Count => Value::Int(self.count),
                AggregateKind::Sum => match agg.output_type() {
                    ValueType::Int64 => match i64::try_from(partial.int_sum) {
                        Ok(v) => Value::Int(v),
                        Err(_) => {
                            spec.stats.overflows.fetch_add(1, Ordering::Relaxed);
                            Value::Null
                        }
                    },
                    _ => Value::Double(F64(partial.float_sum() + partial.int_sum as f64)),
                },
                AggregateKind::Avg if partial.numeric > 0 => Value::Double(F64((partial
                    .float_sum()
                    + partial.int_sum as f64)
                    / partial.numeric as f64)),
                AggregateKind::Avg => Value::Null,
                AggregateKind::Min => partial.values.keys().next().cloned().unwrap_or(Value::Null),
                AggregateKind::Max => partial
                    .values
                    .keys()
                    .next_back()
                    .cloned()
                    .unwrap_or(Value::Null),
            });
        }
        Some(row)
    }
}
