//! Events changeflow makes itself: documents read by a snapshot scan or restored from a
//! checkpoint, emitted as `insert` events at one chosen time.
//!
//! A synthetic event is an ordinary `insert` (so every operator handles it) with two marks:
//!
//! * its token's `_data` is `82` + the time + `00` + a phase byte + a 16-digit sequence number.
//!   The `00` after the time sorts it **before every real event at the same time** (MongoDB's
//!   KeyStrings continue with a type byte of at least `0x2B`), so at one time synthetic events
//!   are applied first, in phase then sequence order;
//! * a top-level field `"changeflow": "<origin>"` says where it came from (`"snapshot"`,
//!   `"restore"`), for anyone reading a changelog.
//!
//! Synthetic tokens are never handed back to a server: a source resumes from real tokens only.
//!
//! ```
//! use changeflow_core::{synthetic, ClusterTime, Document, Namespace, OperationType};
//! let doc = Document::from_bytes(bson::rawdoc! { "_id": 7, "n": 1 }.into_bytes()).unwrap();
//! let ns = Namespace::new("shop", Some("orders"));
//! let event = synthetic::insert(&ns, &doc, ClusterTime::new(5, 0), synthetic::Origin::Snapshot, 3)?;
//! assert_eq!(event.operation(), &OperationType::Insert);
//! assert_eq!(event.cluster_time(), ClusterTime::new(5, 0));
//! assert_eq!(event.full_document().unwrap()?, doc);
//! assert_eq!(synthetic::origin(&event), Some("snapshot"));
//! # Ok::<(), changeflow_core::Error>(())
//! ```

use crate::raw::{self, DocWriter, kind};
use crate::{ChangeEvent, ClusterTime, Document, Error, Namespace};

/// Where a synthetic event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A document read by a snapshot scan (initial snapshot or re-snapshot).
    Snapshot,
    /// A document restored from a checkpoint's persisted state.
    Restore,
}

impl Origin {
    /// The value of the event's `changeflow` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Snapshot => "snapshot",
            Origin::Restore => "restore",
        }
    }
}

/// The `_data` of a synthetic token: sorts before every real token at `time`; `phase` then
/// `seq` order synthetic events among themselves.
pub fn token_data(time: ClusterTime, phase: u8, seq: u64) -> String {
    format!(
        "82{:08X}{:08X}00{phase:02X}{seq:016X}",
        time.seconds(),
        time.increment()
    )
}

/// An `insert` of `document` (which must have an `_id`) into `ns` at `time`; `seq` orders
/// synthetic events of one time (phase 1; phase 0 is left for events that must come first).
pub fn insert(
    ns: &Namespace,
    document: &Document,
    time: ClusterTime,
    origin: Origin,
    seq: u64,
) -> Result<ChangeEvent, Error> {
    let id = raw::get(document.as_bytes(), "_id")
        .map_err(|source| Error::Bson {
            at: format!("{} document", origin.as_str()),
            source,
        })?
        .ok_or_else(|| Error::Event {
            at: format!("{} document in {ns}", origin.as_str()),
            reason: "the document has no _id".into(),
        })?;
    let mut token = DocWriter::new();
    token.append_str("_data", &token_data(time, 1, seq));
    let mut key = DocWriter::new();
    key.append(id.kind, "_id", id.value);
    let mut namespace = DocWriter::new();
    namespace.append_str("db", &ns.db);
    if let Some(coll) = &ns.coll {
        namespace.append_str("coll", coll);
    }
    let mut ts = Vec::with_capacity(8);
    ts.extend_from_slice(&time.increment().to_le_bytes());
    ts.extend_from_slice(&time.seconds().to_le_bytes());
    let mut event = DocWriter::with_capacity(document.as_bytes().len() + 160);
    event.append(kind::DOCUMENT, "_id", &token.finish());
    event.append_str("operationType", "insert");
    event.append(kind::TIMESTAMP, "clusterTime", &ts);
    event.append(kind::DOCUMENT, "ns", &namespace.finish());
    event.append(kind::DOCUMENT, "documentKey", &key.finish());
    event.append(kind::DOCUMENT, "fullDocument", document.as_bytes());
    event.append_str("changeflow", origin.as_str());
    ChangeEvent::from_document(Document::from_trusted(event.finish()))
}

/// The origin mark of a synthetic event (`"snapshot"`, `"restore"`), `None` for a real one.
pub fn origin(event: &ChangeEvent) -> Option<&str> {
    raw::get(event.raw().as_bytes(), "changeflow")
        .ok()
        .flatten()
        .and_then(|e| e.as_str())
}
