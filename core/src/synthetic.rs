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
//! A checkpoint whose token is synthetic ([`is_synthetic`]) stands for "everything up to and
//! including the synthetic events at [`ResumeToken::cluster_time`]": a restart from it opens the
//! stream at that time (`startAtOperationTime`) and drops what was released before the
//! checkpoint's frontier.
//!
//! A re-snapshot at time `T1` emits, at `T1`, a [`reset`] of the namespace (phase 0: before
//! everything else at `T1`), which document state reads as "retract every document of the
//! namespace", then the snapshot's inserts (phase 1). Document state emits the net change per
//! document at a time, so what leaves it at `T1` is exactly the difference between the old state
//! and the snapshot.
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
use crate::{ChangeEvent, ClusterTime, Document, Error, Namespace, OperationType, ResumeToken};

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
    let mut key = DocWriter::new();
    key.append(id.kind, "_id", id.value);
    let mut event = header(
        ns,
        time,
        (1, seq),
        "insert",
        document.as_bytes().len() + 160,
    );
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

/// A `changeflowSnapshotReset` event for `ns` at `time` (phase 0, so it sorts before every other
/// event at `time`, synthetic or real): every document of `ns` is retracted, and the inserts of
/// the re-snapshot that follow at `time` put back what exists.
///
/// ```
/// use changeflow_core::{synthetic, ClusterTime, Namespace, OperationType};
/// let ns = Namespace::new("shop", Some("orders"));
/// let reset = synthetic::reset(&ns, ClusterTime::new(9, 1), synthetic::Origin::Snapshot)?;
/// assert_eq!(reset.operation(), &OperationType::SnapshotReset);
/// assert!(synthetic::is_synthetic(&reset.token()));
/// let doc = changeflow_core::Document::from_bytes(bson::rawdoc! { "_id": 1 }.into_bytes()).unwrap();
/// let insert = synthetic::insert(&ns, &doc, ClusterTime::new(9, 1), synthetic::Origin::Snapshot, 0)?;
/// assert!(reset.token() < insert.token());
/// # Ok::<(), changeflow_core::Error>(())
/// ```
pub fn reset(ns: &Namespace, time: ClusterTime, origin: Origin) -> Result<ChangeEvent, Error> {
    let mut event = header(ns, time, (0, 0), OperationType::SnapshotReset.as_str(), 160);
    event.append_str("changeflow", origin.as_str());
    ChangeEvent::from_document(Document::from_trusted(event.finish()))
}

/// The fields every synthetic event starts with: `_id` (a synthetic token at `time` with
/// `(phase, seq)`), `operationType`, `clusterTime`, `ns`.
fn header(
    ns: &Namespace,
    time: ClusterTime,
    (phase, seq): (u8, u64),
    operation: &str,
    capacity: usize,
) -> DocWriter {
    let mut token = DocWriter::new();
    token.append_str("_data", &token_data(time, phase, seq));
    let mut namespace = DocWriter::new();
    namespace.append_str("db", &ns.db);
    if let Some(coll) = &ns.coll {
        namespace.append_str("coll", coll);
    }
    let mut ts = Vec::with_capacity(8);
    ts.extend_from_slice(&time.increment().to_le_bytes());
    ts.extend_from_slice(&time.seconds().to_le_bytes());
    let mut event = DocWriter::with_capacity(capacity);
    event.append(kind::DOCUMENT, "_id", &token.finish());
    event.append_str("operationType", operation);
    event.append(kind::TIMESTAMP, "clusterTime", &ts);
    event.append(kind::DOCUMENT, "ns", &namespace.finish());
    event
}

/// Whether `token` is a synthetic event's (its `_data` has `00` right after the time, where
/// MongoDB's tokens have a type byte of at least `0x2B`).
///
/// ```
/// use changeflow_core::{synthetic, ClusterTime, ResumeToken};
/// let real = ResumeToken::from_data("8200000005000000012B0229296E04");
/// let made = ResumeToken::from_data(&synthetic::token_data(ClusterTime::new(5, 1), 1, 0));
/// assert!(!synthetic::is_synthetic(&real) && synthetic::is_synthetic(&made));
/// ```
pub fn is_synthetic(token: &ResumeToken) -> bool {
    token.data().is_some_and(|d| {
        d.len() >= 20
            && d.is_char_boundary(20)
            && &d[18..20] == "00"
            && d[..2].eq_ignore_ascii_case("82")
    })
}
