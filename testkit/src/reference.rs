//! The sequential reference model: the oracle that changeflow's incremental operators are checked
//! against.
//!
//! It applies change events one at a time, in stream order, to a plain `BTreeMap` of owned
//! [`bson::Document`]s. It is written for clarity, not speed, and shares no code with changeflow.
//!
//! # Semantics
//!
//! * `insert`, `replace`: the document becomes `fullDocument`.
//! * `delete`: the document is removed.
//! * `update`: with a previous version, its `updateDescription` is applied to it (see below); the
//!   event's `fullDocument`, if any, is then ignored. Without a previous version, a non-null
//!   `fullDocument` is taken as is; without either, the event is counted in
//!   [`ReferenceModel::unapplied`] and nothing is guessed.
//! * `drop`: every document of the namespace is removed; `dropDatabase`: every document of the
//!   database; `rename`: the documents of `ns` move to `to` (whatever `to` held is dropped first,
//!   as `renameCollection` with `dropTarget` does).
//! * `invalidate` and every other type (`create`, `createIndexes`, …): no effect.
//! * An event without `operationType` (the Cosmos DB shape) is read as an upsert of `fullDocument`.
//!
//! # Applying an `updateDescription`
//!
//! 1. `truncatedArrays`, in order: the array at `field` keeps its first `newSize` elements.
//! 2. `updatedFields`, in document order: each dotted path is set to its value.
//! 3. `removedFields`, in order: each path is removed.
//!
//! Paths: a dotted path is split on `.`. When `disambiguatedPaths` lists the path, its components
//! are used instead: integer components are array indices, string components field names.
//! Otherwise a component made of decimal digits is an array index when the current container is
//! an array and a field name when it is a document. While setting:
//!
//! * a missing intermediate component creates an empty document (never an array);
//! * in an array, index `< len` replaces, `== len` appends, `> len` pads with nulls then appends
//!   (an intermediate past the end is likewise padded and a new document appended);
//! * an existing field is replaced in place; a new field is appended at the end of its document.
//!
//! While removing, a missing path is a no-op, and removing an array element sets it to null (as
//! `$unset` does). A path that has to go through a scalar, or that names a field inside an array,
//! is an error ([`ReferenceError::Path`]), as is truncating something that is not an array; a
//! failed event leaves the model unchanged.
//!
//! ```
//! use changeflow_testkit::reference::ReferenceModel;
//!
//! let mut model = ReferenceModel::new();
//! model.apply_json_line(r#"{"operationType":"insert","ns":{"db":"shop","coll":"orders"},
//!     "documentKey":{"_id":1},"fullDocument":{"_id":1,"items":[{"qty":1}]}}"#).unwrap();
//! model.apply_json_line(r#"{"operationType":"update","ns":{"db":"shop","coll":"orders"},
//!     "documentKey":{"_id":1},"updateDescription":{"updatedFields":{"items.0.qty":2,
//!     "items.1":{"qty":5},"shipping.carrier":"UPS"},"removedFields":[],"truncatedArrays":[]}}"#).unwrap();
//! let doc = &model.documents()[&("shop.orders".to_string(), r#"{"$numberInt":"1"}"#.to_string())];
//! assert_eq!(
//!     changeflow_testkit::extjson::to_json(doc, false),
//!     r#"{"_id":1,"items":[{"qty":2},{"qty":5}],"shipping":{"carrier":"UPS"}}"#
//! );
//! ```

use std::collections::BTreeMap;
use std::fmt;

use bson::{Bson, Document};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why an event could not be applied to the [`ReferenceModel`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReferenceError {
    /// The line is not valid JSON or not valid Extended JSON.
    Parse(String),
    /// A field the event needs is missing (e.g. `fullDocument` on an insert).
    MissingField(&'static str),
    /// A field has the wrong BSON type.
    WrongType {
        /// The field, as a dotted path inside the event.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
    /// An `updateDescription` path cannot be applied to the previous version.
    Path {
        /// The path as written in the event.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "cannot parse event: {e}"),
            Self::MissingField(field) => write!(f, "event has no `{field}`"),
            Self::WrongType { field, expected } => write!(f, "`{field}` is not {expected}"),
            Self::Path { path, reason } => write!(f, "cannot apply path `{path}`: {reason}"),
        }
    }
}

impl std::error::Error for ReferenceError {}

type Result<T> = std::result::Result<T, ReferenceError>;

/// The sequential reference model (see the [module documentation](self) for its semantics).
///
/// ```
/// use changeflow_testkit::reference::ReferenceModel;
///
/// let mut model = ReferenceModel::new();
/// // An update of a document the model has never seen, without fullDocument: counted, not guessed.
/// model.apply_json_line(r#"{"operationType":"update","ns":{"db":"d","coll":"c"},
///     "documentKey":{"_id":7},"updateDescription":{"updatedFields":{"a":1}}}"#).unwrap();
/// assert_eq!(model.unapplied(), 1);
/// assert!(model.documents().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReferenceModel {
    documents: BTreeMap<(String, String), Document>,
    unapplied: u64,
}

impl ReferenceModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one change event (an owned `bson::Document` as parsed from a JSON line or BSON), in
    /// stream order. On error the model is unchanged.
    pub fn apply(&mut self, event: &Document) -> Result<()> {
        let op = match event.get("operationType") {
            None => None,
            Some(Bson::String(s)) => Some(s.as_str()),
            Some(_) => return Err(wrong_type("operationType", "a string")),
        };
        match op {
            None => {
                let (ns, key) = namespace_and_key(event)?;
                let full =
                    full_document(event)?.ok_or(ReferenceError::MissingField("fullDocument"))?;
                self.documents.insert((ns, key), full.clone());
            }
            Some("insert" | "replace") => {
                let (ns, key) = namespace_and_key(event)?;
                let full =
                    full_document(event)?.ok_or(ReferenceError::MissingField("fullDocument"))?;
                self.documents.insert((ns, key), full.clone());
            }
            Some("delete") => {
                let (ns, key) = namespace_and_key(event)?;
                self.documents.remove(&(ns, key));
            }
            Some("update") => {
                let (ns, key) = namespace_and_key(event)?;
                let full = full_document(event)?;
                let description = match event.get("updateDescription") {
                    None | Some(Bson::Null) => None,
                    Some(Bson::Document(d)) => Some(d),
                    Some(_) => return Err(wrong_type("updateDescription", "a document")),
                };
                let k = (ns, key);
                match (self.documents.get(&k), description, full) {
                    (Some(previous), Some(description), _) => {
                        let next = apply_update_description(previous, description)?;
                        self.documents.insert(k, next);
                    }
                    (_, _, Some(full)) => {
                        self.documents.insert(k, full.clone());
                    }
                    (Some(_), None, None) => {
                        return Err(ReferenceError::MissingField("updateDescription"));
                    }
                    (None, _, None) => self.unapplied += 1,
                }
            }
            Some("drop") => {
                let ns = namespace(event, "ns")?;
                self.documents.retain(|(n, _), _| *n != ns);
            }
            Some("dropDatabase") => {
                let db = ns_part(event, "ns", "db")?;
                let prefix = format!("{db}.");
                self.documents.retain(|(n, _), _| !n.starts_with(&prefix));
            }
            Some("rename") => {
                let from = namespace(event, "ns")?;
                let to = namespace(event, "to")?;
                if from != to {
                    self.documents.retain(|(n, _), _| *n != to);
                    let moving: Vec<(String, String)> = self
                        .documents
                        .keys()
                        .filter(|(n, _)| *n == from)
                        .cloned()
                        .collect();
                    for k in moving {
                        if let Some(doc) = self.documents.remove(&k) {
                            self.documents.insert((to.clone(), k.1), doc);
                        }
                    }
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Parses one line of Extended JSON (relaxed or canonical) with [`parse_json_line`] and
    /// applies it.
    pub fn apply_json_line(&mut self, line: &str) -> Result<()> {
        let event = parse_json_line(line)?;
        self.apply(&event)
    }

    /// Live documents: key = (namespace `"db.coll"`, `documentKey._id` as canonical Extended JSON,
    /// see [`id_key`]) → document.
    pub fn documents(&self) -> &BTreeMap<(String, String), Document> {
        &self.documents
    }

    /// The live version of one document, if any.
    ///
    /// ```
    /// # use changeflow_testkit::reference::ReferenceModel;
    /// let mut model = ReferenceModel::new();
    /// model.apply_json_line(r#"{"operationType":"insert","ns":{"db":"d","coll":"c"},
    ///     "documentKey":{"_id":"k"},"fullDocument":{"_id":"k","v":1}}"#).unwrap();
    /// assert_eq!(model.get("d.c", &bson::Bson::from("k")).unwrap().get_i32("v").unwrap(), 1);
    /// ```
    pub fn get(&self, namespace: &str, id: &Bson) -> Option<&Document> {
        self.documents.get(&(namespace.to_string(), id_key(id)))
    }

    /// Events whose update could not be applied because there was no previous version and no
    /// fullDocument (counted, not guessed).
    pub fn unapplied(&self) -> u64 {
        self.unapplied
    }

    /// V1 over the live documents of `shop.orders`: per `region` → (count of live orders, sum of
    /// `amount`).
    ///
    /// Orders without a string `region` are skipped; an order with a region but no numeric `amount`
    /// (double, int32 or int64) is counted and adds nothing to the sum. Sums are exactly rounded:
    /// Shewchuk's algorithm with a correctly rounded final step, as Python's `math.fsum`, so the
    /// result does not depend on the order of the documents.
    ///
    /// ```
    /// # use changeflow_testkit::reference::ReferenceModel;
    /// let mut model = ReferenceModel::new();
    /// for (id, amount) in [(1, "0.1"), (2, "0.2"), (3, "0.3")] {
    ///     model.apply_json_line(&format!(r#"{{"operationType":"insert","ns":{{"db":"shop","coll":"orders"}},
    ///         "documentKey":{{"_id":{id}}},"fullDocument":{{"_id":{id},"region":"eu","amount":{amount}}}}}"#)).unwrap();
    /// }
    /// assert_eq!(model.orders_by_region()["eu"], (3, 0.6));
    /// ```
    pub fn orders_by_region(&self) -> BTreeMap<String, (i64, f64)> {
        let mut groups: BTreeMap<String, (i64, Vec<f64>)> = BTreeMap::new();
        for doc in self.orders() {
            let Some(Bson::String(region)) = doc.get("region") else {
                continue;
            };
            let entry = groups.entry(region.clone()).or_default();
            entry.0 += 1;
            match doc.get("amount") {
                Some(Bson::Double(v)) => entry.1.push(*v),
                Some(Bson::Int32(v)) => entry.1.push(f64::from(*v)),
                Some(Bson::Int64(v)) => entry.1.push(*v as f64),
                _ => {}
            }
        }
        groups
            .into_iter()
            .map(|(region, (count, amounts))| (region, (count, fsum(&amounts))))
            .collect()
    }

    /// V2 over the live documents of `shop.orders`: per `customer_id` → count of live orders.
    /// Orders without an integer (int32 or int64) `customer_id` are skipped.
    ///
    /// ```
    /// # use changeflow_testkit::reference::ReferenceModel;
    /// let mut model = ReferenceModel::new();
    /// model.apply_json_line(r#"{"operationType":"insert","ns":{"db":"shop","coll":"orders"},
    ///     "documentKey":{"_id":1},"fullDocument":{"_id":1,"customer_id":42}}"#).unwrap();
    /// assert_eq!(model.orders_by_customer()[&42], 1);
    /// ```
    pub fn orders_by_customer(&self) -> BTreeMap<i64, i64> {
        let mut groups = BTreeMap::new();
        for doc in self.orders() {
            let customer = match doc.get("customer_id") {
                Some(Bson::Int32(v)) => i64::from(*v),
                Some(Bson::Int64(v)) => *v,
                _ => continue,
            };
            *groups.entry(customer).or_insert(0) += 1;
        }
        groups
    }

    fn orders(&self) -> impl Iterator<Item = &Document> {
        self.documents
            .iter()
            .filter(|((ns, _), _)| ns == "shop.orders")
            .map(|(_, doc)| doc)
    }
}

/// The model's key for a document `_id`: its canonical Extended JSON, e.g.
/// `{"$oid":"6553f1000000000000000001"}` or `{"$numberInt":"7"}`.
///
/// ```
/// use changeflow_testkit::reference::id_key;
/// assert_eq!(id_key(&bson::Bson::Int64(7)), r#"{"$numberLong":"7"}"#);
/// assert_eq!(id_key(&bson::Bson::from("k")), r#""k""#);
/// ```
pub fn id_key(id: &Bson) -> String {
    id.clone().into_canonical_extjson().to_string()
}

/// The time at which each event becomes visible when transactions are atomic: its own
/// `clusterTime` outside a transaction; inside one (same `lsid` and `txnNumber`), the
/// `clusterTime` of the transaction's last event in `events`. Times as `(t, i)`; events
/// without a `clusterTime` get `(0, 0)`.
///
/// ```
/// use bson::{doc, Timestamp};
/// use changeflow_testkit::reference::commit_times;
/// let ts = |t| Timestamp { time: t, increment: 1 };
/// let events = [
///     doc! { "clusterTime": ts(1), "lsid": { "id": 1 }, "txnNumber": 1_i64 },
///     doc! { "clusterTime": ts(2) },
///     doc! { "clusterTime": ts(3), "lsid": { "id": 1 }, "txnNumber": 1_i64 },
/// ];
/// assert_eq!(commit_times(&events), [(3, 1), (2, 1), (3, 1)]);
/// ```
pub fn commit_times(events: &[Document]) -> Vec<(u32, u32)> {
    let time = |e: &Document| {
        e.get_timestamp("clusterTime")
            .map_or((0, 0), |t| (t.time, t.increment))
    };
    let txn = |e: &Document| -> Option<String> {
        let lsid = e.get_document("lsid").ok()?;
        let number = e.get("txnNumber")?;
        Some(format!(
            "{}/{}",
            Bson::Document(lsid.clone()).into_canonical_extjson(),
            number.clone().into_canonical_extjson()
        ))
    };
    let mut last: std::collections::HashMap<String, (u32, u32)> = Default::default();
    for e in events {
        if let Some(id) = txn(e) {
            last.insert(id, time(e));
        }
    }
    events
        .iter()
        .map(|e| {
            txn(e)
                .and_then(|id| last.get(&id).copied())
                .unwrap_or_else(|| time(e))
        })
        .collect()
}

/// Exactly rounded sum of `values` (Shewchuk / Python's `math.fsum`). Falls back to a plain sum
/// when an input is not finite or an intermediate overflows.
///
/// ```
/// use changeflow_testkit::reference::fsum;
/// assert_eq!(fsum(&[0.1; 10]), 1.0);
/// assert_eq!(fsum(&[1e100, 1.0, -1e100]), 1.0);
/// ```
pub fn fsum(values: &[f64]) -> f64 {
    if values.iter().any(|v| !v.is_finite()) {
        return values.iter().sum();
    }
    let mut partials: Vec<f64> = Vec::new();
    for &value in values {
        let mut x = value;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        if !x.is_finite() {
            return values.iter().sum();
        }
        partials.truncate(i);
        partials.push(x);
    }
    // Sum the partials from the top, stopping at the first inexact step, then fix the rounding
    // of a half-way case using the sign of the next partial (CPython's math_fsum).
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

/// Applies an `updateDescription` to a copy of `previous` (rules in the
/// [module documentation](self)) and returns the new version.
///
/// ```
/// use bson::doc;
/// use changeflow_testkit::reference::apply_update_description;
///
/// let before = doc! { "a": [1, 2, 3], "b": 1 };
/// let description = doc! {
///     "updatedFields": { "a.2": 9, "c.d": true },
///     "removedFields": ["b"],
///     "truncatedArrays": [{ "field": "a", "newSize": 1 }],
/// };
/// let after = apply_update_description(&before, &description).unwrap();
/// assert_eq!(after, doc! { "a": [1, Bson::Null, 9], "c": { "d": true } });
/// # use bson::Bson;
/// ```
pub fn apply_update_description(previous: &Document, description: &Document) -> Result<Document> {
    let disambiguated = match description.get("disambiguatedPaths") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(d)) => Some(d),
        Some(_) => {
            return Err(wrong_type(
                "updateDescription.disambiguatedPaths",
                "a document",
            ));
        }
    };
    let mut doc = previous.clone();

    match description.get("truncatedArrays") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(truncations)) => {
            for t in truncations {
                let Bson::Document(t) = t else {
                    return Err(wrong_type(
                        "updateDescription.truncatedArrays",
                        "an array of documents",
                    ));
                };
                let field = match t.get("field") {
                    Some(Bson::String(f)) => f,
                    _ => {
                        return Err(wrong_type(
                            "updateDescription.truncatedArrays.field",
                            "a string",
                        ));
                    }
                };
                let new_size = match t.get("newSize") {
                    Some(Bson::Int32(n)) if *n >= 0 => *n as usize,
                    Some(Bson::Int64(n)) if *n >= 0 => *n as usize,
                    _ => {
                        return Err(wrong_type(
                            "updateDescription.truncatedArrays.newSize",
                            "a non-negative integer",
                        ));
                    }
                };
                let steps = steps(field, disambiguated)?;
                match lookup_mut(&mut doc, &steps) {
                    Some(Bson::Array(a)) => a.truncate(new_size),
                    _ => {
                        return Err(ReferenceError::Path {
                            path: field.clone(),
                            reason: "truncatedArrays names something that is not an array".into(),
                        });
                    }
                }
            }
        }
        Some(_) => return Err(wrong_type("updateDescription.truncatedArrays", "an array")),
    }

    match description.get("updatedFields") {
        None | Some(Bson::Null) => {}
        Some(Bson::Document(updated)) => {
            for (path, value) in updated {
                let steps = steps(path, disambiguated)?;
                set_in_document(&mut doc, &steps, value.clone()).map_err(|reason| {
                    ReferenceError::Path {
                        path: path.clone(),
                        reason,
                    }
                })?;
            }
        }
        Some(_) => return Err(wrong_type("updateDescription.updatedFields", "a document")),
    }

    match description.get("removedFields") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(removed)) => {
            for path in removed {
                let Bson::String(path) = path else {
                    return Err(wrong_type(
                        "updateDescription.removedFields",
                        "an array of strings",
                    ));
                };
                let steps = steps(path, disambiguated)?;
                remove_path(&mut doc, &steps);
            }
        }
        Some(_) => return Err(wrong_type("updateDescription.removedFields", "an array")),
    }
    Ok(doc)
}

/// One component of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Known to be a field name (from `disambiguatedPaths`, or not made of digits).
    Field(String),
    /// Known to be an array index (from `disambiguatedPaths`).
    Index(usize),
    /// Made of digits, no disambiguation: index in an array, field name in a document.
    Digits(String),
}

fn steps(path: &str, disambiguated: Option<&Document>) -> Result<Vec<Step>> {
    if let Some(components) = disambiguated.and_then(|d| d.get(path)) {
        let Bson::Array(components) = components else {
            return Err(wrong_type(
                "updateDescription.disambiguatedPaths",
                "a document of arrays",
            ));
        };
        return components
            .iter()
            .map(|c| match c {
                Bson::String(s) => Ok(Step::Field(s.clone())),
                Bson::Int32(i) if *i >= 0 => Ok(Step::Index(*i as usize)),
                Bson::Int64(i) if *i >= 0 => Ok(Step::Index(*i as usize)),
                _ => Err(wrong_type(
                    "updateDescription.disambiguatedPaths",
                    "arrays of strings and non-negative integers",
                )),
            })
            .collect();
    }
    Ok(path
        .split('.')
        .map(|c| {
            if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) {
                Step::Digits(c.to_string())
            } else {
                Step::Field(c.to_string())
            }
        })
        .collect())
}

/// The array index a step denotes, if it can denote one.
fn as_index(step: &Step) -> std::result::Result<usize, String> {
    match step {
        Step::Index(i) => Ok(*i),
        Step::Digits(s) => s
            .parse()
            .map_err(|_| format!("array index `{s}` is out of range")),
        Step::Field(f) => Err(format!("field name `{f}` used inside an array")),
    }
}

/// The field name a step denotes inside a document.
fn as_field(step: &Step) -> std::result::Result<&str, String> {
    match step {
        Step::Field(f) | Step::Digits(f) => Ok(f),
        Step::Index(i) => Err(format!("array index {i} used inside a document")),
    }
}

fn set_in_document(
    doc: &mut Document,
    steps: &[Step],
    value: Bson,
) -> std::result::Result<(), String> {
    let (first, rest) = steps.split_first().ok_or("empty path")?;
    let field = as_field(first)?;
    if rest.is_empty() {
        // Replaces in place when present, appends at the end otherwise.
        doc.insert(field, value);
        return Ok(());
    }
    if !doc.contains_key(field) {
        doc.insert(field, Document::new());
    }
    let child = doc.get_mut(field).ok_or("field vanished")?;
    set_in_value(child, rest, value)
}

fn set_in_array(
    array: &mut Vec<Bson>,
    steps: &[Step],
    value: Bson,
) -> std::result::Result<(), String> {
    let (first, rest) = steps.split_first().ok_or("empty path")?;
    let index = as_index(first)?;
    if rest.is_empty() {
        if index < array.len() {
            array[index] = value;
        } else {
            array.resize(index, Bson::Null);
            array.push(value);
        }
        return Ok(());
    }
    if index >= array.len() {
        array.resize(index, Bson::Null);
        array.push(Bson::Document(Document::new()));
    }
    set_in_value(&mut array[index], rest, value)
}

fn set_in_value(target: &mut Bson, steps: &[Step], value: Bson) -> std::result::Result<(), String> {
    match target {
        Bson::Document(d) => set_in_document(d, steps, value),
        Bson::Array(a) => set_in_array(a, steps, value),
        other => Err(format!(
            "cannot create a field inside a {:?}",
            other.element_type()
        )),
    }
}

/// The value at `steps`, if the whole path exists.
fn lookup_mut<'a>(doc: &'a mut Document, steps: &[Step]) -> Option<&'a mut Bson> {
    let (first, rest) = steps.split_first()?;
    let mut current = doc.get_mut(as_field(first).ok()?)?;
    for step in rest {
        current = match current {
            Bson::Document(d) => d.get_mut(as_field(step).ok()?)?,
            Bson::Array(a) => a.get_mut(as_index(step).ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn remove_path(doc: &mut Document, steps: &[Step]) {
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    if parents.is_empty() {
        if let Ok(field) = as_field(last) {
            doc.remove(field); // keeps the order of the remaining fields
        }
        return;
    }
    match lookup_mut(doc, parents) {
        Some(Bson::Document(d)) => {
            if let Ok(field) = as_field(last) {
                d.remove(field);
            }
        }
        Some(Bson::Array(a)) => {
            if let Some(element) = as_index(last).ok().and_then(|i| a.get_mut(i)) {
                *element = Bson::Null;
            }
        }
        _ => {}
    }
}

fn wrong_type(field: &str, expected: &'static str) -> ReferenceError {
    ReferenceError::WrongType {
        field: field.to_string(),
        expected,
    }
}

fn full_document(event: &Document) -> Result<Option<&Document>> {
    match event.get("fullDocument") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(_) => Err(wrong_type("fullDocument", "a document")),
    }
}

fn ns_part<'a>(event: &'a Document, field: &'static str, part: &'static str) -> Result<&'a str> {
    let ns = match event.get(field) {
        Some(Bson::Document(ns)) => ns,
        None => return Err(ReferenceError::MissingField(field)),
        Some(_) => return Err(wrong_type(field, "a document")),
    };
    match ns.get(part) {
        Some(Bson::String(s)) => Ok(s),
        None => Err(ReferenceError::MissingField(part)),
        Some(_) => Err(wrong_type(&format!("{field}.{part}"), "a string")),
    }
}

fn namespace(event: &Document, field: &'static str) -> Result<String> {
    Ok(format!(
        "{}.{}",
        ns_part(event, field, "db")?,
        ns_part(event, field, "coll")?
    ))
}

fn namespace_and_key(event: &Document) -> Result<(String, String)> {
    let ns = namespace(event, "ns")?;
    let id = match event.get("documentKey") {
        Some(Bson::Document(key)) => key.get("_id"),
        None => None,
        Some(_) => return Err(wrong_type("documentKey", "a document")),
    };
    // Fall back to fullDocument._id when there is no documentKey (e.g. a projected stream).
    let id = match id {
        Some(id) => id,
        None => full_document(event)?
            .and_then(|d| d.get("_id"))
            .ok_or(ReferenceError::MissingField("documentKey"))?,
    };
    Ok((ns, id_key(id)))
}

/// Parses one line of Extended JSON (relaxed or canonical) into a `bson::Document`, keeping the
/// order of fields.
///
/// Values are interpreted by the `bson` crate's own Extended JSON conversion
/// (`Bson::try_from(serde_json::Value)`); only documents are assembled here, in their original
/// order (`serde_json::Value` without its `preserve_order` feature sorts keys, and field order
/// matters to MongoDB documents).
///
/// ```
/// use changeflow_testkit::reference::parse_json_line;
///
/// let d = parse_json_line(r#"{"z":1,"a":{"$numberLong":"2"},"m":{"$oid":"000000000000000000000001"}}"#).unwrap();
/// assert_eq!(d.keys().collect::<Vec<_>>(), ["z", "a", "m"]);
/// assert_eq!(d.get_i64("a").unwrap(), 2);
/// ```
pub fn parse_json_line(line: &str) -> Result<Document> {
    let node: Node =
        serde_json::from_str(line).map_err(|e| ReferenceError::Parse(e.to_string()))?;
    match node.into_bson()? {
        Bson::Document(d) => Ok(d),
        other => Err(ReferenceError::Parse(format!(
            "expected a JSON object, got {:?}",
            other.element_type()
        ))),
    }
}

/// A JSON value with object fields in their original order.
enum Node {
    Scalar(serde_json::Value),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// Keys that make an object an Extended JSON type wrapper rather than a document
/// (those the `bson` crate recognises).
const WRAPPER_KEYS: &[&str] = &[
    "$oid",
    "$symbol",
    "$regularExpression",
    "$numberInt",
    "$numberLong",
    "$numberDouble",
    "$numberDecimal",
    "$binary",
    "$uuid",
    "$code",
    "$timestamp",
    "$date",
    "$minKey",
    "$maxKey",
    "$dbPointer",
    "$undefined",
];

impl Node {
    fn into_json(self) -> serde_json::Value {
        match self {
            Node::Scalar(v) => v,
            Node::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(Node::into_json).collect())
            }
            Node::Object(o) => {
                serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, v.into_json())).collect())
            }
        }
    }

    fn into_bson(self) -> Result<Bson> {
        let parse = |e: bson::error::Error| ReferenceError::Parse(e.to_string());
        match self {
            Node::Scalar(v) => Bson::try_from(v).map_err(parse),
            Node::Array(a) => Ok(Bson::Array(
                a.into_iter().map(Node::into_bson).collect::<Result<_>>()?,
            )),
            Node::Object(o) => {
                if o.iter().any(|(k, _)| WRAPPER_KEYS.contains(&k.as_str())) {
                    Bson::try_from(Node::Object(o).into_json()).map_err(parse)
                } else {
                    let mut doc = Document::new();
                    for (k, v) in o {
                        doc.insert(k, v.into_bson()?);
                    }
                    Ok(Bson::Document(doc))
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Node::Scalar(serde_json::Value::Number(n)))
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Node, E> {
        Ok(Node::Scalar(serde_json::Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Node, A::Error> {
        let mut fields = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            fields.push((k, v));
        }
        Ok(Node::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    const NS: &str = r#""ns":{"db":"shop","coll":"orders"}"#;

    fn insert(model: &mut ReferenceModel, id: i32, full: &str) {
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"insert",{NS},"documentKey":{{"_id":{id}}},"fullDocument":{full}}}"#
            ))
            .expect("insert applies");
    }

    fn update(model: &mut ReferenceModel, id: i32, description: &str) -> Result<()> {
        model.apply_json_line(&format!(
            r#"{{"operationType":"update",{NS},"documentKey":{{"_id":{id}}},"updateDescription":{description}}}"#
        ))
    }

    fn state(model: &ReferenceModel, id: i32) -> String {
        let doc = model.get("shop.orders", &Bson::Int32(id)).expect("live");
        crate::extjson::to_json(doc, false)
    }

    /// Applies `description` to `before` (relaxed JSON) and returns the result as relaxed JSON.
    fn after(before: &str, description: &str) -> String {
        let mut model = ReferenceModel::new();
        insert(&mut model, 1, before);
        update(&mut model, 1, description).expect("update applies");
        state(&model, 1)
    }

    #[test]
    fn top_level_set_replaces_in_place_and_appends_new_fields() {
        assert_eq!(
            after(
                r#"{"_id":1,"a":1,"b":2}"#,
                r#"{"updatedFields":{"a":10,"c":3},"removedFields":[],"truncatedArrays":[]}"#
            ),
            r#"{"_id":1,"a":10,"b":2,"c":3}"#
        );
    }

    #[test]
    fn dotted_path_creates_intermediate_documents() {
        assert_eq!(
            after(
                r#"{"_id":1}"#,
                r#"{"updatedFields":{"shipping.address.city":"Paris"}}"#
            ),
            r#"{"_id":1,"shipping":{"address":{"city":"Paris"}}}"#
        );
        // A numeric component under a missing parent creates a document field, not an array.
        assert_eq!(
            after(r#"{"_id":1}"#, r#"{"updatedFields":{"m.0.x":1}}"#),
            r#"{"_id":1,"m":{"0":{"x":1}}}"#
        );
        // Existing intermediate documents are kept; the new field goes at their end.
        assert_eq!(
            after(
                r#"{"_id":1,"s":{"a":1},"z":0}"#,
                r#"{"updatedFields":{"s.b":2}}"#
            ),
            r#"{"_id":1,"s":{"a":1,"b":2},"z":0}"#
        );
    }

    #[test]
    fn array_index_set_append_and_pad() {
        let before = r#"{"_id":1,"items":[{"qty":1},{"qty":2}]}"#;
        assert_eq!(
            after(before, r#"{"updatedFields":{"items.1.qty":5}}"#),
            r#"{"_id":1,"items":[{"qty":1},{"qty":5}]}"#
        );
        assert_eq!(
            after(before, r#"{"updatedFields":{"items.0":"x"}}"#),
            r#"{"_id":1,"items":["x",{"qty":2}]}"#
        );
        assert_eq!(
            after(before, r#"{"updatedFields":{"items.2":{"qty":3}}}"#),
            r#"{"_id":1,"items":[{"qty":1},{"qty":2},{"qty":3}]}"#
        );
        assert_eq!(
            after(before, r#"{"updatedFields":{"items.4":7}}"#),
            r#"{"_id":1,"items":[{"qty":1},{"qty":2},null,null,7]}"#
        );
        // An intermediate past the end pads and appends a new document.
        assert_eq!(
            after(before, r#"{"updatedFields":{"items.3.qty":9}}"#),
            r#"{"_id":1,"items":[{"qty":1},{"qty":2},null,{"qty":9}]}"#
        );
        // Nested arrays.
        assert_eq!(
            after(
                r#"{"_id":1,"m":[[1,2],[3]]}"#,
                r#"{"updatedFields":{"m.1.1":4}}"#
            ),
            r#"{"_id":1,"m":[[1,2],[3,4]]}"#
        );
    }

    #[test]
    fn removed_fields() {
        let before = r#"{"_id":1,"a":1,"s":{"c":"UPS","t":"1Z"},"b":2,"arr":[1,2,3]}"#;
        assert_eq!(
            after(
                before,
                r#"{"updatedFields":{},"removedFields":["a","s.t","arr.1","missing","s.x.y"]}"#
            ),
            r#"{"_id":1,"s":{"c":"UPS"},"b":2,"arr":[1,null,3]}"#
        );
        // Removal comes after the updates: a field set and removed in one event is gone.
        assert_eq!(
            after(
                before,
                r#"{"updatedFields":{"a":5,"n":1},"removedFields":["n"]}"#
            ),
            r#"{"_id":1,"a":5,"s":{"c":"UPS","t":"1Z"},"b":2,"arr":[1,2,3]}"#
        );
    }

    #[test]
    fn truncated_arrays_apply_before_updated_fields() {
        let before = r#"{"_id":1,"items":[1,2,3,4],"n":{"a":[5,6,7]}}"#;
        assert_eq!(
            after(
                before,
                r#"{"updatedFields":{"items.2":"new"},"removedFields":[],"truncatedArrays":[{"field":"items","newSize":2},{"field":"n.a","newSize":{"$numberLong":"1"}}]}"#
            ),
            r#"{"_id":1,"items":[1,2,"new"],"n":{"a":[5]}}"#
        );
        // Truncating something that is not an array is an error and changes nothing.
        let mut model = ReferenceModel::new();
        insert(&mut model, 1, before);
        let err = update(
            &mut model,
            1,
            r#"{"updatedFields":{"x":1},"truncatedArrays":[{"field":"n","newSize":0}]}"#,
        )
        .expect_err("n is not an array");
        assert!(matches!(err, ReferenceError::Path { ref path, .. } if path == "n"));
        assert_eq!(state(&model, 1), before);
    }

    #[test]
    fn disambiguated_paths_numeric_field_name_versus_index() {
        let before = r#"{"_id":1,"a":{"0":{"b":1}},"arr":[{"b":1},{"b":2}]}"#;
        // "a.0.b": 0 is a field name of the document a (also what the default rule gives).
        // "arr.1.b" with [ "arr", 1, "b" ]: 1 is an index.
        assert_eq!(
            after(
                before,
                r#"{"updatedFields":{"a.0.b":5,"arr.1.b":6},"removedFields":[],"truncatedArrays":[],
                    "disambiguatedPaths":{"a.0.b":["a","0","b"],"arr.1.b":["arr",1,"b"]}}"#
            ),
            r#"{"_id":1,"a":{"0":{"b":5}},"arr":[{"b":1},{"b":6}]}"#
        );
        // A field literally named "2" inside a missing parent, declared as a field name.
        assert_eq!(
            after(
                before,
                r#"{"updatedFields":{"c.2":true},"disambiguatedPaths":{"c.2":["c","2"]}}"#
            ),
            r#"{"_id":1,"a":{"0":{"b":1}},"arr":[{"b":1},{"b":2}],"c":{"2":true}}"#
        );
        // A component declared as a field name cannot go into an array.
        let mut model = ReferenceModel::new();
        insert(&mut model, 1, before);
        let err = update(
            &mut model,
            1,
            r#"{"updatedFields":{"arr.1.b":0},"disambiguatedPaths":{"arr.1.b":["arr","1","b"]}}"#,
        )
        .expect_err("field name inside an array");
        assert!(matches!(err, ReferenceError::Path { .. }));
        // A dotted field name (allowed since 5.0) is one component when disambiguated.
        assert_eq!(
            after(
                r#"{"_id":1}"#,
                r#"{"updatedFields":{"a.b":1},"disambiguatedPaths":{"a.b":["a.b"]}}"#
            ),
            r#"{"_id":1,"a.b":1}"#
        );
        // Removal honours disambiguation too: index 0 of arr becomes null.
        assert_eq!(
            after(
                before,
                r#"{"removedFields":["arr.0"],"disambiguatedPaths":{"arr.0":["arr",0]}}"#
            ),
            r#"{"_id":1,"a":{"0":{"b":1}},"arr":[null,{"b":2}]}"#
        );
    }

    #[test]
    fn path_through_a_scalar_is_an_error() {
        let mut model = ReferenceModel::new();
        insert(&mut model, 1, r#"{"_id":1,"a":5}"#);
        let err = update(&mut model, 1, r#"{"updatedFields":{"ok":1,"a.b":1}}"#)
            .expect_err("a is a scalar");
        assert!(matches!(err, ReferenceError::Path { ref path, .. } if path == "a.b"));
        assert_eq!(state(&model, 1), r#"{"_id":1,"a":5}"#, "unchanged on error");
    }

    #[test]
    fn same_document_updated_twice() {
        let mut model = ReferenceModel::new();
        insert(
            &mut model,
            1,
            r#"{"_id":1,"status":"pending","items":[{"qty":1}]}"#,
        );
        update(
            &mut model,
            1,
            r#"{"updatedFields":{"status":"paid","items.1":{"qty":2}}}"#,
        )
        .expect("first");
        update(
            &mut model,
            1,
            r#"{"updatedFields":{"items.1.qty":3},"removedFields":["status"]}"#,
        )
        .expect("second");
        assert_eq!(
            state(&model, 1),
            r#"{"_id":1,"items":[{"qty":1},{"qty":3}]}"#
        );
    }

    #[test]
    fn update_without_previous_version() {
        let mut model = ReferenceModel::new();
        update(&mut model, 1, r#"{"updatedFields":{"a":1}}"#).expect("counted");
        assert_eq!(model.unapplied(), 1);
        assert!(model.documents().is_empty());
        // With fullDocument it is taken as is; a null fullDocument (updateLookup after a delete)
        // counts as absent.
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"update",{NS},"documentKey":{{"_id":2}},"updateDescription":{{"updatedFields":{{"a":1}}}},"fullDocument":{{"_id":2,"a":1,"b":0}}}}"#
            ))
            .expect("applies");
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"update",{NS},"documentKey":{{"_id":3}},"updateDescription":{{"updatedFields":{{"a":1}}}},"fullDocument":null}}"#
            ))
            .expect("applies");
        assert_eq!(model.unapplied(), 2);
        assert_eq!(state(&model, 2), r#"{"_id":2,"a":1,"b":0}"#);
        // With a previous version, the delta wins over fullDocument.
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"update",{NS},"documentKey":{{"_id":2}},"updateDescription":{{"updatedFields":{{"a":7}}}},"fullDocument":{{"_id":2,"a":999}}}}"#
            ))
            .expect("applies");
        assert_eq!(state(&model, 2), r#"{"_id":2,"a":7,"b":0}"#);
    }

    #[test]
    fn insert_replace_delete_and_keys() {
        let mut model = ReferenceModel::new();
        insert(&mut model, 1, r#"{"_id":1,"a":1}"#);
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"replace",{NS},"documentKey":{{"_id":1}},"fullDocument":{{"_id":1,"b":2}}}}"#
            ))
            .expect("replace");
        assert_eq!(state(&model, 1), r#"{"_id":1,"b":2}"#);
        let key = (
            "shop.orders".to_string(),
            r#"{"$numberInt":"1"}"#.to_string(),
        );
        assert!(model.documents().contains_key(&key));
        // Int32 1 and Int64 1 are different keys (canonical Extended JSON differs).
        assert!(model.get("shop.orders", &Bson::Int64(1)).is_none());
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"delete",{NS},"documentKey":{{"_id":1}}}}"#
            ))
            .expect("delete");
        assert!(model.documents().is_empty());
        // Deleting something unknown is harmless.
        model
            .apply_json_line(&format!(
                r#"{{"operationType":"delete",{NS},"documentKey":{{"_id":9}}}}"#
            ))
            .expect("delete");
        // Missing fullDocument on an insert is an error.
        let err = model
            .apply_json_line(&format!(
                r#"{{"operationType":"insert",{NS},"documentKey":{{"_id":1}}}}"#
            ))
            .expect_err("no fullDocument");
        assert_eq!(err, ReferenceError::MissingField("fullDocument"));
        assert!(matches!(
            model.apply_json_line("not json"),
            Err(ReferenceError::Parse(_))
        ));
    }

    fn insert_into(model: &mut ReferenceModel, db: &str, coll: &str, id: i32) {
        model
            .apply(&doc! {
                "operationType": "insert",
                "ns": { "db": db, "coll": coll },
                "documentKey": { "_id": id },
                "fullDocument": { "_id": id, "coll": coll },
            })
            .expect("insert");
    }

    fn namespaces(model: &ReferenceModel) -> Vec<String> {
        model.documents().keys().map(|(ns, _)| ns.clone()).collect()
    }

    #[test]
    fn rename_drop_drop_database_and_invalidate() {
        let mut model = ReferenceModel::new();
        insert_into(&mut model, "a", "x", 1);
        insert_into(&mut model, "a", "x", 2);
        insert_into(&mut model, "a", "y", 3);
        insert_into(&mut model, "a", "z", 9);
        insert_into(&mut model, "ab", "x", 4);
        insert_into(&mut model, "b", "x", 5);

        // rename a.x → a.z: a.z's old content is dropped (dropTarget), a.x's documents move.
        model
            .apply(&doc! { "operationType": "rename", "ns": { "db": "a", "coll": "x" }, "to": { "db": "a", "coll": "z" } })
            .expect("rename");
        assert_eq!(namespaces(&model), ["a.y", "a.z", "a.z", "ab.x", "b.x"]);
        assert!(model.get("a.z", &Bson::Int32(9)).is_none());
        assert_eq!(
            model
                .get("a.z", &Bson::Int32(1))
                .expect("moved")
                .get_str("coll")
                .expect("coll"),
            "x"
        );
        model
            .apply(&doc! { "operationType": "invalidate" })
            .expect("invalidate is a no-op");
        model
            .apply(&doc! { "operationType": "createIndexes", "ns": { "db": "a", "coll": "y" } })
            .expect("other types are no-ops");

        model
            .apply(&doc! { "operationType": "drop", "ns": { "db": "a", "coll": "y" } })
            .expect("drop");
        assert_eq!(namespaces(&model), ["a.z", "a.z", "ab.x", "b.x"]);

        // dropDatabase a: only db "a", not "ab".
        model
            .apply(&doc! { "operationType": "dropDatabase", "ns": { "db": "a" } })
            .expect("dropDatabase");
        assert_eq!(namespaces(&model), ["ab.x", "b.x"]);

        // rename across databases.
        model
            .apply(&doc! { "operationType": "rename", "ns": { "db": "b", "coll": "x" }, "to": { "db": "c", "coll": "w" } })
            .expect("rename");
        assert_eq!(namespaces(&model), ["ab.x", "c.w"]);
        assert!(matches!(
            model.apply(&doc! { "operationType": "rename", "ns": { "db": "b", "coll": "x" } }),
            Err(ReferenceError::MissingField("to"))
        ));
    }

    #[test]
    fn cosmos_shape_is_an_upsert() {
        let mut model = ReferenceModel::new();
        model
            .apply_json_line(&format!(
                r#"{{{NS},"documentKey":{{"_id":1}},"fullDocument":{{"_id":1,"v":1}}}}"#
            ))
            .expect("upsert");
        model
            .apply_json_line(&format!(r#"{{{NS},"fullDocument":{{"_id":1,"v":2}}}}"#))
            .expect("upsert without documentKey");
        assert_eq!(state(&model, 1), r#"{"_id":1,"v":2}"#);
    }

    #[test]
    fn views_over_orders() {
        let mut model = ReferenceModel::new();
        insert(
            &mut model,
            1,
            r#"{"_id":1,"customer_id":7,"region":"eu","amount":0.1}"#,
        );
        insert(
            &mut model,
            2,
            r#"{"_id":2,"customer_id":7,"region":"eu","amount":0.2}"#,
        );
        insert(
            &mut model,
            3,
            r#"{"_id":3,"customer_id":{"$numberLong":"8"},"region":"us","amount":5}"#,
        );
        insert(&mut model, 4, r#"{"_id":4,"region":"us"}"#);
        insert(&mut model, 5, r#"{"_id":5,"customer_id":"x","amount":1.0}"#);
        insert_into(&mut model, "shop", "other", 6);
        assert_eq!(
            model.orders_by_region(),
            BTreeMap::from([
                ("eu".to_string(), (2, 0.30000000000000004)),
                ("us".to_string(), (2, 5.0))
            ])
        );
        assert_eq!(model.orders_by_customer(), BTreeMap::from([(7, 2), (8, 1)]));
        // Moving an order between groups.
        update(
            &mut model,
            1,
            r#"{"updatedFields":{"region":"us","customer_id":8}}"#,
        )
        .expect("update");
        assert_eq!(model.orders_by_region()["us"], (3, 5.1));
        assert_eq!(model.orders_by_customer(), BTreeMap::from([(7, 1), (8, 2)]));
    }

    #[test]
    fn fsum_is_exactly_rounded() {
        assert_eq!(fsum(&[]), 0.0);
        assert_eq!(fsum(&[0.1, 0.2]), 0.30000000000000004);
        assert_eq!(fsum(&[1e16, 1.0, 1e-16]), 10000000000000002.0);
        assert_eq!(fsum(&[1.0, 1e100, 1.0, -1e100]), 2.0);
        // Half-way case fixed by the sign of the remaining partial (CPython's test suite).
        assert_eq!(
            fsum(&[1.0, 2f64.powi(-53), 2f64.powi(-80)]),
            1.0000000000000002
        );
        assert_eq!(
            fsum(&[2f64.powi(53), -0.5, -2f64.powi(-54)]),
            2f64.powi(53) - 1.0
        );
        // Order does not matter.
        let values: Vec<f64> = (1..2000).map(|i| f64::from(i) * 0.01 + 1e-3).collect();
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(fsum(&values), fsum(&reversed));
        assert!(fsum(&[f64::INFINITY, 1.0]).is_infinite());
    }

    #[test]
    fn parse_keeps_order_and_types() {
        let d = parse_json_line(
            r#"{"b":{"$date":"2023-11-14T22:13:20.000Z"},"a":[{"z":1,"y":2}],"c":{"$date":{"$numberLong":"5"}},"d":1.0,"e":2147483648}"#,
        )
        .expect("parses");
        assert_eq!(d.keys().collect::<Vec<_>>(), ["b", "a", "c", "d", "e"]);
        let a = d.get_array("a").expect("array");
        let Bson::Document(inner) = &a[0] else {
            panic!("not a document")
        };
        assert_eq!(inner.keys().collect::<Vec<_>>(), ["z", "y"]);
        assert_eq!(
            d.get_datetime("b").expect("date").timestamp_millis(),
            1_700_000_000_000
        );
        assert_eq!(d.get_datetime("c").expect("date").timestamp_millis(), 5);
        assert!(matches!(d.get("d"), Some(Bson::Double(_))));
        assert!(matches!(d.get("e"), Some(Bson::Int64(2_147_483_648))));
        assert!(parse_json_line("[1]").is_err());
        assert!(parse_json_line(r#"{"a":{"$oid":"zz"}}"#).is_err());
    }
}
