//! Compiling a parsed pipeline into differential operators over a namespace's document state.
//!
//! ```text
//!   Documents ──filter ns, read _id──▶ (Pos, doc)
//!      │  per-document stages ($match $project $addFields $unset $replaceRoot $unwind):
//!      │    one flat_map per run of them; a change of one document changes only its outputs
//!      │  $sort: sets each record's Pos (the order downstream stages and readers see)
//!      │  $group: map to (group key, [Pos,] argument values) ──exchange by key──▶ running
//!      │    accumulators per group; at each closed time a changed group retracts its last
//!      │    output and emits its new one
//!      │  $count, $skip, $limit: reduce over the whole collection, in Pos order
//!      ▼
//!   View: Collection<(Pos, doc)>    read in Pos order = MongoDB's output order
//! ```
//!
//! What keeps `$group` close to a hand-written group-by (`cargo bench --bench pipelines`):
//! a pipeline that starts with `$group` reads the documents directly (no `(Pos, doc)` records);
//! field-path keys and arguments are read from the document's bytes in one pass, without
//! decoding it; an input carries its position (its `_id`, read only then) only when an
//! order-dependent accumulator (`$first`, `$push`, `$top`, ...) needs it; each group keeps the
//! output it last emitted, so a change retracts it without rebuilding it; outputs are written
//! straight as BSON bytes.
//!
//! Every record carries a [`Pos`]: the values of the last `$sort` (with directions), then the
//! source document's `_id` (or the group's `_id` after a `$group`), then array positions of
//! unwound elements. Ordering by `Pos` is MongoDB's order where MongoDB defines one, and `_id`
//! order where it does not.
//!
//! # Errors
//!
//! A runtime error (say `$divide` by zero) drops that document from the view and is recorded in
//! [`PipelineStats`] as a [`StageError`] (the document's `_id`, the stage's position, the
//! error): the view never shows a wrong row, and the caller's policy decides — fail fast on
//! the first error, or send every failing document to a dead-letter output.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use bson::{Bson, Document as BsonDoc};
use changeflow_core::raw::{self, kind};
use changeflow_core::{ClusterTime, Document};

use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::documents::{DocKey, Documents};
use crate::fxhash::FxHashMap;
use crate::mql::compare::Key;
use crate::mql::expr::{EvalError, Expr};
use crate::mql::path::resolve;
use crate::pipeline::apply::apply_stage;
use crate::pipeline::group::AccState;
use crate::pipeline::parse::{
    Located, Lookup, LookupKey, PipelineError, Stage, lookup_collections, parse_json_pipeline,
    parse_pipeline,
};
use crate::stash::TimeStash;

/// One sort value with its direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SortPart {
    /// The value (null when missing).
    pub value: Key,
    /// Descending.
    pub descending: bool,
}

impl PartialOrd for SortPart {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortPart {
    fn cmp(&self, other: &Self) -> Ordering {
        let order = self.value.cmp(&other.value);
        if self.descending {
            order.reverse()
        } else {
            order
        }
    }
}

/// A record's position in MongoDB's output order (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    /// The last `$sort`'s values.
    pub sort: Vec<SortPart>,
    /// The source document's `_id` (the group's after a `$group`).
    pub id: Key,
    /// Positions within unwound arrays.
    pub index: Vec<u32>,
}

/// A pipeline view's contents: documents with their positions.
pub type PipelineCollection<'scope> = VecCollection<'scope, ClusterTime, (Pos, Document), isize>;

/// A stage that failed on a document (MongoDB would have failed the aggregation): the
/// document's `_id`, the stage's position and name, and MongoDB's error.
///
/// ```
/// use changeflow_operators::mql::expr::EvalError;
/// use changeflow_operators::pipeline::compile::StageError;
/// let e = StageError { id: bson::bson!(7), position: 1, stage: "$project".into(),
///     error: EvalError { operator: "$divide".into(), reason: "can't divide by zero".into() } };
/// assert_eq!(e.to_string(), "document {_id: 7}: stage 1 ($project): $divide: can't divide by zero");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("document {{_id: {id}}}: stage {position} ({stage}): {error}")]
pub struct StageError {
    /// The document's `_id` (the source document's, or the group's after a `$group`).
    pub id: Bson,
    /// The stage's position in the pipeline as written.
    pub position: usize,
    /// The stage's name as written.
    pub stage: String,
    /// What failed.
    pub error: EvalError,
}

/// Runtime errors of a pipeline view.
#[derive(Debug, Default)]
pub struct PipelineStats {
    errors: AtomicU64,
    first: Mutex<Option<StageError>>,
    collect: std::sync::atomic::AtomicBool,
    pending: Mutex<Vec<StageError>>,
}

impl PipelineStats {
    /// Documents dropped because a stage failed on them.
    pub fn errors(&self) -> u64 {
        self.errors.load(AtomicOrdering::Relaxed)
    }
    /// The first failure: the document's `_id`, the stage and MongoDB's error.
    pub fn first_error(&self) -> Option<String> {
        self.first().map(|e| e.to_string())
    }
    /// The first failure, typed.
    pub fn first(&self) -> Option<StageError> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
    /// Keep every failure for [`PipelineStats::take_errors`] (a dead-letter output), not only
    /// the first.
    pub fn collect_errors(&self, on: bool) {
        self.collect.store(on, AtomicOrdering::Relaxed);
    }
    /// The failures kept since the last call (with [`PipelineStats::collect_errors`]).
    pub fn take_errors(&self) -> Vec<StageError> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
    fn record(&self, id: &Key, stage: &Located, error: &EvalError) {
        self.errors.fetch_add(1, AtomicOrdering::Relaxed);
        let failure = StageError {
            id: id.0.clone(),
            position: stage.position,
            stage: stage.name.clone(),
            error: error.clone(),
        };
        if self.collect.load(AtomicOrdering::Relaxed)
            && let Ok(mut pending) = self.pending.lock()
        {
            pending.push(failure.clone());
        }
        if let Ok(mut first) = self.first.lock()
            && first.is_none()
        {
            *first = Some(failure);
        }
    }
}

/// A MongoDB aggregation pipeline maintained incrementally over one namespace.
///
/// ```
/// use changeflow_operators::pipeline::compile::PipelineView;
/// let view = PipelineView::from_json("shop.orders", r#"[{"$group": {"_id": "$region", "n": {"$sum": 1}}}]"#).unwrap();
/// assert_eq!(view.namespace(), "shop.orders");
/// assert!(PipelineView::from_json("shop.orders", r#"[{"$lookup": {}}]"#).is_err());
/// ```
#[derive(Clone)]
pub struct PipelineView {
    namespace: String,
    stages: Arc<Vec<Located>>,
    stats: Arc<PipelineStats>,
}

impl PipelineView {
    /// A view of `namespace` (`db.coll`) through parsed stages.
    pub fn new(namespace: &str, stages: Vec<Located>) -> Self {
        PipelineView {
            namespace: namespace.into(),
            stages: Arc::new(stages),
            stats: Arc::default(),
        }
    }

    /// Parses and checks `stages`.
    pub fn from_documents(namespace: &str, stages: &[BsonDoc]) -> Result<Self, PipelineError> {
        Ok(PipelineView::new(namespace, parse_pipeline(stages)?))
    }

    /// Parses and checks a pipeline written as an Extended JSON array.
    pub fn from_json(namespace: &str, text: &str) -> Result<Self, PipelineError> {
        Ok(PipelineView::new(namespace, parse_json_pipeline(text)?))
    }

    /// The namespace viewed.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runtime errors so far.
    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.stats)
    }

    /// Builds the view over a document-state collection (see the module docs). `$lookup`
    /// stages read their foreign namespaces from the same collection.
    pub fn build<'scope>(&self, documents: Documents<'scope>) -> PipelineCollection<'scope> {
        self.build_with_foreign(documents, Vec::new())
    }

    /// The namespaces (`db.coll`) the pipeline's `$lookup` stages read.
    ///
    /// ```
    /// use changeflow_operators::pipeline::compile::PipelineView;
    /// let view = PipelineView::from_json("shop.orders", r#"[{"$lookup": {"from": "customers",
    ///     "localField": "customer_id", "foreignField": "_id", "as": "customer"}}]"#).unwrap();
    /// assert_eq!(view.lookup_namespaces(), vec!["shop.customers".to_string()]);
    /// ```
    pub fn lookup_namespaces(&self) -> Vec<String> {
        let db = self.namespace.split('.').next().unwrap_or_default();
        lookup_collections(&self.stages)
            .into_iter()
            .map(|c| format!("{db}.{c}"))
            .collect()
    }

    /// Builds the view over `documents`, with `$lookup`'s foreign namespaces read from
    /// `foreign` (`(namespace, document state)` pairs) when given there, from `documents`
    /// otherwise: a lookup is a differential join of two document states, so either side's
    /// change updates exactly the local documents it touches.
    pub fn build_with_foreign<'scope>(
        &self,
        documents: Documents<'scope>,
        foreign: Vec<(String, Documents<'scope>)>,
    ) -> PipelineCollection<'scope> {
        let ns: Arc<str> = self.namespace.as_str().into();
        let inputs = Inputs {
            db: self
                .namespace
                .split('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            main: documents.clone(),
            foreign,
        };
        // A pipeline that starts with `$group` reads the documents straight into the group's
        // contributions: one operator less, and no `(Pos, doc)` record per document.
        if let Some(first) = self.stages.first()
            && matches!(first.stage, Stage::Group { .. })
        {
            let grouped = group(
                GroupInput::Documents(documents, ns),
                first.clone(),
                Arc::clone(&self.stats),
            );
            return compile_stages(grouped, &self.stages, 1, &inputs, &self.stats);
        }
        let current = GroupInput::Documents(documents, ns).into_rows();
        compile_stages(current, &self.stages, 0, &inputs, &self.stats)
    }
}

/// A document of namespace `ns` as a pipeline record at its `_id`'s position.
fn entry(ns: &str, key: &DocKey, doc: Document) -> Option<(Pos, Document)> {
    if key.ns() != ns {
        return None;
    }
    Some((id_position(&doc)?, doc))
}

/// A document's position as a pipeline input: its `_id` (`None` if that cannot be read).
fn id_position(doc: &Document) -> Option<Pos> {
    // Only `_id` is needed here: read it from the bytes, not the whole document.
    let id = match raw::get(doc.as_bytes(), "_id") {
        Ok(Some(element)) => match scalar(element) {
            Some(id) => id,
            None => {
                let raw = bson::RawDocument::from_bytes(doc.as_bytes()).ok()?;
                Bson::try_from(raw.get("_id").ok()??).ok()?
            }
        },
        Ok(None) => Bson::Null,
        Err(_) => return None,
    };
    Some(Pos {
        sort: Vec::new(),
        id: Key::new(id),
        index: Vec::new(),
    })
}

/// The collections a pipeline reads: its own namespace's documents and `$lookup`'s.
struct Inputs<'scope> {
    db: String,
    main: Documents<'scope>,
    foreign: Vec<(String, Documents<'scope>)>,
}

impl<'scope> Inputs<'scope> {
    fn documents_of(&self, ns: &str) -> Documents<'scope> {
        self.foreign
            .iter()
            .find(|(n, _)| n == ns)
            .map_or_else(|| self.main.clone(), |(_, d)| d.clone())
    }
}

/// Compiles `stages` over `current`.
fn compile_stages<'scope>(
    mut current: PipelineCollection<'scope>,
    stages: &Arc<Vec<Located>>,
    start: usize,
    inputs: &Inputs<'scope>,
    stats: &Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    let mut i = start;
    while i < stages.len() {
        if stages[i].stage.is_per_document() {
            let start = i;
            while i < stages.len() && stages[i].stage.is_per_document() {
                i += 1;
            }
            current = per_document(current, Arc::clone(stages), start..i, Arc::clone(stats));
            continue;
        }
        let located = stages[i].clone();
        current = match &located.stage {
            Stage::Sort(fields) => {
                let fields = fields.clone();
                // A sort followed (possibly after a skip) by a limit is a top-k; otherwise
                // it only sets the order.
                current.flat_map(move |(pos, doc): (Pos, Document)| {
                    let parsed = BsonDoc::from_reader(doc.as_bytes()).ok()?;
                    let sort = fields
                        .iter()
                        .map(|f| SortPart {
                            value: Key::new(resolve(&parsed, &f.path).unwrap_or(Bson::Null)),
                            descending: f.descending,
                        })
                        .collect();
                    Some((Pos { sort, ..pos }, doc))
                })
            }
            Stage::Group { .. } => group(GroupInput::Rows(current), located, Arc::clone(stats)),
            Stage::Count(field) => {
                let field = field.clone();
                current
                    .map(|_| ((), ()))
                    .reduce(move |_, input, output| {
                        let n: isize = input.iter().map(|(_, d)| *d).sum();
                        if n > 0 {
                            let mut d = BsonDoc::new();
                            d.insert(
                                field.as_str(),
                                i32::try_from(n).map_or(Bson::Int64(n as i64), Bson::Int32),
                            );
                            if let Some(doc) = encode(&d) {
                                output.push((
                                    (
                                        Pos {
                                            sort: Vec::new(),
                                            id: Key::new(Bson::Null),
                                            index: Vec::new(),
                                        },
                                        doc,
                                    ),
                                    1,
                                ));
                            }
                        }
                    })
                    .map(|((), row)| row)
            }
            Stage::Skip(n) | Stage::Limit(n) => {
                let (n, skip) = (*n as usize, matches!(located.stage, Stage::Skip(_)));
                current
                    .map(|row| ((), row))
                    .reduce(move |_, input, output| {
                        // Input is sorted by (Pos, doc): MongoDB's order.
                        let mut seen = 0usize;
                        for (row, diff) in input {
                            for _ in 0..(*diff).max(0) {
                                let keep = if skip { seen >= n } else { seen < n };
                                if keep {
                                    output.push(((*row).clone(), 1));
                                }
                                seen += 1;
                            }
                        }
                    })
                    .map(|((), row)| row)
            }
            Stage::Lookup(lookup) => {
                let ns = format!("{}.{}", inputs.db, lookup.from);
                let foreign = inputs.documents_of(&ns);
                lookup_join(current, foreign, ns, located.clone(), Arc::clone(stats))
            }
            Stage::Facet(facets) => facet(current, facets, inputs, stats),
            _ => current,
        };
        i += 1;
    }
    current
}

fn encode(doc: &BsonDoc) -> Option<Document> {
    let bytes = doc.to_vec().ok()?;
    Document::from_bytes(bytes).ok()
}

/// A run of per-document stages as one flat_map.
fn per_document<'scope>(
    input: PipelineCollection<'scope>,
    stages: Arc<Vec<Located>>,
    range: std::ops::Range<usize>,
    stats: Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    input.flat_map(move |(pos, doc): (Pos, Document)| {
        let Ok(parsed) = BsonDoc::from_reader(doc.as_bytes()) else {
            return Vec::new();
        };
        run_stages(&stages[range.clone()], &pos, parsed, &stats)
    })
}

/// Per-document stages applied to one document at `pos`: its outputs with their positions
/// (unwound elements add their array index); a failing stage records the error and drops the
/// document's outputs from that stage on.
fn run_stages(
    stages: &[Located],
    pos: &Pos,
    parsed: BsonDoc,
    stats: &PipelineStats,
) -> Vec<(Pos, Document)> {
    let mut docs: Vec<(Vec<u32>, BsonDoc)> = vec![(Vec::new(), parsed)];
    for located in stages {
        let mut next = Vec::new();
        for (index, d) in docs {
            match apply_stage(&located.stage, d) {
                Ok(results) => {
                    let unwinds = matches!(located.stage, Stage::Unwind { .. });
                    for (k, r) in results.into_iter().enumerate() {
                        let mut index = index.clone();
                        if unwinds {
                            index.push(k as u32);
                        }
                        next.push((index, r));
                    }
                }
                Err(e) => stats.record(&pos.id, located, &e),
            }
        }
        docs = next;
    }
    let mut out = Vec::new();
    for (index, d) in docs {
        if let Some(doc) = encode(&d) {
            let mut full = pos.index.clone();
            full.extend(index);
            out.push((
                Pos {
                    sort: pos.sort.clone(),
                    id: pos.id.clone(),
                    index: full,
                },
                doc,
            ));
        }
    }
    out
}

/// A join key: `(present, value)`, so that in the `let` form a missing value equals only a
/// missing one (aggregation `$eq`), while the field form maps missing to null (query equality).
type JoinKey = (bool, Key);

/// The keys a local document joins on.
fn local_keys(key: &LookupKey, doc: &BsonDoc) -> Result<Vec<JoinKey>, EvalError> {
    let mut keys: Vec<JoinKey> = match key {
        LookupKey::Fields { local, .. } => match resolve(doc, local) {
            // An array matches by any element; an empty one, like a missing value, is null.
            Some(Bson::Array(items)) if !items.is_empty() => {
                items.into_iter().map(|v| (true, null_key(v))).collect()
            }
            Some(v) => vec![(true, null_key(v))],
            None => vec![(true, Key::new(Bson::Null))],
        },
        LookupKey::Expr { local, .. } => vec![match local.eval(doc)? {
            Some(v) => (true, Key::new(v)),
            None => (false, Key::new(Bson::Null)),
        }],
    };
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn null_key(v: Bson) -> Key {
    match v {
        Bson::Undefined => Key::new(Bson::Null),
        Bson::Array(items) if items.is_empty() => Key::new(Bson::Null),
        other => Key::new(other),
    }
}

/// The keys a foreign document is found by.
fn foreign_keys(key: &LookupKey, doc: &BsonDoc) -> Vec<JoinKey> {
    let mut keys: Vec<JoinKey> = match key {
        LookupKey::Fields { foreign, .. } => {
            // Query equality: every value the path reaches (an array and each element);
            // nothing reached matches null.
            let reached = crate::mql::path::candidates(doc, foreign);
            if reached.is_empty() {
                vec![(true, Key::new(Bson::Null))]
            } else {
                reached
                    .into_iter()
                    .map(|v| {
                        (
                            true,
                            Key::new(if matches!(v, Bson::Undefined) {
                                Bson::Null
                            } else {
                                v
                            }),
                        )
                    })
                    .collect()
            }
        }
        LookupKey::Expr { foreign, .. } => vec![match resolve(doc, foreign) {
            Some(v) => (true, Key::new(v)),
            None => (false, Key::new(Bson::Null)),
        }],
    };
    keys.sort();
    keys.dedup();
    keys
}

/// `$lookup` as a differential join: local documents keyed by their join keys, foreign
/// documents (after the inner per-document stages) by theirs; per local document, a reduce
/// gathers the matched foreign documents (deduplicated, in foreign `_id` order) into the `as`
/// array. Local documents without a match get an empty array.
fn lookup_join<'scope>(
    current: PipelineCollection<'scope>,
    foreign: Documents<'scope>,
    ns: String,
    located: Located,
    stats: Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    let Stage::Lookup(lookup) = &located.stage else {
        return current;
    };
    let lookup: Arc<Lookup> = Arc::new((**lookup).clone());
    let (l, st, loc) = (Arc::clone(&lookup), Arc::clone(&stats), located.clone());
    let keyed = current.flat_map(move |(pos, doc): (Pos, Document)| {
        let parsed = BsonDoc::from_reader(doc.as_bytes()).ok()?;
        match local_keys(&l.key, &parsed) {
            Ok(keys) => Some(((pos, doc), keys)),
            Err(e) => {
                st.record(&pos.id, &loc, &e);
                None
            }
        }
    });
    let (l, st) = (Arc::clone(&lookup), Arc::clone(&stats));
    let ns: Arc<str> = ns.into();
    let found = foreign.flat_map(move |(key, doc): (DocKey, Document)| {
        if key.ns() != &*ns {
            return Vec::new();
        }
        let Ok(parsed) = BsonDoc::from_reader(doc.as_bytes()) else {
            return Vec::new();
        };
        let keys = foreign_keys(&l.key, &parsed);
        let pos = Pos {
            sort: Vec::new(),
            id: Key::new(parsed.get("_id").cloned().unwrap_or(Bson::Null)),
            index: Vec::new(),
        };
        let outputs = run_stages(&l.inner, &pos, parsed, &st);
        keys.into_iter()
            .flat_map(|k| outputs.iter().map(move |o| (k.clone(), o.clone())))
            .collect::<Vec<_>>()
    });
    type Joined = Option<(Pos, Document)>;
    let matched = keyed
        .clone()
        .flat_map(|(row, keys)| keys.into_iter().map(move |k| (k, row.clone())))
        .join(found)
        .map(|(_, (row, f))| (row, Some(f) as Joined));
    let parts: Vec<String> = lookup.as_field.split('.').map(str::to_string).collect();
    keyed
        .map(|(row, _)| (row, None as Joined))
        .concat(matched)
        .reduce(
            move |(_, local), input, output: &mut Vec<(Document, isize)>| {
                let copies: isize = input
                    .iter()
                    .filter(|(v, _)| v.is_none())
                    .map(|(_, d)| *d)
                    .sum();
                if copies <= 0 {
                    return;
                }
                let Ok(mut doc) = BsonDoc::from_reader(local.as_bytes()) else {
                    return;
                };
                let joined: Vec<Bson> = input
                    .iter()
                    .filter(|(_, d)| *d > 0)
                    .filter_map(|(v, _)| v.as_ref())
                    .filter_map(|(_, f)| BsonDoc::from_reader(f.as_bytes()).ok())
                    .map(Bson::Document)
                    .collect();
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                crate::pipeline::apply::set_path(&mut doc, &parts, Bson::Array(joined));
                if let Some(out) = encode(&doc) {
                    output.push((out, copies));
                }
            },
        )
        .map(|((pos, _), doc)| (pos, doc))
}

/// `$facet`: each sub-pipeline compiled as its own branch over the same input; one reduce
/// gathers every branch's rows (in their order) into the single output document, which is
/// retracted and re-inserted whenever a branch changes at a time. Over no input it is
/// `{name: [], ...}`, as in MongoDB.
fn facet<'scope>(
    current: PipelineCollection<'scope>,
    facets: &[(String, Vec<Located>)],
    inputs: &Inputs<'scope>,
    stats: &Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    use timely::dataflow::operators::ToStream;
    let nobody = Pos {
        sort: Vec::new(),
        id: Key::new(Bson::Null),
        index: Vec::new(),
    };
    let scope = current.scope();
    // One seed record (on one worker) so that the output exists over an empty input.
    type Tagged = ((), (u32, Pos, Document));
    let seed: Vec<(Tagged, ClusterTime, isize)> = match encode(&BsonDoc::new()) {
        Some(empty) if scope.index() == 0 => vec![(
            ((), (u32::MAX, nobody.clone(), empty)),
            <ClusterTime as timely::progress::Timestamp>::minimum(),
            1,
        )],
        _ => Vec::new(),
    };
    let mut all = seed.to_stream(scope).as_collection();
    for (i, (_, sub)) in facets.iter().enumerate() {
        let branch = compile_stages(current.clone(), &Arc::new(sub.clone()), 0, inputs, stats);
        let i = i as u32;
        all = all.concat(branch.map(move |(pos, doc)| ((), (i, pos, doc))));
    }
    let names: Vec<String> = facets.iter().map(|(n, _)| n.clone()).collect();
    all.reduce(move |_, input, output: &mut Vec<(Document, isize)>| {
        let mut arrays: Vec<Vec<Bson>> = vec![Vec::new(); names.len()];
        for ((i, _, doc), n) in input {
            if let (Some(array), Ok(d)) = (
                arrays.get_mut(*i as usize),
                BsonDoc::from_reader(doc.as_bytes()),
            ) {
                for _ in 0..(*n).max(0) {
                    array.push(Bson::Document(d.clone()));
                }
            }
        }
        let mut out = BsonDoc::new();
        for (name, array) in names.iter().zip(arrays) {
            out.insert(name.as_str(), Bson::Array(array));
        }
        if let Some(doc) = encode(&out) {
            output.push((doc, 1));
        }
    })
    .map(move |((), doc)| (nobody.clone(), doc))
}

/// What a `$group` reads: the records of the stages before it, or (when it is the first stage)
/// a namespace's documents directly. `into_rows` is the pipeline's entry step for the others.
enum GroupInput<'scope> {
    Rows(PipelineCollection<'scope>),
    Documents(Documents<'scope>, Arc<str>),
}

impl<'scope> GroupInput<'scope> {
    fn into_rows(self) -> PipelineCollection<'scope> {
        match self {
            GroupInput::Rows(rows) => rows,
            GroupInput::Documents(documents, ns) => {
                documents.flat_map(move |(key, doc): (DocKey, Document)| entry(&ns, &key, doc))
            }
        }
    }
}

/// A `$group` input: its group key, its position when an accumulator needs it, and each
/// accumulator's argument.
type Input = (Key, Option<Box<Pos>>, Vec<Option<Key>>);

/// One group's running state: its number of inputs and one state per accumulator.
struct GroupState {
    /// The group key as first seen: equal keys of other types (`2`, `2.0`) join this group,
    /// and the output keeps this `_id` while the group exists.
    rep: Bson,
    count: i64,
    accumulators: Vec<AccState>,
    /// The output last emitted for this group (what a change retracts).
    emitted: Option<Document>,
}

/// `$group`: arguments evaluated per document, routed by group key to the worker that keeps
/// that group's running accumulators; at each closed time a changed group emits its old output
/// (retracted) and its new one.
fn group<'scope>(
    input: GroupInput<'scope>,
    located: Located,
    stats: Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    let Stage::Group { id, accumulators } = located.stage.clone() else {
        return input.into_rows();
    };
    let names: Vec<(String, String)> = accumulators
        .iter()
        .map(|a| (a.name.clone(), a.op.clone()))
        .collect();
    let empty_states: Vec<AccState> = accumulators.iter().map(AccState::for_accumulator).collect();
    // When the key and every argument are plain field paths or constants, read them straight
    // from the document's bytes (no decoding of the whole document), falling back to the full
    // evaluation when a path crosses an array.
    let simple = std::iter::once(&id)
        .chain(accumulators.iter().map(|a| &a.arg))
        .all(|e| matches!(e, Expr::Field(_) | Expr::Literal(_)))
        && !accumulators.iter().any(|a| a.is_ranked());
    // Only the order-dependent accumulators ($first, $push, $top, ...) read an input's
    // position: the others are sent without it (records a third the size).
    let positioned = empty_states
        .iter()
        .any(|s| matches!(s, AccState::Ordered(_) | AccState::Ranked { .. }));
    // The key and the arguments in one list, for the one-pass read of the simple case.
    let simple_exprs: Vec<Expr> = if simple {
        std::iter::once(id.clone())
            .chain(accumulators.iter().map(|a| a.arg.clone()))
            .collect()
    } else {
        Vec::new()
    };
    // `pos` is `None` for a document read straight from the document state: its position is
    // then read from its `_id` only when needed (an order-dependent accumulator, an error).
    let contribute = move |pos: Option<Pos>, doc: Document| -> Option<Input> {
        let evaluated = (|| -> Result<_, EvalError> {
            if simple && let Some(values) = raw_eval_all(&simple_exprs, doc.as_bytes()) {
                let mut values = values.into_iter();
                let key = values.next().flatten().unwrap_or(Bson::Null);
                // Same layout (`Key` wraps `Bson`): collected in place, no new allocation.
                let args: Vec<Option<Key>> = values.map(|v| v.map(Key::new)).collect();
                return Ok((Key::new(key), args));
            }
            let parsed = BsonDoc::from_reader(doc.as_bytes()).map_err(|e| EvalError {
                operator: "$group".into(),
                reason: e.to_string(),
            })?;
            let key = id.eval(&parsed)?.unwrap_or(Bson::Null);
            let mut args: Vec<Option<Key>> = Vec::with_capacity(accumulators.len());
            for a in &accumulators {
                args.push(if a.is_ranked() {
                    // [[sort values...], output]: missing sort values sort as null, and a
                    // missing output is null (as MongoDB returns it).
                    let sort: Vec<Bson> = a
                        .sort_by
                        .iter()
                        .map(|f| resolve(&parsed, &f.path).unwrap_or(Bson::Null))
                        .collect();
                    let output = a.arg.eval(&parsed)?.unwrap_or(Bson::Null);
                    Some(Key::new(Bson::Array(vec![Bson::Array(sort), output])))
                } else {
                    a.arg.eval(&parsed)?.map(Key::new)
                });
            }
            Ok((Key::new(key), args))
        })();
        match evaluated {
            Ok((key, args)) => {
                let pos = match positioned {
                    true => Some(Box::new(pos.or_else(|| id_position(&doc))?)),
                    false => None,
                };
                Some((key, pos, args))
            }
            Err(e) => {
                // $bucket runs as a $group over a $switch: say it as MongoDB does.
                let e = if located.name == "$bucket" && e.operator == "$switch" {
                    EvalError {
                        operator: "$bucket".into(),
                        reason: "could not find a matching branch for an input, and no default was specified".into(),
                    }
                } else {
                    e
                };
                let id = match pos.or_else(|| id_position(&doc)) {
                    Some(pos) => pos.id,
                    None => Key::new(Bson::Null),
                };
                stats.record(&id, &located, &e);
                None
            }
        }
    };
    let contributions = match input {
        GroupInput::Rows(rows) => rows.flat_map(move |(pos, doc)| contribute(Some(pos), doc)),
        GroupInput::Documents(documents, ns) => {
            documents.flat_map(move |(key, doc): (DocKey, Document)| {
                if key.ns() != &*ns {
                    return None;
                }
                contribute(None, doc)
            })
        }
    };
    type Contribution = (Input, ClusterTime, isize);
    // Inputs without a position (see `positioned`) are all at this one.
    let no_pos = Pos {
        sort: Vec::new(),
        id: Key::new(Bson::Null),
        index: Vec::new(),
    };
    contributions
        .inner
        .unary_frontier(
            Exchange::new(|((key, _, _), _, _): &Contribution| crate::documents::hash_of(key)),
            "PipelineGroup",
            move |_, _| {
                let mut stash: TimeStash<(Input, isize)> = TimeStash::new();
                let mut groups: FxHashMap<Key, GroupState> = FxHashMap::default();
                let mut before: FxHashMap<Key, Option<Document>> = FxHashMap::default();
                let mut writer = raw::DocWriter::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))));
                    });
                    let Some(closed) = stash.take_closed(frontier) else {
                        return;
                    };
                    let mut session = output.session(&closed.cap);
                    let mut buffer = closed.records;
                    let mut records = buffer.drain(..).peekable();
                    while let Some(&(time, _)) = records.peek() {
                        while let Some((_, ((key, pos, args), diff))) =
                            records.next_if(|(t, _)| *t == time)
                        {
                            let state = match groups.get_mut(&key) {
                                Some(state) => state,
                                None => groups.entry(key.clone()).or_insert_with(|| GroupState {
                                    rep: key.0.clone(),
                                    count: 0,
                                    accumulators: empty_states.clone(),
                                    emitted: None,
                                }),
                            };
                            before.entry(key).or_insert_with(|| state.emitted.clone());
                            state.count += diff as i64;
                            let pos = pos.as_deref().unwrap_or(&no_pos);
                            for (acc, value) in state.accumulators.iter_mut().zip(&args) {
                                acc.update(pos, value, diff as i64);
                            }
                        }
                        for (key, old) in before.drain() {
                            let new = match groups.get_mut(&key) {
                                Some(g) if g.count > 0 => {
                                    g.emitted = group_output(g, &names, &mut writer);
                                    g.emitted.clone()
                                }
                                Some(_) => {
                                    groups.remove(&key);
                                    None
                                }
                                None => None,
                            };
                            if old == new {
                                continue;
                            }
                            let pos = Pos {
                                sort: Vec::new(),
                                id: key,
                                index: Vec::new(),
                            };
                            if let Some(old) = old {
                                session.give(((pos.clone(), old), time, -1));
                            }
                            if let Some(new) = new {
                                session.give(((pos, new), time, 1));
                            }
                        }
                    }
                    drop(records);
                    stash.recycle(buffer);
                }
            },
        )
        .as_collection()
}

/// A group's output document, or `None` when it has no inputs.
fn group_output(
    state: &GroupState,
    names: &[(String, String)],
    out: &mut raw::DocWriter,
) -> Option<Document> {
    if state.count <= 0 {
        return None;
    }
    // Written straight as BSON bytes (no intermediate document, no re-validation). Refuses
    // only what `bson::Document::to_vec` refuses too (a NUL in a field name).
    let written = std::iter::once(append_value(out, "_id", &state.rep))
        .chain(
            names
                .iter()
                .zip(&state.accumulators)
                .map(|((name, op), acc)| append_value(out, name, &acc.value(op))),
        )
        .all(|ok| ok.is_some());
    let doc = out.take_document();
    written.then_some(doc)
}

/// Appends `value` under `key`: the common scalar types written directly, the others through
/// `bson`'s encoder. `None` when the key holds a NUL (BSON cannot store it) or `bson` refuses
/// the value.
fn append_value(out: &mut raw::DocWriter, key: &str, value: &Bson) -> Option<()> {
    if key.as_bytes().contains(&0) {
        return None;
    }
    match value {
        Bson::String(s) => out.append_str(key, s),
        Bson::Double(v) => out.append(kind::DOUBLE, key, &v.to_le_bytes()),
        Bson::Int32(v) => out.append(kind::INT32, key, &v.to_le_bytes()),
        Bson::Int64(v) => out.append(kind::INT64, key, &v.to_le_bytes()),
        Bson::Boolean(b) => out.append(kind::BOOLEAN, key, &[u8::from(*b)]),
        Bson::Null => out.append(kind::NULL, key, &[]),
        other => {
            let mut one = bson::RawDocumentBuf::new();
            one.append(
                bson::raw::cstr!(""),
                bson::RawBson::try_from(other.clone()).ok()?,
            );
            let element = raw::elements(one.as_bytes()).next()?.ok()?;
            out.append(element.kind, key, element.value);
        }
    }
    Some(())
}

/// Constants and field paths evaluated on raw BSON in one pass over the document's top-level
/// fields (the first occurrence of a repeated key wins, as in `RawDocument::get`): each
/// `Some(value)` or `None` (missing). `None` overall when an expression is anything else, or a
/// path crosses an array or ends on a value that [`scalar`] does not read: the full evaluation
/// decides then.
fn raw_eval_all(exprs: &[Expr], doc: &[u8]) -> Option<Vec<Option<Bson>>> {
    let mut values: Vec<Option<Bson>> = Vec::with_capacity(exprs.len());
    for e in exprs {
        match e {
            Expr::Literal(v) => values.push(Some(v.clone())),
            Expr::Field(path) if !path.is_empty() => values.push(None),
            _ => return None,
        }
    }
    let key = |i: usize| match &exprs[i] {
        Expr::Field(path) => path.first().map(|p| p.as_bytes()),
        _ => None,
    };
    let complete = raw::first_occurrences(doc, exprs.len(), key, |i, element| {
        let Expr::Field(path) = &exprs[i] else {
            return true;
        };
        match resolve_raw(element, &path[1..]) {
            Some(value) => {
                values[i] = value;
                true
            }
            None => false,
        }
    });
    complete.then_some(values)
}

/// The value at `rest` below `element`: `Some(value or missing)`, or `None` when the path
/// crosses an array or ends on a value [`scalar`] does not read.
fn resolve_raw(element: raw::Element<'_>, rest: &[String]) -> Option<Option<Bson>> {
    let Some((part, rest)) = rest.split_first() else {
        return scalar(element).map(Some);
    };
    match element.kind {
        kind::DOCUMENT => match raw::get(element.value, part) {
            Ok(Some(inner)) => resolve_raw(inner, rest),
            _ => Some(None),
        },
        kind::ARRAY => None,
        _ => Some(None),
    }
}

/// The common scalar types as a `Bson` value, straight from their bytes (`None` for the
/// others: documents, arrays, decimals, binaries, ...).
fn scalar(element: raw::Element<'_>) -> Option<Bson> {
    let v = element.value;
    Some(match element.kind {
        kind::DOUBLE => Bson::Double(f64::from_le_bytes(v.try_into().ok()?)),
        kind::STRING => Bson::String(element.as_str()?.to_owned()),
        kind::INT32 => Bson::Int32(i32::from_le_bytes(v.try_into().ok()?)),
        kind::INT64 => Bson::Int64(i64::from_le_bytes(v.try_into().ok()?)),
        kind::BOOLEAN => match v {
            [0] => Bson::Boolean(false),
            [1] => Bson::Boolean(true),
            _ => return None,
        },
        kind::NULL => Bson::Null,
        kind::OBJECT_ID => Bson::ObjectId(bson::oid::ObjectId::from_bytes(v.try_into().ok()?)),
        kind::DATETIME => Bson::DateTime(bson::DateTime::from_millis(i64::from_le_bytes(
            v.try_into().ok()?,
        ))),
        _ => return None,
    })
}
