//! Compiling a parsed pipeline into differential operators over a namespace's document state.
//!
//! ```text
//!   Documents ──filter ns, decode──▶ (Pos, doc)
//!      │  per-document stages ($match $project $addFields $unset $replaceRoot $unwind):
//!      │    one flat_map per run of them; a change of one document changes only its outputs
//!      │  $sort: sets each record's Pos (the order downstream stages and readers see)
//!      │  $group: map to (group key, (Pos, argument values)) ──▶ reduce per key
//!      │  $count, $skip, $limit: reduce over the whole collection, in Pos order
//!      ▼
//!   View: Collection<(Pos, doc)>    read in Pos order = MongoDB's output order
//! ```
//!
//! Every record carries a [`Pos`]: the values of the last `$sort` (with directions), then the
//! source document's `_id` (or the group's `_id` after a `$group`), then array positions of
//! unwound elements. Ordering by `Pos` is MongoDB's order where MongoDB defines one, and `_id`
//! order where it does not.
//!
//! # Errors
//!
//! A runtime error (say `$divide` by zero) drops that document from the view and is recorded in
//! [`PipelineStats`] with the document's `_id` and the stage: the view never shows a wrong row,
//! and the caller decides whether any error fails the job.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use bson::{Bson, Document as BsonDoc};
use changeflow_core::{ClusterTime, Document};
use std::collections::HashMap;

use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::documents::{DocKey, Documents};
use crate::mql::compare::Key;
use crate::mql::expr::{EvalError, Expr};
use crate::mql::path::resolve;
use crate::pipeline::apply::apply_stage;
use crate::pipeline::group::AccState;
use crate::pipeline::parse::{Located, PipelineError, Stage, parse_json_pipeline, parse_pipeline};
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

/// Runtime errors of a pipeline view.
#[derive(Debug, Default)]
pub struct PipelineStats {
    errors: AtomicU64,
    first: Mutex<Option<String>>,
}

impl PipelineStats {
    /// Documents dropped because a stage failed on them.
    pub fn errors(&self) -> u64 {
        self.errors.load(AtomicOrdering::Relaxed)
    }
    /// The first failure: the document's `_id`, the stage and MongoDB's error.
    pub fn first_error(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
    fn record(&self, id: &Key, stage: &Located, error: &EvalError) {
        self.errors.fetch_add(1, AtomicOrdering::Relaxed);
        if let Ok(mut first) = self.first.lock()
            && first.is_none()
        {
            *first = Some(format!(
                "document {{_id: {}}}: stage {} ({}): {error}",
                id.0, stage.position, stage.name
            ));
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

    /// Builds the view over a document-state collection (see the module docs).
    pub fn build<'scope>(&self, documents: Documents<'scope>) -> PipelineCollection<'scope> {
        let ns: Arc<str> = self.namespace.as_str().into();
        let mut current: PipelineCollection<'scope> =
            documents.flat_map(move |(key, doc): (DocKey, Document)| {
                if key.ns() != &*ns {
                    return None;
                }
                let parsed = BsonDoc::from_reader(doc.as_bytes()).ok()?;
                let id = Key::new(parsed.get("_id").cloned().unwrap_or(Bson::Null));
                Some((
                    Pos {
                        sort: Vec::new(),
                        id,
                        index: Vec::new(),
                    },
                    doc,
                ))
            });
        let stages = Arc::clone(&self.stages);
        let mut i = 0;
        while i < stages.len() {
            if stages[i].stage.is_per_document() {
                let start = i;
                while i < stages.len() && stages[i].stage.is_per_document() {
                    i += 1;
                }
                current = per_document(current, Arc::clone(&stages), start..i, self.stats());
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
                Stage::Group { .. } => group(current, located, self.stats()),
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
                _ => current,
            };
            i += 1;
        }
        current
    }
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
        let mut out = Vec::new();
        let Ok(parsed) = BsonDoc::from_reader(doc.as_bytes()) else {
            return out;
        };
        let mut docs: Vec<(Vec<u32>, BsonDoc)> = vec![(Vec::new(), parsed)];
        for located in &stages[range.clone()] {
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
    })
}

/// One group's running state: its number of inputs and one state per accumulator.
struct GroupState {
    /// The group key as first seen: equal keys of other types (`2`, `2.0`) join this group,
    /// and the output keeps this `_id` while the group exists.
    rep: Bson,
    count: i64,
    accumulators: Vec<AccState>,
}

/// `$group`: arguments evaluated per document, routed by group key to the worker that keeps
/// that group's running accumulators; at each closed time a changed group emits its old output
/// (retracted) and its new one.
fn group<'scope>(
    input: PipelineCollection<'scope>,
    located: Located,
    stats: Arc<PipelineStats>,
) -> PipelineCollection<'scope> {
    let Stage::Group { id, accumulators } = located.stage.clone() else {
        return input;
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
    let contributions = input.flat_map(move |(pos, doc): (Pos, Document)| {
        let evaluated = (|| -> Result<_, EvalError> {
            if simple
                && let Some(values) = std::iter::once(&id)
                    .chain(accumulators.iter().map(|a| &a.arg))
                    .map(|e| raw_eval(e, doc.as_bytes()))
                    .collect::<Option<Vec<Option<Bson>>>>()
            {
                let mut values = values.into_iter();
                let key = values.next().flatten().unwrap_or(Bson::Null);
                return Ok((Key::new(key), values.map(|v| v.map(Key::new)).collect()));
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
            Ok((key, args)) => Some((key, pos, args)),
            Err(e) => {
                stats.record(&pos.id, &located, &e);
                None
            }
        }
    });
    type Input = (Key, Pos, Vec<Option<Key>>);
    type Contribution = (Input, ClusterTime, isize);
    contributions
        .inner
        .unary_frontier(
            Exchange::new(|((key, _, _), _, _): &Contribution| crate::documents::hash_of(key)),
            "PipelineGroup",
            move |_, _| {
                let mut stash: TimeStash<(Input, isize)> = TimeStash::new();
                let mut groups: HashMap<Key, GroupState> = HashMap::new();
                let mut before: HashMap<Key, Option<Document>> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))));
                    });
                    let Some(closed) = stash.take_closed(frontier) else {
                        return;
                    };
                    let mut session = output.session(&closed.cap);
                    let mut records = closed.records.into_iter().peekable();
                    while let Some(&(time, _)) = records.peek() {
                        while let Some((_, ((key, pos, args), diff))) =
                            records.next_if(|(t, _)| *t == time)
                        {
                            let state = groups.entry(key.clone()).or_insert_with(|| GroupState {
                                rep: key.0.clone(),
                                count: 0,
                                accumulators: empty_states.clone(),
                            });
                            if !before.contains_key(&key) {
                                before.insert(key.clone(), group_output(state, &names));
                            }
                            state.count += diff as i64;
                            for (acc, value) in state.accumulators.iter_mut().zip(&args) {
                                acc.update(&pos, value, diff as i64);
                            }
                        }
                        for (key, old) in before.drain() {
                            let new = groups.get(&key).and_then(|g| group_output(g, &names));
                            if groups.get(&key).is_some_and(|g| g.count <= 0) {
                                groups.remove(&key);
                            }
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
                }
            },
        )
        .as_collection()
}

/// A group's output document, or `None` when it has no inputs.
fn group_output(state: &GroupState, names: &[(String, String)]) -> Option<Document> {
    if state.count <= 0 {
        return None;
    }
    let mut out = BsonDoc::new();
    out.insert("_id", state.rep.clone());
    for ((name, op), acc) in names.iter().zip(&state.accumulators) {
        out.insert(name.as_str(), acc.value(op));
    }
    encode(&out)
}

/// A constant or a field path evaluated on raw BSON: `Some(value or missing)`, or `None` when
/// the path crosses an array (the full evaluation decides then).
fn raw_eval(expr: &Expr, doc: &[u8]) -> Option<Option<Bson>> {
    match expr {
        Expr::Literal(v) => Some(Some(v.clone())),
        Expr::Field(path) => {
            let mut current = bson::RawDocument::from_bytes(doc).ok()?;
            for (i, part) in path.iter().enumerate() {
                let Ok(Some(value)) = current.get(part) else {
                    return Some(None);
                };
                if i + 1 == path.len() {
                    return Some(Bson::try_from(value).ok());
                }
                match value {
                    bson::RawBsonRef::Document(d) => current = d,
                    bson::RawBsonRef::Array(_) => return None,
                    _ => return Some(None),
                }
            }
            Some(None)
        }
        _ => None,
    }
}
