//! [`ChangeEvent`]: one MongoDB change event, decoded from raw BSON.
//!
//! An event is kept as the BSON document it arrived as (from the driver or transcoded from
//! Extended JSON), plus the few header fields every operator needs, decoded in one pass over the
//! top-level elements: the operation type, `clusterTime`, the resume token, `ns`, and the
//! transaction identity. Everything else (`fullDocument`, `updateDescription`, `documentKey`,
//! `to`, pre-images, `splitEvent`, `operationDescription`, `collectionUUID`, `wallTime`) is
//! located during that pass and read lazily, so nothing the server sent is lost and nothing is
//! decoded twice.
//!
//! # Invariants
//!
//! * Decoding fails only when an event cannot be placed in time or identified: no `_id`, no
//!   `clusterTime`, no `operationType`, or a field of the wrong BSON type. The error names the
//!   event's token when it has one.
//! * Unknown operation types are kept as [`OperationType::Unknown`] with their name; they are not
//!   errors, and operators report them.
//!
//! ```
//! use changeflow_core::{ChangeEvent, OperationType, ClusterTime};
//! let json = br#"{"_id": {"_data": "82000000050000000104"}, "operationType": "insert",
//!   "clusterTime": {"$timestamp": {"t": 5, "i": 1}}, "ns": {"db": "shop", "coll": "orders"},
//!   "documentKey": {"_id": 1}, "fullDocument": {"_id": 1, "region": "eu"}}"#;
//! let event = ChangeEvent::from_json(json).unwrap();
//! assert_eq!(event.operation(), &OperationType::Insert);
//! assert_eq!(event.cluster_time(), ClusterTime::new(5, 1));
//! assert_eq!(event.namespace().unwrap().to_string(), "shop.orders");
//! let full = event.full_document().unwrap().unwrap();
//! assert_eq!(full.get("region").unwrap().unwrap().as_str(), Some("eu"));
//! ```

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::raw::{self, Element, kind};
use crate::resume_token::{self, ResumeToken};
use crate::{ClusterTime, Document, Error};

/// The `operationType` of a change event.
///
/// ```
/// use changeflow_core::OperationType;
/// assert_eq!(OperationType::parse("dropDatabase"), OperationType::DropDatabase);
/// assert_eq!(OperationType::parse("somethingNew").as_str(), "somethingNew");
/// assert!(OperationType::parse("somethingNew").is_unknown());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OperationType {
    /// A document was inserted (`fullDocument` holds it).
    Insert,
    /// A document was updated (`updateDescription` holds the delta).
    Update,
    /// A document was replaced (`fullDocument` holds the new version).
    Replace,
    /// A document was deleted.
    Delete,
    /// A collection was dropped.
    Drop,
    /// A collection was renamed (`to` holds the new namespace).
    Rename,
    /// A database was dropped.
    DropDatabase,
    /// The stream was invalidated (after a drop or rename of the watched collection).
    Invalidate,
    /// A collection or view was created (expanded event).
    Create,
    /// Indexes were created (expanded event).
    CreateIndexes,
    /// Indexes were dropped (expanded event).
    DropIndexes,
    /// A collection was modified with `collMod` (expanded event).
    Modify,
    /// A collection was sharded (expanded event).
    ShardCollection,
    /// A collection was resharded (expanded event).
    ReshardCollection,
    /// A collection's shard key was refined (expanded event).
    RefineCollectionShardKey,
    /// changeflow's own (`"changeflowSnapshotReset"`, never sent by MongoDB): every document
    /// of the namespace is retracted, because a re-snapshot at this time re-inserts what
    /// exists (see [`crate::synthetic::reset`]).
    SnapshotReset,
    /// An operation type changeflow does not know, kept with its name.
    Unknown(Arc<str>),
}

impl OperationType {
    /// Parses an `operationType` string; unknown names become [`OperationType::Unknown`].
    pub fn parse(name: &str) -> Self {
        use OperationType::*;
        match name {
            "insert" => Insert,
            "update" => Update,
            "replace" => Replace,
            "delete" => Delete,
            "drop" => Drop,
            "rename" => Rename,
            "dropDatabase" => DropDatabase,
            "invalidate" => Invalidate,
            "create" => Create,
            "createIndexes" => CreateIndexes,
            "dropIndexes" => DropIndexes,
            "modify" => Modify,
            "shardCollection" => ShardCollection,
            "reshardCollection" => ReshardCollection,
            "refineCollectionShardKey" => RefineCollectionShardKey,
            "changeflowSnapshotReset" => SnapshotReset,
            other => Unknown(other.into()),
        }
    }
    /// The name MongoDB uses.
    pub fn as_str(&self) -> &str {
        use OperationType::*;
        match self {
            Insert => "insert",
            Update => "update",
            Replace => "replace",
            Delete => "delete",
            Drop => "drop",
            Rename => "rename",
            DropDatabase => "dropDatabase",
            Invalidate => "invalidate",
            Create => "create",
            CreateIndexes => "createIndexes",
            DropIndexes => "dropIndexes",
            Modify => "modify",
            ShardCollection => "shardCollection",
            ReshardCollection => "reshardCollection",
            RefineCollectionShardKey => "refineCollectionShardKey",
            SnapshotReset => "changeflowSnapshotReset",
            Unknown(name) => name,
        }
    }
    /// Whether this is a type changeflow does not know.
    pub fn is_unknown(&self) -> bool {
        matches!(self, OperationType::Unknown(_))
    }
    /// Whether this event changes one document (insert, update, replace, delete).
    pub fn is_document_change(&self) -> bool {
        use OperationType::*;
        matches!(self, Insert | Update | Replace | Delete)
    }
}

impl fmt::Display for OperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespace `db.coll` (`coll` is absent for database-level events such as `dropDatabase`).
///
/// ```
/// use changeflow_core::Namespace;
/// let ns = Namespace::new("shop", Some("orders"));
/// assert_eq!(ns.to_string(), "shop.orders");
/// assert_eq!(Namespace::new("shop", None).to_string(), "shop");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Namespace {
    /// The database.
    pub db: Arc<str>,
    /// The collection, if the event concerns one.
    pub coll: Option<Arc<str>>,
}

impl Namespace {
    /// The namespace `db.coll`.
    pub fn new(db: &str, coll: Option<&str>) -> Self {
        Namespace {
            db: db.into(),
            coll: coll.map(Into::into),
        }
    }

    /// [`Namespace::new`], sharing the names of the namespace this thread decoded last when it
    /// is the same one: a stream is mostly one namespace, so most events then allocate no names.
    fn shared(db: &str, coll: Option<&str>) -> Self {
        thread_local! {
            static LAST: std::cell::RefCell<Option<Namespace>> = const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(ns) = &*last
                && *ns.db == *db
                && ns.coll.as_deref() == coll
            {
                return ns.clone();
            }
            let ns = Namespace::new(db, coll);
            *last = Some(ns.clone());
            ns
        })
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.coll {
            Some(coll) => write!(f, "{}.{}", self.db, coll),
            None => f.write_str(&self.db),
        }
    }
}

/// The identity of a multi-document transaction: the session `lsid` and its `txnNumber`.
///
/// ```
/// use changeflow_core::{Document, TxnId};
/// let lsid = Document::from_bytes(bson::rawdoc! { "id": 1 }.into_bytes()).unwrap();
/// let a = TxnId { lsid: lsid.clone(), txn_number: 4 };
/// assert_eq!(a, TxnId { lsid, txn_number: 4 });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    /// The logical session id document (`{id: UUID, uid: BinData}`).
    pub lsid: Document,
    /// The transaction number within the session.
    pub txn_number: i64,
}

/// An event's resume token where it sits, in the event's bytes: what a source keeps to know
/// where a restart must begin, without keeping the event or copying the token until asked.
///
/// ```
/// use changeflow_core::ChangeEvent;
/// let line = br#"{"_id": {"_data": "82000000010000000104"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "s", "coll": "o"}}"#;
/// let event = ChangeEvent::from_json(line).unwrap();
/// let at = event.token_ref();
/// assert_eq!(at.token(), event.token());
/// assert_eq!(at.token().data(), Some("82000000010000000104"));
/// ```
#[derive(Clone, Debug)]
pub struct TokenRef {
    raw: Document,
    id: Span,
}

impl TokenRef {
    /// The resume token, copied out.
    pub fn token(&self) -> ResumeToken {
        let span = self.id.start as usize..self.id.end as usize;
        let bytes = match self.raw.as_bytes().get(span) {
            Some(bytes) if self.id.is_set() => bytes,
            _ => &[],
        };
        if self.id.kind == kind::DOCUMENT {
            ResumeToken::from_document(Document::from_trusted(bytes))
        } else {
            let mut w = raw::DocWriter::new();
            w.append(self.id.kind, "_data", bytes);
            ResumeToken::from_document(Document::from_trusted(w.finish()))
        }
    }
    /// Compares two tokens in stream order (see [`ResumeToken`]'s ordering).
    pub fn cmp_token(&self, other: &TokenRef) -> std::cmp::Ordering {
        match (
            token_data_in(self.raw.as_bytes(), self.id),
            token_data_in(other.raw.as_bytes(), other.id),
        ) {
            (Some(a), Some(b)) => resume_token::cmp_data(a, b),
            _ => self.token().cmp(&other.token()),
        }
    }
}

/// The `_data` string of the token at `id` in an event's bytes, if it has one.
fn token_data_in(raw: &[u8], id: Span) -> Option<&str> {
    (id.kind == kind::DOCUMENT && id.is_set())
        .then(|| raw.get(id.start as usize..id.end as usize))
        .flatten()
        .and_then(resume_token::data_of)
}

/// Byte range of a located field inside the event's bytes.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
struct Span {
    start: u32,
    end: u32,
    kind: u8,
}

impl Span {
    fn of(event: &[u8], e: &Element<'_>) -> Span {
        let start = e.value.as_ptr() as usize - event.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + e.value.len()) as u32,
            kind: e.kind,
        }
    }
    fn is_set(&self) -> bool {
        self.kind != 0
    }
}

/// Where the lazily-read fields sit inside the event's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Fields {
    id: Span,
    document_key: Span,
    /// `documentKey._id` (read once here: routing and document state both need it).
    document_id: Span,
    full_document: Span,
    before: Span,
    update_description: Span,
    to: Span,
    wall_time: Span,
    collection_uuid: Span,
    split_event: Span,
    operation_description: Span,
}

/// One change event: its raw BSON plus its decoded header.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangeEvent {
    cluster_time: ClusterTime,
    operation: OperationType,
    namespace: Option<Namespace>,
    txn: Option<TxnId>,
    fields: Fields,
    raw: Document,
}

fn type_name(kind: u8) -> &'static str {
    match kind {
        kind::DOUBLE => "double",
        kind::STRING => "string",
        kind::DOCUMENT => "document",
        kind::ARRAY => "array",
        kind::BINARY => "binary",
        kind::OBJECT_ID => "objectId",
        kind::BOOLEAN => "bool",
        kind::DATETIME => "date",
        kind::NULL => "null",
        kind::INT32 => "int",
        kind::TIMESTAMP => "timestamp",
        kind::INT64 => "long",
        kind::DECIMAL128 => "decimal",
        _ => "other",
    }
}

impl ChangeEvent {
    /// Decodes an event from its BSON bytes (as the driver or a BSON file delivers it).
    ///
    /// The bytes are validated recursively; use [`ChangeEvent::from_document`] for a
    /// [`Document`] that is already known to be well-formed.
    pub fn from_bson(bytes: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let doc = Document::from_bytes(bytes).map_err(|source| Error::Bson {
            at: "event".into(),
            source,
        })?;
        Self::from_document(doc)
    }

    /// Decodes an event from one line of MongoDB Extended JSON (relaxed or canonical).
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        let mut buf = Vec::with_capacity(json.len());
        crate::extjson::transcode(json, &mut buf).map_err(|source| Error::ExtendedJson {
            at: "event".into(),
            source,
        })?;
        Self::from_document(Document::from_trusted(buf))
    }

    /// Decodes the header of an event held as a [`Document`], in one pass over its elements.
    pub fn from_document(raw: Document) -> Result<Self, Error> {
        let bytes = raw.as_bytes();
        let mut fields = Fields::default();
        let mut operation = None;
        let mut cluster_time = None;
        let mut namespace = None;
        let mut lsid = None;
        let mut txn_number = None;
        let mut problem: Option<String> = None;
        for element in raw::elements(bytes) {
            let e = element.map_err(|source| Error::Bson {
                at: at_of(bytes),
                source,
            })?;
            let expect = |ok: bool, what: &str, problem: &mut Option<String>| {
                if !ok && problem.is_none() {
                    *problem = Some(format!(
                        "field `{}` must be {what}, found {}",
                        String::from_utf8_lossy(e.key),
                        type_name(e.kind)
                    ));
                }
                ok
            };
            let is_doc = e.kind == kind::DOCUMENT;
            let span = Span::of(bytes, &e);
            match e.key {
                b"_id" => fields.id = span,
                b"operationType" if expect(e.kind == kind::STRING, "a string", &mut problem) => {
                    operation = e.as_str().map(OperationType::parse);
                }
                b"clusterTime"
                    if expect(e.kind == kind::TIMESTAMP, "a timestamp", &mut problem) =>
                {
                    cluster_time = e.as_timestamp().map(|(t, i)| ClusterTime::new(t, i));
                }
                b"ns" if expect(is_doc, "a document", &mut problem) => {
                    namespace = Some(parse_namespace(e.value).ok_or_else(|| {
                        Error::Event {
                            at: at_of(bytes),
                            reason:
                                "field `ns` must hold a string `db` and optionally a string `coll`"
                                    .into(),
                        }
                    })?);
                }
                b"documentKey" if expect(is_doc, "a document", &mut problem) => {
                    fields.document_key = span;
                    fields.document_id = match raw::get(e.value, "_id") {
                        Ok(Some(id)) => Span::of(bytes, &id),
                        _ => Span::default(),
                    };
                }
                b"fullDocument"
                    if e.kind != kind::NULL
                        && expect(is_doc, "a document or null", &mut problem) =>
                {
                    fields.full_document = span
                }
                b"fullDocumentBeforeChange"
                    if e.kind != kind::NULL
                        && expect(is_doc, "a document or null", &mut problem) =>
                {
                    fields.before = span
                }
                b"updateDescription" if expect(is_doc, "a document", &mut problem) => {
                    fields.update_description = span
                }
                b"to" if expect(is_doc, "a document", &mut problem) => fields.to = span,
                b"wallTime" => fields.wall_time = span,
                b"collectionUUID" => fields.collection_uuid = span,
                b"splitEvent" if expect(is_doc, "a document", &mut problem) => {
                    fields.split_event = span
                }
                b"operationDescription" => fields.operation_description = span,
                b"lsid" if expect(is_doc, "a document", &mut problem) => lsid = Some(e.value),
                b"txnNumber"
                    if expect(
                        e.kind == kind::INT64 || e.kind == kind::INT32,
                        "a long",
                        &mut problem,
                    ) =>
                {
                    txn_number = e.as_i64();
                }
                _ => {}
            }
        }
        let missing = |name: &str| Error::Event {
            at: at_of(bytes),
            reason: format!("missing field `{name}`"),
        };
        if let Some(reason) = problem {
            return Err(Error::Event {
                at: at_of(bytes),
                reason,
            });
        }
        if !fields.id.is_set() {
            return Err(missing("_id"));
        }
        let operation = operation.ok_or_else(|| missing("operationType"))?;
        let cluster_time = cluster_time.ok_or_else(|| missing("clusterTime"))?;
        let txn = match (lsid, txn_number) {
            (Some(lsid), Some(txn_number)) => Some(TxnId {
                lsid: Document::from_trusted(lsid),
                txn_number,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::Event {
                    at: at_of(bytes),
                    reason: "`lsid` and `txnNumber` must appear together".into(),
                });
            }
        };
        if operation.is_document_change() && !fields.document_key.is_set() {
            return Err(missing("documentKey"));
        }
        if operation == OperationType::Update
            && !fields.update_description.is_set()
            && !fields.full_document.is_set()
        {
            return Err(missing("updateDescription"));
        }
        if matches!(operation, OperationType::Insert | OperationType::Replace)
            && !fields.full_document.is_set()
        {
            return Err(missing("fullDocument"));
        }
        Ok(ChangeEvent {
            cluster_time,
            operation,
            namespace,
            txn,
            fields,
            raw,
        })
    }

    fn span(&self, span: Span) -> Option<&[u8]> {
        span.is_set()
            .then(|| &self.raw.as_bytes()[span.start as usize..span.end as usize])
    }

    fn span_document(&self, span: Span) -> Option<Result<Document, Error>> {
        // The event is a well-formed document (a `Document`'s invariant), so its sub-documents
        // are too: no second validation pass on the hot path.
        self.span(span)
            .map(|bytes| Ok(Document::from_trusted(bytes)))
    }

    /// The event's `clusterTime`: its dataflow time before transaction grouping.
    pub fn cluster_time(&self) -> ClusterTime {
        self.cluster_time
    }
    /// The `operationType`.
    pub fn operation(&self) -> &OperationType {
        &self.operation
    }
    /// The `ns` field.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.namespace.as_ref()
    }
    /// The transaction this event belongs to, from `lsid` + `txnNumber`.
    pub fn txn(&self) -> Option<&TxnId> {
        self.txn.as_ref()
    }
    /// The whole event as BSON.
    pub fn raw(&self) -> &Document {
        &self.raw
    }
    /// The resume token (`_id`), copied out of the event.
    pub fn token(&self) -> ResumeToken {
        self.token_ref().token()
    }
    /// The token's `_data` string, without copying, if it has one.
    pub fn token_data(&self) -> Option<&str> {
        token_data_in(self.raw.as_bytes(), self.fields.id)
    }
    /// Compares two events' tokens in stream order (see [`ResumeToken`]'s ordering).
    pub fn cmp_token(&self, other: &ChangeEvent) -> std::cmp::Ordering {
        match (self.token_data(), other.token_data()) {
            (Some(a), Some(b)) => resume_token::cmp_data(a, b),
            _ => self.token().cmp(&other.token()),
        }
    }
    /// The event's resume token, in place: cheaper to keep than the event or a copied token.
    pub fn token_ref(&self) -> TokenRef {
        TokenRef {
            raw: self.raw.clone(),
            id: self.fields.id,
        }
    }
    /// The `documentKey` (`_id` plus shard-key fields), raw.
    pub fn document_key_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.document_key)
    }
    /// The `documentKey._id` value as a one-field element (type byte and encoded value).
    pub fn document_id(&self) -> Option<(u8, &[u8])> {
        let span = self.fields.document_id;
        self.span(span).map(|value| (span.kind, value))
    }
    /// `fullDocument`, if present and not null.
    pub fn full_document(&self) -> Option<Result<Document, Error>> {
        self.span_document(self.fields.full_document)
    }
    /// `fullDocument` as raw bytes, without validation or copying.
    pub fn full_document_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.full_document)
    }
    /// `fullDocumentBeforeChange` (the pre-image), if present and not null.
    pub fn full_document_before_change(&self) -> Option<Result<Document, Error>> {
        self.span_document(self.fields.before)
    }
    /// `fullDocumentBeforeChange` as raw bytes.
    pub fn full_document_before_change_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.before)
    }
    /// `updateDescription` as raw bytes (`updatedFields`, `removedFields`, `truncatedArrays`,
    /// `disambiguatedPaths`).
    pub fn update_description_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.update_description)
    }
    /// The target namespace of a `rename`.
    pub fn to(&self) -> Option<Namespace> {
        self.span(self.fields.to).and_then(parse_namespace)
    }
    /// `wallTime` in milliseconds since the epoch, if present.
    pub fn wall_time_millis(&self) -> Option<i64> {
        let span = self.fields.wall_time;
        (span.kind == kind::DATETIME)
            .then(|| {
                self.span(span)
                    .and_then(|b| Some(i64::from_le_bytes(b.try_into().ok()?)))
            })
            .flatten()
    }
    /// `collectionUUID` as raw binary value bytes, if present.
    pub fn collection_uuid_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.collection_uuid)
    }
    /// `splitEvent` as `(fragment, of)`, if this is a fragment of a split large event.
    pub fn split_event(&self) -> Option<(i64, i64)> {
        let bytes = self.span(self.fields.split_event)?;
        let fragment = raw::get(bytes, "fragment").ok()??.as_i64()?;
        let of = raw::get(bytes, "of").ok()??.as_i64()?;
        Some((fragment, of))
    }
    /// `operationDescription` (expanded DDL events) as raw bytes.
    pub fn operation_description_bytes(&self) -> Option<&[u8]> {
        self.span(self.fields.operation_description)
    }
    /// A short description naming this event for error messages: its token, or its time.
    pub fn describe(&self) -> String {
        match self.token_data() {
            Some(data) => format!("token {data}"),
            None => format!("event at {}", self.cluster_time),
        }
    }
}

impl fmt::Debug for ChangeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeEvent")
            .field("operation", &self.operation)
            .field("cluster_time", &self.cluster_time)
            .field(
                "namespace",
                &self.namespace.as_ref().map(|ns| ns.to_string()),
            )
            .field("token", &self.token_data())
            .finish()
    }
}

/// Names an event for an error before it is decoded: its `_data`, or "event".
fn at_of(bytes: &[u8]) -> String {
    match raw::get(bytes, "_id").ok().flatten() {
        Some(id) => match id.as_document().and_then(resume_token::data_of) {
            Some(data) => format!("token {data}"),
            None => "event with an opaque token".into(),
        },
        None => "event without `_id`".into(),
    }
}

fn parse_namespace(bytes: &[u8]) -> Option<Namespace> {
    let mut db = None;
    let mut coll = None;
    for e in raw::elements(bytes) {
        let e = e.ok()?;
        match e.key {
            b"db" => db = Some(e.as_str()?),
            b"coll" => coll = Some(e.as_str()?),
            _ => {}
        }
    }
    Some(Namespace::shared(db?, coll))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Result<ChangeEvent, Error> {
        ChangeEvent::from_json(json.as_bytes())
    }

    const UPDATE: &str = r#"{"_id": {"_data": "8263500000000000022B"}, "operationType": "update",
        "clusterTime": {"$timestamp": {"t": 1666187264, "i": 2}}, "wallTime": {"$date": "2022-10-19T13:47:44.000Z"},
        "ns": {"db": "engineering", "coll": "users"}, "documentKey": {"_id": {"$oid": "599af247bb69cd89961c986d"}},
        "updateDescription": {"updatedFields": {"email": "a@b.c", "a.b.2": 5}, "removedFields": ["phone"],
            "truncatedArrays": [{"field": "vac", "newSize": 3}], "disambiguatedPaths": {}},
        "txnNumber": {"$numberLong": "7"}, "lsid": {"id": {"$binary": {"base64": "AAAAAAAAAAAAAAAAAAAAAA==", "subType": "04"}}},
        "splitEvent": {"fragment": 1, "of": 2}, "collectionUUID": {"$binary": {"base64": "AAAAAAAAAAAAAAAAAAAAAA==", "subType": "04"}}}"#;

    #[test]
    fn decodes_every_header_field() {
        let e = event(UPDATE).unwrap();
        assert_eq!(e.operation(), &OperationType::Update);
        assert_eq!(e.cluster_time(), ClusterTime::new(1_666_187_264, 2));
        assert_eq!(e.token_data(), Some("8263500000000000022B"));
        assert_eq!(e.token().data(), Some("8263500000000000022B"));
        assert_eq!(e.txn().unwrap().txn_number, 7);
        assert_eq!(e.split_event(), Some((1, 2)));
        assert_eq!(e.wall_time_millis(), Some(1_666_187_264_000));
        assert!(e.collection_uuid_bytes().is_some());
        assert_eq!(e.document_id().unwrap().0, kind::OBJECT_ID);
        assert_eq!(
            e.document_id().unwrap().1,
            [
                0x59, 0x9a, 0xf2, 0x47, 0xbb, 0x69, 0xcd, 0x89, 0x96, 0x1c, 0x98, 0x6d
            ]
        );
        // A sharded collection's documentKey holds the shard key before `_id`.
        let sharded = event(&UPDATE.replace(
            r#""documentKey": {"_id""#,
            r#""documentKey": {"region": "eu", "_id""#,
        ))
        .unwrap();
        assert_eq!(sharded.document_id(), e.document_id());
        let ud = e.update_description_bytes().unwrap();
        assert!(raw::get(ud, "truncatedArrays").unwrap().is_some());
        assert!(e.full_document().is_none());
    }

    #[test]
    fn keeps_unknown_operation_types() {
        let e = event(r#"{"_id": {"_data": "82"}, "operationType": "futureOp", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}}"#).unwrap();
        assert_eq!(e.operation().as_str(), "futureOp");
        assert!(e.operation().is_unknown());
    }

    #[test]
    fn rename_has_a_target() {
        let e = event(r#"{"_id": {"_data": "82"}, "operationType": "rename", "clusterTime": {"$timestamp": {"t": 1, "i": 1}},
            "ns": {"db": "a", "coll": "b"}, "to": {"db": "a", "coll": "c"}}"#).unwrap();
        assert_eq!(e.to().unwrap().to_string(), "a.c");
    }

    #[test]
    fn errors_name_the_token_and_the_field() {
        let no_time = event(r#"{"_id": {"_data": "82AB"}, "operationType": "insert", "documentKey": {"_id": 1}, "fullDocument": {"_id": 1}}"#).unwrap_err();
        assert_eq!(
            no_time.to_string(),
            "token 82AB: missing field `clusterTime`"
        );
        let bad_type = event(r#"{"_id": {"_data": "82AB"}, "operationType": 3, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}}"#).unwrap_err();
        assert!(
            bad_type
                .to_string()
                .contains("`operationType` must be a string, found int"),
            "{bad_type}"
        );
        let no_id = event(r#"{"operationType": "insert"}"#).unwrap_err();
        assert!(
            no_id.to_string().starts_with("event without `_id`"),
            "{no_id}"
        );
        let no_full = event(r#"{"_id": {"_data": "82AB"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "documentKey": {"_id": 1}}"#).unwrap_err();
        assert!(no_full.to_string().contains("missing field `fullDocument`"));
        let half_txn = event(r#"{"_id": {"_data": "82AB"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "txnNumber": 1}"#).unwrap_err();
        assert!(half_txn.to_string().contains("`lsid` and `txnNumber`"));
    }

    #[test]
    fn bson_and_json_decode_the_same_event() {
        let from_json = event(UPDATE).unwrap();
        let from_bson = ChangeEvent::from_bson(from_json.raw().as_bytes().to_vec()).unwrap();
        assert_eq!(from_json, from_bson);
        assert!(ChangeEvent::from_bson(vec![9, 0, 0, 0, 0x10, b'a', 0, 0, 0]).is_err());
    }
}
