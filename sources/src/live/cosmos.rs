//! Azure Cosmos DB for MongoDB (RU) change streams, made to look like MongoDB's.
//!
//! ```text
//!   user pipeline ──▶ [$match operationType ∈ {insert, update, replace}] + user stages
//!                     + [$project _id, fullDocument, ns, documentKey], fullDocument: updateLookup
//!   Cosmos event {_id, fullDocument, ns, documentKey}
//!        ──▶ soft-delete predicate matches fullDocument?  yes: operationType "delete"
//!                                                         no:  operationType "replace" (an upsert)
//!        ──▶ clusterTime from the source's clock (Cosmos events carry none)
//! ```
//!
//! Cosmos events have no `operationType`, `updateDescription` or `clusterTime`, and their tokens
//! are opaque, so the frontier comes from the source's own clock: a strictly increasing
//! `(wall-clock seconds, counter)`, shared by the per-partition readers (so their merged events
//! are in time order, and the source's frontier is the minimum over the partitions). A `replace`
//! sets the document whether or not it was known, so document state upserts; deletes are only
//! visible through the soft-delete convention.

use bson::{Bson, Document, doc};
use changeflow_core::ClusterTime;
use changeflow_core::raw::DocWriter;

/// Cosmos DB mode settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CosmosOptions {
    /// A document whose `field` equals `value` is deleted (soft delete), e.g. `("deleted", true)`.
    pub soft_delete: Option<(String, Bson)>,
    /// Follow each physical partition with its own stream: the tokens of the
    /// `GetChangeStreamTokens` custom action, one reader each (collection targets only). The
    /// source's frontier is the minimum over the partitions.
    pub per_partition: bool,
}

/// The pipeline Cosmos DB requires, around the user's stages.
///
/// ```
/// use changeflow_sources::live::cosmos::shape_pipeline;
/// let p = shape_pipeline(&[]);
/// assert!(p[0].contains_key("$match") && p[1].contains_key("$project"));
/// ```
pub fn shape_pipeline(user: &[Document]) -> Vec<Document> {
    let mut out =
        vec![doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace"] } } }];
    out.extend(user.iter().cloned());
    out.push(doc! { "$project": { "_id": 1, "fullDocument": 1, "ns": 1, "documentKey": 1 } });
    out
}

/// A strictly increasing clock for events that carry no cluster time.
#[derive(Debug, Default, Clone)]
pub struct SourceClock {
    last: (u32, u32),
}

impl SourceClock {
    /// The next time: now in seconds, with a counter for events within one second.
    pub fn tick(&mut self) -> ClusterTime {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        self.last = if now > self.last.0 {
            (now, 1)
        } else {
            (self.last.0, self.last.1 + 1)
        };
        ClusterTime::new(self.last.0, self.last.1)
    }
}

/// Turns a Cosmos event (raw BSON) into a MongoDB-shaped one: `operationType` `replace` (an
/// upsert of `fullDocument`) or `delete` (soft delete), and `clusterTime` = `time`. Events that
/// already have an `operationType` only get the missing `clusterTime`.
pub fn to_mongodb_event(
    raw: &[u8],
    time: ClusterTime,
    options: &CosmosOptions,
) -> Result<Vec<u8>, String> {
    let event = changeflow_core::Document::from_bytes(raw.to_vec()).map_err(|e| e.to_string())?;
    let has_operation = event.get("operationType").ok().flatten().is_some();
    let full = event
        .get("fullDocument")
        .ok()
        .flatten()
        .and_then(|e| e.as_document());
    let deleted = match (&options.soft_delete, full) {
        (Some((field, value)), Some(full)) => {
            let full = bson::RawDocument::from_bytes(full).map_err(|e| e.to_string())?;
            full.get(field)
                .ok()
                .flatten()
                .and_then(|v| Bson::try_from(v).ok())
                .is_some_and(|v| v == *value)
        }
        _ => false,
    };
    let mut w = DocWriter::with_capacity(raw.len() + 64);
    for element in event.elements() {
        let e = element.map_err(|e| e.to_string())?;
        let Some(key) = e.key_str() else { continue };
        if deleted && key == "fullDocument" {
            continue;
        }
        w.append(e.kind, key, e.value);
        if key == "_id" && !has_operation {
            w.append_str("operationType", if deleted { "delete" } else { "replace" });
        }
    }
    if event.get("clusterTime").ok().flatten().is_none() {
        let (t, i) = (time.seconds(), time.increment());
        let mut ts = Vec::with_capacity(8);
        ts.extend_from_slice(&i.to_le_bytes());
        ts.extend_from_slice(&t.to_le_bytes());
        w.append(changeflow_core::raw::kind::TIMESTAMP, "clusterTime", &ts);
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use changeflow_core::{ChangeEvent, OperationType};

    #[test]
    fn cosmos_events_become_upserts_or_soft_deletes() {
        let options = CosmosOptions {
            soft_delete: Some(("deleted".into(), Bson::Boolean(true))),
            per_partition: false,
        };
        let live = bson::rawdoc! { "_id": { "_data": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: b"{}".to_vec() } },
        "fullDocument": { "_id": 1, "x": 1 }, "ns": { "db": "a", "coll": "b" }, "documentKey": { "_id": 1 } };
        let t = ClusterTime::new(9, 3);
        let event = ChangeEvent::from_bson(to_mongodb_event(live.as_bytes(), t, &options).unwrap())
            .unwrap();
        assert_eq!(event.operation(), &OperationType::Replace);
        assert_eq!(event.cluster_time(), t);
        let gone = bson::rawdoc! { "_id": { "_data": "x" }, "fullDocument": { "_id": 1, "deleted": true },
        "ns": { "db": "a", "coll": "b" }, "documentKey": { "_id": 1 } };
        let event = ChangeEvent::from_bson(to_mongodb_event(gone.as_bytes(), t, &options).unwrap())
            .unwrap();
        assert_eq!(event.operation(), &OperationType::Delete);
        assert!(event.full_document().is_none());
        let mut clock = SourceClock::default();
        assert!(clock.tick() < clock.tick());
    }
}
