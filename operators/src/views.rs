//! Group-by views: count, sum, min, max and avg per key, maintained incrementally.
//!
//! ```text
//!   Documents ──filter ns──▶ [GroupRead] document ─▶ keys ++ inputs (one row), one pass per
//!                                   │      document; a change's -old/+new pair whose rows are
//!                                   │      equal (fields the view does not read) is dropped
//!                                   ▼ exchange by key (not hashed with one worker)
//!                         [GroupAggregate]  per key: count, exact sums, value multisets
//!                                   │   (a slab of groups, found through one hash per row)
//!                                   │   stash by time; at a closed time apply its changes and
//!                                   ▼   emit (old row, -1), (new row, +1) per changed key
//!                  View: Collection<(Row, ClusterTime, isize)>   row = keys ++ aggregates
//! ```
//!
//! [`materialize`] keeps several views straight in their [`ViewHandle`]s instead: with one
//! worker one operator reads each document change and updates the groups in place, where the
//! handles read them, and no view rows are emitted (see there).
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
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::operator::empty;

use crate::documents::{DocKey, Documents, hash_of};
use crate::fxhash::FxHashMap;
use crate::handle::{Done, InPlace, ViewHandle};
use crate::stash::TimeStash;
use crate::value::{F64, Field, Interner, Value, ValueType, extract_row_into};

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

    /// Reads the key columns and then the aggregate inputs of one document, in one pass over its
    /// elements, into `row` (reusing its allocation): `keys ++ inputs`.
    fn read_into(&self, doc: &Document, fields: &[Field], strings: &mut Interner, row: &mut Row) {
        extract_row_into(doc.as_bytes(), fields, strings, row, |_| {
            self.stats.type_mismatches.fetch_add(1, Ordering::Relaxed);
        })
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
        let (mut row, mut held) = (Row::new(), Row::new());
        let contributions = documents
            .inner
            .unary::<CapacityContainerBuilder<Vec<Contribution>>, _, _, _>(
                Pipeline,
                "GroupRead",
                move |_, _| {
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let mut session = output.session(&cap);
                            let mut give =
                                |row: &Row, time, diff| session.give((row.clone(), time, diff));
                            let mut pairs = Pairs::new(&mut held);
                            for ((key, doc), time, diff) in data.iter() {
                                if key.ns() == &*ns {
                                    spec.read_into(doc, &fields, &mut strings, &mut row);
                                    pairs.push(key, *time, *diff, &mut row, &mut give);
                                }
                            }
                            pairs.flush(&mut give);
                            data.clear();
                        });
                    }
                },
            );
        let spec = self.clone();
        let width = self.keys.len();
        // One worker needs no routing: skip hashing every contribution's key.
        let peers = contributions.scope().peers();
        contributions
            .unary_frontier(
                Exchange::new(
                    move |(row, _, _): &(Row, ClusterTime, isize)| {
                        if peers > 1 { hash_of(&row[..width]) } else { 0 }
                    },
                ),
                "GroupAggregate",
                move |_, _| {
                    let mut stash: TimeStash<(Row, isize)> = TimeStash::new();
                    let mut groups = Groups::default();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))));
                        });
                        if let Some(closed) = stash.take_closed(frontier) {
                            let mut session = output.session(&closed.cap);
                            let mut buffer = closed.records;
                            let mut records = buffer.drain(..).peekable();
                            while let Some(&(time, _)) = records.peek() {
                                while let Some((_, (row, diff))) =
                                    records.next_if(|(t, _)| *t == time)
                                {
                                    let (keys, inputs) = row.split_at(width.min(row.len()));
                                    groups.update(keys, inputs, diff, &spec);
                                }
                                groups.drain_changes(&spec, |row, diff| {
                                    session.give((row, time, diff))
                                });
                            }
                            drop(records);
                            stash.recycle(buffer);
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Maintains several group-by views over one document-state collection, each straight into its
/// [`ViewHandle`], and returns a stream whose frontier tells which times the handles reflect.
///
/// With one worker this is one operator, `Materialize`: it reads each document change once per
/// view and updates the view's groups in place, and the handle reads those groups directly, so
/// no view rows are built, emitted, exchanged or replayed into the handle's own map (this is
/// what the orders job runs). The documents have this one consumer, so they are not copied for
/// several views either. With several workers each view is built with [`GroupBy::build`] and
/// attached with [`ViewHandle::attach`]: the handle then needs the changes of every worker's
/// groups in one place. The contents are the same either way; only the handle's time may
/// differ: here it is the last closed time at which a change of the view's documents was
/// applied (a change of fields the view does not read is not one).
///
/// # Panics
///
/// With one worker, if a handle is already attached to a view or keeps one in place: a handle
/// holds one view, and two writers would each move its time and frontier.
///
/// ```text
///   Documents ──(one worker)──▶ [Materialize] stash by time; at closed times, per view:
///                                 │  read keys ++ inputs of each change (an -old/+new pair
///                                 │  that reads equal cancels), update its group in place
///                                 ▼
///                        ViewHandle (reads the groups) · Done (frontier = times applied)
/// ```
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::documents::{document_state, DocumentStats};
/// use changeflow_operators::handle::ViewHandle;
/// use changeflow_operators::value::{Value, ValueType};
/// use changeflow_operators::views::{materialize, GroupBy, Row};
/// let line = r#"{"_id": {"_data": "82000000010000000104"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "s", "coll": "o"}, "documentKey": {"_id": 1}, "fullDocument": {"_id": 1, "region": "eu", "amount": 2.5}}"#;
/// let events = vec![changeflow_core::ChangeEvent::from_json(line.as_bytes()).unwrap()];
/// let by_region = GroupBy::new("s.o").key("region", "region", ValueType::String).count("n");
/// let total = GroupBy::new("s.o").sum("amount", "amount", ValueType::Double);
/// let (h1, h2) = (ViewHandle::<Row>::new(), ViewHandle::<Row>::new());
/// let views = vec![(by_region, h1.clone()), (total, h2.clone())];
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<ClusterTime, _, _>(|scope| {
///         let stream = changeflow_sources::memory::from_events(scope, events);
///         materialize(document_state(stream, DocumentStats::new()), &views);
///     });
/// });
/// assert_eq!(h1.snapshot().rows, vec![(vec![Value::String("eu".into()), Value::Int(1)], 1)]);
/// assert_eq!(h2.snapshot().rows, vec![(vec![Value::Double(2.5.into())], 1)]);
/// assert_eq!(h2.snapshot().time, Some(ClusterTime::new(1, 1)));
/// ```
pub fn materialize<'scope>(
    documents: Documents<'scope>,
    views: &[(GroupBy, ViewHandle<Row>)],
) -> Done<'scope> {
    let scope = documents.inner.scope();
    let mut readers = Vec::new();
    let mut done = Vec::new();
    for (spec, handle) in views {
        if documents.scope().peers() > 1 {
            done.push(handle.attach(spec.build(documents.clone())));
            continue;
        }
        let claimed = handle.keep_in_place(InPlaceGroups {
            groups: Groups::default(),
            spec: spec.clone(),
        });
        assert!(
            claimed,
            "a ViewHandle holds one view: this one is already attached or kept in place \
             (view over {})",
            spec.namespace
        );
        readers.push(InPlaceReader::new(spec, handle));
    }
    if !readers.is_empty() {
        done.push(in_place_operator(documents, readers));
    }
    match done.len() {
        1 => done.pop().unwrap_or_else(|| empty(scope)),
        0 => empty(scope),
        _ => scope.concatenate(done),
    }
}

/// The `Materialize` operator of [`materialize`] (one worker).
fn in_place_operator<'scope>(
    documents: Documents<'scope>,
    mut readers: Vec<InPlaceReader>,
) -> Done<'scope> {
    documents
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "Materialize",
            move |_, _| {
                let mut stash: TimeStash<DocumentChange> = TimeStash::new();
                let mut reported: Option<Option<ClusterTime>> = None;
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))));
                    });
                    if let Some(closed) = stash.take_closed(frontier) {
                        for reader in &mut readers {
                            reader.apply(&closed.records);
                        }
                        stash.recycle(closed.records);
                    }
                    let now = frontier.frontier().iter().next().copied();
                    if reported != Some(now) {
                        reported = Some(now);
                        for reader in &readers {
                            reader.handle.set_frontier(now);
                        }
                    }
                }
            },
        )
}

/// A document change and its multiplicity, as stashed by time.
type DocumentChange = ((DocKey, Document), isize);

/// A view's groups, kept in place in its handle.
struct InPlaceGroups {
    groups: Groups,
    spec: GroupBy,
}

impl InPlace<Row> for InPlaceGroups {
    fn rows(&self) -> Vec<(Row, isize)> {
        self.groups.rows(&self.spec)
    }
}

/// What [`in_place_operator`] keeps per view: its definition, handle, and reusable rows.
struct InPlaceReader {
    spec: GroupBy,
    handle: ViewHandle<Row>,
    ns: Arc<str>,
    fields: Vec<Field>,
    strings: Interner,
    /// The row being read, and a held retraction's row ([`Pairs`]'s buffers).
    row: Row,
    held: Row,
    /// Whether the view has integer sums (whose overflows are counted as they happen).
    int_sums: bool,
}

impl InPlaceReader {
    fn new(spec: &GroupBy, handle: &ViewHandle<Row>) -> Self {
        InPlaceReader {
            spec: spec.clone(),
            handle: handle.clone(),
            ns: spec.namespace.as_str().into(),
            fields: spec.fields(),
            strings: Interner::default(),
            row: Vec::new(),
            held: Vec::new(),
            int_sums: spec
                .aggregates
                .iter()
                .any(|a| a.kind == AggregateKind::Sum && a.output_type() == ValueType::Int64),
        }
    }

    /// Applies closed records, sorted by time, to the view's groups.
    fn apply(&mut self, records: &[(ClusterTime, DocumentChange)]) {
        let InPlaceReader {
            spec,
            handle,
            ns,
            fields,
            strings,
            row,
            held,
            int_sums,
        } = self;
        let width = spec.keys.len();
        handle.change_in_place(|state: &mut InPlaceGroups| {
            let groups = &mut state.groups;
            // The last time at which a change was applied (a cancelled pair changes nothing).
            let mut last = None;
            let mut apply = |row: &Row, time: ClusterTime, diff: isize| {
                let (keys, inputs) = row.split_at(width.min(row.len()));
                groups.update_in_place(keys, inputs, diff, spec, *int_sums);
                last = Some(time);
            };
            let mut pairs = Pairs::new(held);
            for (time, ((key, doc), diff)) in records {
                if key.ns() == &**ns {
                    spec.read_into(doc, fields, strings, row);
                    pairs.push(key, *time, *diff, row, &mut apply);
                }
            }
            pairs.flush(&mut apply);
            last
        });
    }
}

/// A contribution to a view: `keys ++ inputs`, its time and multiplicity.
type Contribution = (Row, ClusterTime, isize);

/// Drops the contributions of a document change that leaves the view's row alone: document
/// state emits a changed document as `(key, old, -1)` followed by `(key, new, +1)`, and when
/// both read the same row (an update of fields the view does not read) the pair cancels.
/// Contributions are otherwise passed on in order, so this only saves work downstream.
///
/// Rows live in two reusable buffers: the one being read, and `held`, the row of a retraction
/// held until the next change shows whether it cancels.
struct Pairs<'a> {
    held: &'a mut Row,
    /// The held retraction's document and time.
    holding: Option<(&'a DocKey, ClusterTime)>,
}

impl<'a> Pairs<'a> {
    fn new(held: &'a mut Row) -> Self {
        Pairs {
            held,
            holding: None,
        }
    }

    /// Passes `row`, read from `key`'s document changed at `time` with multiplicity `diff`, to
    /// `give`, unless it cancels the held retraction or is a retraction to hold (then `row`'s
    /// buffer is swapped with the held one).
    fn push(
        &mut self,
        key: &'a DocKey,
        time: ClusterTime,
        diff: isize,
        row: &mut Row,
        give: &mut impl FnMut(&Row, ClusterTime, isize),
    ) {
        if diff == 1
            && self.holding.is_some_and(|(k, t)| t == time && k == key)
            && *self.held == *row
        {
            self.holding = None;
            return;
        }
        self.flush(give);
        if diff == -1 {
            std::mem::swap(self.held, row);
            self.holding = Some((key, time));
        } else {
            give(row, time, diff);
        }
    }

    /// Passes on the held retraction, if any.
    fn flush(&mut self, give: &mut impl FnMut(&Row, ClusterTime, isize)) {
        if let Some((_, time)) = self.holding.take() {
            give(self.held, time, -1);
        }
    }
}

/// One worker's groups of one view, and the groups touched in the time being applied.
///
/// Groups live in a slab (`slots`) found through `index`, so a contribution hashes its key
/// once; a group records whether the current time touched it, so the time's changes are a
/// list of slot numbers, not a second map.
#[derive(Default)]
struct Groups {
    index: FxHashMap<Row, u32>,
    slots: Vec<Group>,
    /// Slots of groups that emptied, for reuse.
    free: Vec<u32>,
    /// Groups touched in the current time, with their row before it.
    touched: Vec<(u32, Option<Row>)>,
}

impl Groups {
    /// Adds one contribution (`keys`, `inputs`) with multiplicity `diff`.
    fn update(&mut self, keys: &[Value], inputs: &[Value], diff: isize, spec: &GroupBy) {
        let slot = self.slot_of(keys, spec);
        let group = &mut self.slots[slot as usize];
        if !group.touched {
            group.touched = true;
            self.touched.push((slot, group.row(spec)));
        }
        group.update(inputs, diff, &spec.aggregates);
    }

    /// Adds one contribution with no record of what changed (for contents read in place), and
    /// forgets its group at once if it empties.
    ///
    /// With `int_sums` (the view has integer sums), a sum that leaves the `i64` range is counted
    /// in [`ViewStats::overflows`] when it leaves it (its row, read later, shows null).
    fn update_in_place(
        &mut self,
        keys: &[Value],
        inputs: &[Value],
        diff: isize,
        spec: &GroupBy,
        int_sums: bool,
    ) {
        let slot = self.slot_of(keys, spec);
        let group = &mut self.slots[slot as usize];
        let overflowing = int_sums && group.overflowing(spec);
        group.update(inputs, diff, &spec.aggregates);
        if int_sums && !overflowing && group.overflowing(spec) {
            spec.stats.overflows.fetch_add(1, Ordering::Relaxed);
        }
        if group.count == 0 {
            self.index.remove(&group.keys);
            group.partials = Vec::new();
            self.free.push(slot);
        }
    }

    /// The current rows of all live groups (each with multiplicity one). Reading counts no
    /// overflows: [`Groups::update_in_place`] counted them.
    fn rows(&self, spec: &GroupBy) -> Vec<(Row, isize)> {
        self.slots
            .iter()
            .filter_map(|group| group.row_with(spec, false))
            .map(|row| (row, 1))
            .collect()
    }

    /// The slot of the group with `keys`, created (empty) if there is none.
    fn slot_of(&mut self, keys: &[Value], spec: &GroupBy) -> u32 {
        match self.index.get(keys) {
            Some(&slot) => slot,
            None => {
                let group = Group::new(keys.to_vec(), &spec.aggregates);
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = group;
                        slot
                    }
                    None => {
                        self.slots.push(group);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(keys.to_vec(), slot);
                slot
            }
        }
    }

    /// Emits `(old row, -1)` and `(new row, +1)` for every group whose row the current time
    /// changed, and forgets groups that emptied.
    fn drain_changes(&mut self, spec: &GroupBy, mut emit: impl FnMut(Row, isize)) {
        for (slot, old) in self.touched.drain(..) {
            let group = &mut self.slots[slot as usize];
            group.touched = false;
            let new = group.row(spec);
            if group.count == 0 {
                self.index.remove(&group.keys);
                group.partials = Vec::new();
                self.free.push(slot);
            }
            if old == new {
                continue;
            }
            if let Some(old) = old {
                emit(old, -1);
            }
            if let Some(new) = new {
                emit(new, 1);
            }
        }
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
    keys: Row,
    count: i64,
    partials: Vec<Partial>,
    /// Whether the time being applied has changed this group.
    touched: bool,
}

impl Group {
    fn new(keys: Row, aggregates: &[Aggregate]) -> Self {
        Group {
            keys,
            count: 0,
            partials: vec![Partial::default(); aggregates.len()],
            touched: false,
        }
    }

    fn update(&mut self, inputs: &[Value], diff: isize, aggregates: &[Aggregate]) {
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

    /// Whether one of the group's integer sums is outside the `i64` range.
    fn overflowing(&self, spec: &GroupBy) -> bool {
        self.partials
            .iter()
            .zip(&spec.aggregates)
            .any(|(partial, agg)| {
                agg.kind == AggregateKind::Sum
                    && agg.output_type() == ValueType::Int64
                    && i64::try_from(partial.int_sum).is_err()
            })
    }

    /// The group's current row, or `None` if it holds no documents; an integer sum outside the
    /// `i64` range is null and counted in [`ViewStats::overflows`].
    fn row(&self, spec: &GroupBy) -> Option<Row> {
        self.row_with(spec, true)
    }

    /// [`Group::row`], counting overflows only if `count_overflows`.
    fn row_with(&self, spec: &GroupBy, count_overflows: bool) -> Option<Row> {
        if self.count <= 0 {
            return None;
        }
        let mut row = Vec::with_capacity(self.keys.len() + self.partials.len());
        row.extend_from_slice(&self.keys);
        for (partial, agg) in self.partials.iter().zip(&spec.aggregates) {
            row.push(match agg.kind {
                AggregateKind::Count => Value::Int(self.count),
                AggregateKind::Sum => match agg.output_type() {
                    ValueType::Int64 => match i64::try_from(partial.int_sum) {
                        Ok(v) => Value::Int(v),
                        Err(_) => {
                            if count_overflows {
                                spec.stats.overflows.fetch_add(1, Ordering::Relaxed);
                            }
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
