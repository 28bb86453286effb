//! Document state: the live version of every document, as a differential collection.
//!
//! ```text
//!   Stream<ChangeEvent> ──route──▶ exchange by _id; DDL to every worker
//!                                   │   (one worker: no routing operator, events pipelined)
//!                                   ▼
//!                      [DocumentState]  per worker: ns → _id → Document
//!                                   │   stash by time; at a closed time apply its events in
//!                                   │   token order, then emit per touched key:
//!                                   ▼   (key, old, -1), (key, new, +1)
//!            Collection<((DocKey, Document), ClusterTime, isize)>
//! ```
//!
//! # What each event does
//!
//! * `insert`, `replace`: the document becomes `fullDocument`.
//! * `update`: `updateDescription` is applied to the previous version ([`crate::update`]), which
//!   gives the exact version at this event even when `fullDocument` is absent or, as with
//!   `updateLookup`, newer than the event. Without a previous version (a stream started
//!   mid-way): the pre-image (`fullDocumentBeforeChange`) plus the delta, else `fullDocument`,
//!   else the update is counted in [`DocumentStats::unapplied`] and the document stays unknown.
//!   A delta that does not fit the previous version is counted in [`DocumentStats::conflicts`];
//!   the document then takes `fullDocument` if present and is otherwise retracted: never a guess.
//! * `delete`: the document is retracted.
//! * `drop`: every document of the namespace is retracted; `dropDatabase` every document of the
//!   database; `rename` moves the namespace's documents to `to`, replacing `to`'s documents.
//! * `changeflowSnapshotReset` (a re-snapshot, [`changeflow_core::synthetic::reset`]): every
//!   document of the namespace is retracted; the snapshot's inserts at the same time follow it
//!   (token order), so the net change emitted at that time is exactly the difference between the
//!   old state and the snapshot. Like `drop`, it goes to every worker.
//! * `invalidate`, DDL events and unknown types change no document; unknown types are counted.
//!
//! # Invariants
//!
//! * The output at every closed time equals a sequential application, in stream order, of all
//!   events up to that time: events of one time (a transaction) are applied in resume-token
//!   order, and only the net change per document is emitted, so a document updated three times
//!   in one transaction appears once, retracting its version before the transaction.
//! * Each key's versions are held by exactly one worker, chosen by a hash of the `_id` alone (so
//!   that a rename keeps every document on its worker); namespace-wide events go to every worker.
//!
//! # Progress tracking
//!
//! Events are stashed by time ([`crate::stash`]); the operator holds one capability at the least
//! stashed time and emits a time's changes once the input frontier has passed it.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use changeflow_core::raw::{self, kind};
use changeflow_core::{ChangeEvent, ClusterTime, Document, EventStream, Namespace, OperationType};
use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use crate::fxhash::{FxHashMap, FxHasher};
use crate::stash::TimeStash;
use crate::update::apply_update;

/// The identity of a document: its namespace (`"db.coll"`) and its `_id` value.
///
/// ```
/// use changeflow_operators::documents::DocKey;
/// let key = DocKey::new("shop.orders", &bson::Bson::Int32(7));
/// assert_eq!(key.ns(), "shop.orders");
/// assert_eq!(key.to_string(), "shop.orders/7");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocKey {
    ns: Arc<str>,
    /// The `_id`: its BSON type byte followed by its encoded value.
    id: Arc<[u8]>,
}

impl DocKey {
    /// The key of the document with `_id` `id` in namespace `ns` (for tests and lookups).
    pub fn new(ns: &str, id: &bson::Bson) -> Self {
        let doc = bson::doc! { "_id": id.clone() };
        let bytes = doc.to_vec().unwrap_or_default();
        let (k, value) = raw::get(&bytes, "_id")
            .ok()
            .flatten()
            .map(|e| (e.kind, e.value.to_vec()))
            .unwrap_or((kind::NULL, Vec::new()));
        DocKey::from_parts(ns.into(), k, &value)
    }
    fn from_parts(ns: Arc<str>, k: u8, value: &[u8]) -> Self {
        let mut id = Vec::with_capacity(value.len() + 1);
        id.push(k);
        id.extend_from_slice(value);
        DocKey { ns, id: id.into() }
    }
    /// The namespace, `"db.coll"`.
    pub fn ns(&self) -> &str {
        &self.ns
    }
    /// The `_id` as a BSON type byte and its encoded value.
    pub fn id(&self) -> (u8, &[u8]) {
        (
            self.id.first().copied().unwrap_or(kind::NULL),
            self.id.get(1..).unwrap_or(&[]),
        )
    }
    /// The `_id` as relaxed Extended JSON.
    pub fn id_json(&self) -> String {
        let (k, value) = self.id();
        let mut w = raw::DocWriter::new();
        w.append(k, "_id", value);
        let doc = Document::from_trusted(w.finish());
        let json = doc.to_relaxed_json();
        json.strip_prefix("{\"_id\":")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(&json)
            .to_string()
    }
}

impl fmt::Debug for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.id_json())
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the document-state operator could and could not apply, shared by all workers.
#[derive(Debug, Default)]
pub struct DocumentStats {
    applied: AtomicU64,
    unapplied: AtomicU64,
    conflicts: AtomicU64,
    deletes_of_unknown: AtomicU64,
    unknown_operations: AtomicU64,
}

impl DocumentStats {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Document changes applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
    /// Updates with no previous version, no pre-image and no `fullDocument`.
    pub fn unapplied(&self) -> u64 {
        self.unapplied.load(Ordering::Relaxed)
    }
    /// Updates whose delta did not fit the previous version.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
    /// Deletes of documents with no known version (normal for a stream started mid-way).
    pub fn deletes_of_unknown(&self) -> u64 {
        self.deletes_of_unknown.load(Ordering::Relaxed)
    }
    /// Events of operation types changeflow does not know.
    pub fn unknown_operations(&self) -> u64 {
        self.unknown_operations.load(Ordering::Relaxed)
    }
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The document-state collection: `(DocKey, Document)` records with differential diffs.
pub type Documents<'scope> = VecCollection<'scope, ClusterTime, (DocKey, Document), isize>;

/// The routing hash of a document change (any value when there is one worker: nothing to route).
///
/// It hashes the `_id` alone, not the namespace: a rename moves documents to another namespace
/// on the worker that holds them, and later events about them must be routed there.
fn route(event: &ChangeEvent, peers: u64) -> Option<u64> {
    event.namespace()?;
    let (k, id) = event.document_id()?;
    Some(if peers > 1 { hash_of(&(k, id)) } else { 0 })
}

/// Maintains the live version of every document from a stream of change events (see the module
/// docs). `stats` collects what could not be applied.
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::documents::{document_state, DocumentStats};
/// /// use differential_dataflow::VecCollection;
/// let lines = [
///     r#"{"_id": {"_data": "82000000010000000104"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "s", "coll": "o"}, "documentKey": {"_id": 1}, "fullDocument": {"_id": 1, "n": 1}}"#,
///     r#"{"_id": {"_data": "82000000020000000104"}, "operationType": "update", "clusterTime": {"$timestamp": {"t": 2, "i": 1}}, "ns": {"db": "s", "coll": "o"}, "documentKey": {"_id": 1}, "updateDescription": {"updatedFields": {"n": 2}, "removedFields": []}}"#,
/// ];
/// let events: Vec<_> = lines.iter().map(|l| changeflow_core::ChangeEvent::from_json(l.as_bytes()).unwrap()).collect();
/// let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<ClusterTime, _, _>(|scope| {
///         let stream = changeflow_sources::memory::from_events(scope, events);
///         document_state(stream, DocumentStats::new())
///             .inspect(move |((key, doc), time, diff)| {
///                 sink.lock().unwrap().push((key.to_string(), doc.get("n").unwrap().unwrap().as_i64(), *time, *diff))
///             });
///     });
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|s| (s.2, s.3));
/// assert_eq!(seen, vec![
///     ("s.o/1".to_string(), Some(1), ClusterTime::new(1, 1), 1),
///     ("s.o/1".to_string(), Some(1), ClusterTime::new(2, 1), -1),
///     ("s.o/1".to_string(), Some(2), ClusterTime::new(2, 1), 1),
/// ]);
/// ```
pub fn document_state<'scope>(
    events: EventStream<'scope>,
    stats: Arc<DocumentStats>,
) -> Documents<'scope> {
    let peers = events.scope().peers() as u64;
    // One worker holds every document: nothing to route.
    if peers == 1 {
        return state_operator(events, Pipeline, |record| record, stats);
    }
    // Document changes go to the worker owning their key; namespace-wide events to every worker.
    let routed = events.unary::<CapacityContainerBuilder<Vec<Routed>>, _, _, _>(
        Pipeline,
        "RouteByKey",
        move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for (event, time) in data.drain(..) {
                        match route(&event, peers) {
                            Some(h) if event.operation().is_document_change() => {
                                session.give((h, (event, time)))
                            }
                            _ => {
                                for w in 1..peers {
                                    session.give((w, (event.clone(), time)));
                                }
                                session.give((0, (event, time)));
                            }
                        }
                    }
                });
            }
        },
    );
    let pact = Exchange::new(|(r, _): &Routed| *r);
    state_operator(routed, pact, |(_, record)| record, stats)
}

/// The `DocumentState` operator over `input`, whose records `unpack` into an event and its time,
/// delivered through `pact` (routed by key with several workers, pipelined with one).
fn state_operator<'scope, R, P>(
    input: timely::dataflow::Stream<'scope, ClusterTime, Vec<R>>,
    pact: P,
    unpack: fn(R) -> (ChangeEvent, ClusterTime),
    stats: Arc<DocumentStats>,
) -> Documents<'scope>
where
    R: 'static,
    P: timely::dataflow::channels::pact::ParallelizationContract<ClusterTime, Vec<R>>,
{
    input
        .unary_frontier(pact, "DocumentState", move |_, _| {
            let mut stash: TimeStash<ChangeEvent> = TimeStash::new();
            let mut state = State::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    stash.stash(
                        &cap,
                        0,
                        data.drain(..).map(|r| {
                            let (e, t) = unpack(r);
                            (t, e)
                        }),
                    );
                });
                if let Some(closed) = stash.take_closed(frontier) {
                    let mut session = output.session(&closed.cap);
                    let mut records = closed.records;
                    for chunk in records.chunk_by_mut(|a, b| a.0 == b.0) {
                        let time = chunk[0].0;
                        if chunk.len() > 1 {
                            chunk.sort_by(|a, b| a.1.cmp_token(&b.1));
                        }
                        for (_, event) in chunk.iter() {
                            state.apply(event, &stats);
                        }
                        state
                            .drain_changes(|key, doc, diff| session.give(((key, doc), time, diff)));
                    }
                    stash.recycle(records);
                }
            }
        })
        .as_collection()
}

/// An event with the worker it is routed to.
type Routed = (u64, (ChangeEvent, ClusterTime));

/// A document's `_id`: its type byte and encoded value, shared with every [`DocKey`] of it.
type Id = Arc<[u8]>;

/// A namespace's database and collection, as decoded from an event.
type NamespaceParts = (Arc<str>, Option<Arc<str>>);

/// The versions of one namespace, by `_id` bytes.
type Versions = hashbrown::HashMap<Id, Slot, BuildHasherDefault<FxHasher>>;

/// One document's version, and whether the time being applied has changed it.
///
/// A slot whose document the current time deleted stays (with `doc: None`) until the time's
/// changes are drained, so that a key is listed in [`State::before`] exactly while its slot is
/// marked `touched`.
struct Slot {
    doc: Option<Document>,
    touched: bool,
}

/// One worker's document versions, and the versions before the time being applied.
///
/// Namespaces are numbered in order of first appearance; versions live in one map per
/// namespace, keyed by `_id` bytes, so the hot path hashes a short byte string, not a name.
/// Applying an event hashes its `_id` once, draining the time's changes once more.
#[derive(Default)]
struct State {
    /// Namespace names (`"db.coll"`) by number.
    names: Vec<Arc<str>>,
    numbers: FxHashMap<NamespaceParts, u32>,
    /// The namespace of the previous event, to skip the lookup for runs of one namespace.
    last: Option<(NamespaceParts, u32)>,
    /// Versions per namespace number.
    docs: Vec<Versions>,
    /// Keys touched in the current time (each once), with their version before it.
    before: Vec<(u32, Id, Option<Document>)>,
    id_buf: Vec<u8>,
}

impl State {
    /// The number of namespace `ns`, assigned on first sight.
    fn ns_number(&mut self, ns: &Namespace) -> u32 {
        if let Some(((db, coll), n)) = &self.last
            && **db == *ns.db
            && coll.as_deref() == ns.coll.as_deref()
        {
            return *n;
        }
        let parts = (Arc::clone(&ns.db), ns.coll.clone());
        let n = match self.numbers.get(&parts) {
            Some(n) => *n,
            None => {
                let n = self.names.len() as u32;
                self.names.push(ns.to_string().into());
                self.docs.push(Versions::default());
                self.numbers.insert(parts.clone(), n);
                n
            }
        };
        self.last = Some((parts, n));
        n
    }

    /// The live version of `id` in namespace `ns`.
    fn version(&self, ns: u32, id: &[u8]) -> Option<&Document> {
        self.docs[ns as usize].get(id)?.doc.as_ref()
    }

    /// Emits the net change of every key touched since the last call.
    fn drain_changes(&mut self, mut emit: impl FnMut(DocKey, Document, isize)) {
        for (ns, id, old) in self.before.drain(..) {
            let docs = &mut self.docs[ns as usize];
            let new = match docs.get_mut(&id) {
                Some(slot) => {
                    slot.touched = false;
                    slot.doc.clone()
                }
                None => None,
            };
            if new.is_none() {
                docs.remove(&id);
            }
            if old == new {
                continue;
            }
            let key = DocKey {
                ns: Arc::clone(&self.names[ns as usize]),
                id,
            };
            if let Some(old) = old {
                emit(key.clone(), old, -1);
            }
            if let Some(new) = new {
                emit(key, new, 1);
            }
        }
    }

    /// Sets (or with `None` removes) the version of `id` in namespace `ns`, remembering the
    /// version before the current time.
    fn set(&mut self, ns: u32, id: &[u8], doc: Option<Document>) {
        let docs = &mut self.docs[ns as usize];
        match docs.get_key_value_mut(id) {
            Some((key, slot)) => {
                let old = std::mem::replace(&mut slot.doc, doc);
                if !slot.touched {
                    slot.touched = true;
                    self.before.push((ns, Arc::clone(key), old));
                }
            }
            None => {
                let key: Id = id.into();
                self.before.push((ns, Arc::clone(&key), None));
                docs.insert(key, Slot { doc, touched: true });
            }
        }
    }

    fn apply(&mut self, event: &ChangeEvent, stats: &DocumentStats) {
        let op = event.operation();
        let Some(ns) = event.namespace() else {
            if op.is_unknown() {
                DocumentStats::bump(&stats.unknown_operations);
            }
            return;
        };
        let ns_number = self.ns_number(ns);
        let mut id = std::mem::take(&mut self.id_buf);
        id.clear();
        if let Some((k, v)) = event.document_id() {
            id.push(k);
            id.extend_from_slice(v);
        }
        let has_id = !id.is_empty();
        match op {
            OperationType::Insert | OperationType::Replace => {
                if let (true, Some(Ok(doc))) = (has_id, event.full_document()) {
                    self.set(ns_number, &id, Some(doc));
                    DocumentStats::bump(&stats.applied);
                } else {
                    DocumentStats::bump(&stats.unapplied);
                }
            }
            OperationType::Update if has_id => {
                let previous = self.version(ns_number, &id);
                let delta = event.update_description_bytes();
                let post_image = || event.full_document().and_then(Result::ok);
                let next = match (previous, delta) {
                    (Some(prev), Some(delta)) => match apply_update(prev.as_bytes(), delta) {
                        Ok(bytes) => Some(Document::from_trusted(bytes)),
                        Err(_) => {
                            DocumentStats::bump(&stats.conflicts);
                            post_image()
                        }
                    },
                    (_, delta) => {
                        let from_pre_image = delta.and_then(|delta| {
                            let pre = event.full_document_before_change_bytes()?;
                            apply_update(pre, delta).ok().map(Document::from_trusted)
                        });
                        let found = from_pre_image.or_else(post_image);
                        if found.is_none() {
                            DocumentStats::bump(&stats.unapplied);
                        }
                        found
                    }
                };
                if next.is_some() {
                    DocumentStats::bump(&stats.applied);
                }
                self.set(ns_number, &id, next);
            }
            OperationType::Update => DocumentStats::bump(&stats.unapplied),
            OperationType::Delete if has_id => {
                if self.version(ns_number, &id).is_none() {
                    DocumentStats::bump(&stats.deletes_of_unknown);
                }
                self.set(ns_number, &id, None);
                DocumentStats::bump(&stats.applied);
            }
            OperationType::Drop | OperationType::SnapshotReset => {
                self.retract_namespaces(|n| n == ns_number, |_| false);
            }
            OperationType::DropDatabase => {
                let prefix = format!("{}.", ns.db);
                self.retract_namespaces(|_| false, |name| name.starts_with(&prefix));
            }
            OperationType::Rename => match event.to() {
                Some(to) => {
                    let target = self.ns_number(&to);
                    if target != ns_number {
                        // As `renameCollection` with `dropTarget`: the target's documents go.
                        self.take_namespace(target);
                        for (id, doc) in self.take_namespace(ns_number) {
                            self.set(target, &id, Some(doc));
                        }
                    }
                }
                None => DocumentStats::bump(&stats.unapplied),
            },
            other if other.is_unknown() => DocumentStats::bump(&stats.unknown_operations),
            _ => {}
        }
        self.id_buf = id;
    }

    /// Removes every live document of namespace `ns` (remembering each one's version before
    /// the current time) and returns them.
    fn take_namespace(&mut self, ns: u32) -> Vec<(Id, Document)> {
        let mut taken = Vec::new();
        for (id, slot) in self.docs[ns as usize].iter_mut() {
            let doc = slot.doc.take();
            if !slot.touched {
                slot.touched = true;
                self.before.push((ns, Arc::clone(id), doc.clone()));
            }
            if let Some(doc) = doc {
                taken.push((Arc::clone(id), doc));
            }
        }
        taken
    }

    /// Retracts every document of the namespaces whose number or name matches.
    fn retract_namespaces(&mut self, number: impl Fn(u32) -> bool, name: impl Fn(&str) -> bool) {
        for n in 0..self.names.len() {
            if number(n as u32) || name(&self.names[n]) {
                self.take_namespace(n as u32);
            }
        }
    }
}

/// A stable hash of a key, for spreading keyed data over workers (the same in every process:
/// no random seed).
pub(crate) fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = crate::fxhash::FxHasher::default();
    value.hash(&mut h);
    h.finish()
}
