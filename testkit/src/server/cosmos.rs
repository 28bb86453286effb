//! Cosmos DB mode: the server answers like Azure Cosmos DB's API for MongoDB (RU).
//!
//! * `$changeStream` must be followed by `{$match: {operationType: {$in: [...]}}}` and a
//!   `$project`, with `fullDocument: "updateLookup"`; otherwise `BadValue` (2).
//! * Only inserts, updates and replaces are reported, as `{_id, fullDocument, ns, documentKey}`:
//!   no `operationType`, no `updateDescription`, no `clusterTime`; `fullDocument` is the current
//!   version (a document deleted since is not reported). Deletes are invisible.
//! * Tokens are opaque: `{_data: BinData(0, <JSON>)}`; the JSON carries the position and the
//!   partition.
//! * `{customAction: "GetChangeStreamTokens", collection}` (or `GetChangeStreamTokens: coll`)
//!   returns one token per physical partition ([`CosmosOptions::partitions`]); a stream resumed
//!   from one reports only the documents whose `_id` hashes to that partition.
//! * A collection stream on a collection with no events is 26 `NamespaceNotFound`. Throttling
//!   (16500) is a [`super::FailPoint`].

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};

use super::pipeline::{self, Stage};
use super::{Entry, Shared, error, events};
use crate::reference::{ReferenceModel, id_key};

/// Cosmos DB mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosmosOptions {
    /// Physical partitions (tokens returned by `GetChangeStreamTokens`); default 1.
    pub partitions: u32,
}

impl Default for CosmosOptions {
    fn default() -> Self {
        CosmosOptions { partitions: 1 }
    }
}

/// Which events a Cosmos cursor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `None`: all partitions.
    pub index: Option<u32>,
    /// Number of partitions.
    pub of: u32,
}

/// The partition of a document `_id` among `of`.
pub fn partition_of_id(id: &Bson, of: u32) -> u32 {
    let key = id_key(id);
    let mut h: u32 = 0x811C_9DC5;
    for b in key.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % of.max(1)
}

/// An opaque token: BinData(0) holding JSON with the position and the partition.
pub fn opaque(position: &str, partition: Option<&Partition>) -> Binary {
    let (index, of) = partition.map_or((-1, 1), |p| {
        (p.index.map_or(-1, i64::from), i64::from(p.of))
    });
    let json = format!(r#"{{"V":2,"Position":"{position}","Partition":{index},"Of":{of}}}"#);
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: json.into_bytes(),
    }
}

fn parse(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

/// The position inside an opaque token.
pub fn position_of(bytes: &[u8]) -> Option<String> {
    let v = parse(bytes)?;
    let position = v.get("Position")?.as_str()?;
    events::time_of_token(position).map(|_| position.to_string())
}

/// The partition an opaque token follows (`None` if it follows all of them or is malformed).
pub fn partition_of_token(bytes: &[u8]) -> Option<Partition> {
    let v = parse(bytes)?;
    let index = v.get("Partition")?.as_i64()?;
    let of = u32::try_from(v.get("Of")?.as_u64()?).ok()?;
    Some(Partition {
        index: u32::try_from(index).ok(),
        of,
    })
}

/// The partition of a stream opened without a partition token: all of them.
pub(super) fn partition_of_start(
    options: &CosmosOptions,
    _start: Option<&str>,
    _command: &Document,
) -> Partition {
    Partition {
        index: None,
        of: options.partitions,
    }
}

/// Checks the pipeline shape Cosmos DB requires.
pub(super) fn check_pipeline(stages: &[Stage], lookup: bool) -> Result<(), Document> {
    let matches_types = matches!(stages.first(), Some(Stage::Match(m))
        if m.get_document("operationType").ok().and_then(|o| o.get_array("$in").ok()).is_some());
    let projects = stages.iter().any(|s| matches!(s, Stage::Project(..)));
    if !(matches_types && projects && lookup) {
        return Err(error(
            2,
            "BadValue",
            "Change stream must be followed by a match and then a project stage, with fullDocument: updateLookup",
        ));
    }
    Ok(())
}

/// The Cosmos form of a log entry for a cursor on `partition` with `stages`, if reported.
pub(super) fn shape(
    entry: &Entry,
    model: &ReferenceModel,
    partition: &Partition,
    stages: &[Stage],
) -> Option<Document> {
    let event = &entry.event;
    if !matches!(
        event.get_str("operationType").ok()?,
        "insert" | "update" | "replace"
    ) {
        return None;
    }
    let id = event.get_document("documentKey").ok()?.get("_id")?;
    if let Some(index) = partition.index
        && partition_of_id(id, partition.of) != index
    {
        return None;
    }
    let coll = entry.coll.as_ref()?;
    let current = model
        .documents()
        .get(&(format!("{}.{coll}", entry.db), id_key(id)))?;
    let mut full = event.clone();
    full.insert("fullDocument", current.clone());
    let mut out = pipeline::apply(stages, full)?;
    out.insert(
        "_id",
        doc! { "_data": opaque(&entry.token, Some(partition)) },
    );
    for key in [
        "operationType",
        "updateDescription",
        "clusterTime",
        "wallTime",
    ] {
        out.remove(key);
    }
    Some(out)
}

/// `GetChangeStreamTokens`: one token per partition, at the current position.
pub(super) fn tokens(shared: &Shared, command: &Document) -> Document {
    let Some(options) = &shared.options.cosmos else {
        return error(
            59,
            "CommandNotFound",
            "GetChangeStreamTokens is a Cosmos DB command",
        );
    };
    let _collection = command
        .get_str("collection")
        .or_else(|_| command.get_str("GetChangeStreamTokens"));
    let state = shared.lock();
    let hwm = events::high_water_mark(state.clock);
    let position = match state.log.last() {
        Some(e) if e.token > hwm => e.token.clone(),
        _ => hwm,
    };
    let tokens: Vec<Bson> = (0..options.partitions)
        .map(|p| {
            Bson::Document(doc! { "_data": opaque(&position, Some(&Partition { index: Some(p), of: options.partitions })) })
        })
        .collect();
    doc! { "resumeAfterTokens": tokens, "ok": 1.0 }
}
