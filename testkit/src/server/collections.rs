//! The server's collections: every document's versions, derived from the event log, so `find`
//! can read the collection as it is now (`local` / `majority`) or as it was at any retained
//! cluster time (`readConcern: {level: "snapshot", atClusterTime}`).
//!
//! ```text
//!   push_locked(event) ──▶ reference model (current version of the key)
//!                               │
//!                               ▼
//!   "db.coll" ─▶ BTreeMap<IdKey, [(time, Some(doc) | None), …]>   versions in time order
//!                               │
//!   find at T: range of _id ────┴─▶ per key, the last version with time ≤ T (a binary search)
//! ```
//!
//! Keys are ordered like MongoDB orders `_id` values ([`IdKey`]): by type class (null < numbers
//! < strings < documents < arrays < binary < ObjectId < booleans < dates < timestamps), numbers
//! by value across int/long/double. A read at `T` costs `O(log n + k log v)` for `k` keys of at
//! most `v` versions, so 100k documents with a few versions each scan quickly.
//!
//! ```
//! use changeflow_testkit::server::collections::IdKey;
//! use bson::Bson;
//! assert!(IdKey(Bson::Int32(2)) < IdKey(Bson::Double(2.5)));
//! assert!(IdKey(Bson::Int64(100)) < IdKey(Bson::String("a".into())));
//! assert_eq!(IdKey(Bson::Int32(3)), IdKey(Bson::Int64(3)));
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bson::{Bson, Document};

/// An `_id` value ordered as MongoDB orders BSON values (see the module docs).
#[derive(Debug, Clone)]
pub struct IdKey(pub Bson);

fn class(value: &Bson) -> u8 {
    match value {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 13,
        _ => 12,
    }
}

fn number(value: &Bson) -> f64 {
    match value {
        Bson::Int32(n) => f64::from(*n),
        Bson::Int64(n) => *n as f64,
        Bson::Double(n) => *n,
        _ => 0.0,
    }
}

fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ca, cb) = (class(a), class(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        _ if ca == 2 => number(a).total_cmp(&number(b)),
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::Binary(x), Bson::Binary(y)) => (x.bytes.len(), u8::from(x.subtype), &x.bytes)
            .cmp(&(y.bytes.len(), u8::from(y.subtype), &y.bytes)),
        (Bson::Document(x), Bson::Document(y)) => {
            for ((kx, vx), (ky, vy)) in x.iter().zip(y.iter()) {
                let o = compare(vx, vy).then_with(|| kx.cmp(ky));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (vx, vy) in x.iter().zip(y.iter()) {
                let o = compare(vx, vy);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for IdKey {}
impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// One version of a document: from `time` on it is `doc` (`None`: deleted).
#[derive(Debug, Clone)]
struct Version {
    time: (u32, u32),
    doc: Option<Document>,
}

/// One collection's versions.
#[derive(Debug, Default)]
struct Collection {
    docs: BTreeMap<IdKey, Vec<Version>>,
    live: usize,
}

/// Which documents a read wants: an `_id` range (filters on `_id` only).
#[derive(Debug, Clone)]
pub struct IdRange {
    /// The lower bound.
    pub lower: Bound<IdKey>,
    /// The upper bound.
    pub upper: Bound<IdKey>,
    /// Only these `_id`s (`$in`), if set.
    pub ids: Option<Vec<IdKey>>,
}

impl IdRange {
    /// Every `_id`.
    pub fn all() -> Self {
        IdRange {
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            ids: None,
        }
    }

    /// The range a `find` filter selects: `{}`, `{_id: v}`, `{_id: {$gte/$gt/$lt/$lte/$eq/$in}}`,
    /// or `$and` of those. Anything else is refused with a message.
    pub fn from_filter(filter: &Document) -> Result<Self, String> {
        let mut range = IdRange::all();
        range.narrow(filter)?;
        Ok(range)
    }

    fn narrow(&mut self, filter: &Document) -> Result<(), String> {
        for (key, value) in filter {
            match (key.as_str(), value) {
                ("$and", Bson::Array(parts)) => {
                    for part in parts {
                        let part = part
                            .as_document()
                            .ok_or_else(|| "$and takes documents".to_string())?;
                        self.narrow(part)?;
                    }
                }
                ("_id", Bson::Document(ops)) if ops.keys().all(|k| k.starts_with('$')) => {
                    for (op, bound) in ops {
                        let k = IdKey(bound.clone());
                        match op.as_str() {
                            "$gte" => self.lower_to(Bound::Included(k)),
                            "$gt" => self.lower_to(Bound::Excluded(k)),
                            "$lte" => self.upper_to(Bound::Included(k)),
                            "$lt" => self.upper_to(Bound::Excluded(k)),
                            "$in" => {
                                let Bson::Array(values) = bound else {
                                    return Err("$in needs an array".into());
                                };
                                let mut ids: Vec<IdKey> =
                                    values.iter().cloned().map(IdKey).collect();
                                ids.sort();
                                ids.dedup();
                                if let Some(previous) = &self.ids {
                                    ids.retain(|k| previous.contains(k));
                                }
                                self.ids = Some(ids);
                            }
                            "$eq" => {
                                self.lower_to(Bound::Included(k.clone()));
                                self.upper_to(Bound::Included(k));
                            }
                            other => {
                                return Err(format!(
                                    "the test server filters _id with $gte/$gt/$lt/$lte/$eq only, not {other}"
                                ));
                            }
                        }
                    }
                }
                ("_id", v) => {
                    let k = IdKey(v.clone());
                    self.lower_to(Bound::Included(k.clone()));
                    self.upper_to(Bound::Included(k));
                }
                (other, _) => {
                    return Err(format!(
                        "the test server filters on _id only, not on {other}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn lower_to(&mut self, bound: Bound<IdKey>) {
        let tighter = match (&self.lower, &bound) {
            (Bound::Unbounded, _) => true,
            (_, Bound::Unbounded) => false,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) => b > a,
            (Bound::Included(a), Bound::Excluded(b)) => b >= a,
            (Bound::Excluded(a), Bound::Excluded(b)) => b > a,
        };
        if tighter {
            self.lower = bound;
        }
    }

    fn upper_to(&mut self, bound: Bound<IdKey>) {
        let tighter = match (&self.upper, &bound) {
            (Bound::Unbounded, _) => true,
            (_, Bound::Unbounded) => false,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) => b < a,
            (Bound::Included(a), Bound::Excluded(b)) => b <= a,
            (Bound::Excluded(a), Bound::Excluded(b)) => b < a,
        };
        if tighter {
            self.upper = bound;
        }
    }

    fn is_empty(&self) -> bool {
        match (&self.lower, &self.upper) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        }
    }
}

/// Every collection's versions (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Collections {
    by_ns: HashMap<String, Collection>,
}

/// Document count and sizes of a collection now (`count`, `collStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectionStats {
    /// Live documents.
    pub count: usize,
    /// Their total BSON size.
    pub size: usize,
}

impl Collections {
    /// From `time` on, `id` in `ns` is `doc` (`None`: deleted).
    pub(crate) fn record(&mut self, ns: &str, id: &Bson, time: (u32, u32), doc: Option<Document>) {
        let c = self.by_ns.entry(ns.to_string()).or_default();
        let versions = c.docs.entry(IdKey(id.clone())).or_default();
        if versions.last().is_some_and(|last| last.doc.is_some()) {
            c.live -= 1;
        }
        if doc.is_some() {
            c.live += 1;
        }
        match versions.last_mut() {
            // Several changes at one time (a transaction): the last one is the version.
            Some(last) if last.time == time => last.doc = doc,
            _ => versions.push(Version { time, doc }),
        }
    }

    /// Deletes every document of `ns` at `time` (a drop).
    pub(crate) fn drop_ns(&mut self, ns: &str, time: (u32, u32)) {
        let ids: Vec<Bson> = match self.by_ns.get(ns) {
            Some(c) => c
                .docs
                .iter()
                .filter(|(_, v)| v.last().is_some_and(|v| v.doc.is_some()))
                .map(|(k, _)| k.0.clone())
                .collect(),
            None => return,
        };
        for id in ids {
            self.record(ns, &id, time, None);
        }
    }

    /// The namespaces whose name starts with `prefix`.
    pub(crate) fn namespaces_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.by_ns
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The live documents of `ns` now.
    pub(crate) fn current(&self, ns: &str) -> Vec<(Bson, Document)> {
        self.read(ns, None, &IdRange::all(), false, usize::MAX)
    }

    /// Count and size of `ns` now (the size is summed when asked: seeding stays cheap).
    pub(crate) fn stats(&self, ns: &str) -> CollectionStats {
        let Some(c) = self.by_ns.get(ns) else {
            return CollectionStats::default();
        };
        let size = c
            .docs
            .values()
            .filter_map(|v| v.last()?.doc.as_ref())
            .map(|d| d.to_vec().map_or(0, |b| b.len()))
            .sum();
        CollectionStats {
            count: c.live,
            size,
        }
    }

    /// The number of live documents of `ns` now.
    pub(crate) fn count(&self, ns: &str) -> usize {
        self.by_ns.get(ns).map_or(0, |c| c.live)
    }

    /// Up to `limit` documents of `ns` in `range`, in `_id` order (descending if `reverse`), as
    /// of `at` (`None`: now).
    pub(crate) fn read(
        &self,
        ns: &str,
        at: Option<(u32, u32)>,
        range: &IdRange,
        reverse: bool,
        limit: usize,
    ) -> Vec<(Bson, Document)> {
        let mut out = Vec::new();
        let Some(c) = self.by_ns.get(ns) else {
            return out;
        };
        if range.is_empty() || limit == 0 {
            return out;
        }
        let bounds = (range.lower.clone(), range.upper.clone());
        let version = |versions: &Vec<Version>| -> Option<Document> {
            match at {
                None => versions.last().and_then(|v| v.doc.clone()),
                Some(t) => {
                    let n = versions.partition_point(|v| v.time <= t);
                    n.checked_sub(1).and_then(|i| versions[i].doc.clone())
                }
            }
        };
        let mut push = |(k, v): (&IdKey, &Vec<Version>)| {
            if let Some(doc) = version(v) {
                out.push((k.0.clone(), doc));
            }
            out.len() < limit
        };
        if let Some(ids) = &range.ids {
            let inside = |k: &IdKey| {
                (match &range.lower {
                    Bound::Included(l) => k >= l,
                    Bound::Excluded(l) => k > l,
                    Bound::Unbounded => true,
                }) && (match &range.upper {
                    Bound::Included(u) => k <= u,
                    Bound::Excluded(u) => k < u,
                    Bound::Unbounded => true,
                })
            };
            let mut selected: Vec<&IdKey> = ids.iter().filter(|k| inside(k)).collect();
            if reverse {
                selected.reverse();
            }
            for k in selected {
                if let Some(entry) = c.docs.get_key_value(k)
                    && !push(entry)
                {
                    break;
                }
            }
        } else if reverse {
            for entry in c.docs.range(bounds).rev() {
                if !push(entry) {
                    break;
                }
            }
        } else {
            for entry in c.docs.range(bounds) {
                if !push(entry) {
                    break;
                }
            }
        }
        out
    }
}
