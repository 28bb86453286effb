//! Builders of realistic change events and resume tokens, in the shape MongoDB 7 sends them.
//!
//! Tokens follow the workload's format ([`crate::orders`]): `_data` is upper-case hex,
//! `82` + `t` + `i` (8 hex digits each, big-endian) + `2B` + the operation's index in its
//! transaction + an event-unique tail, so tokens decode to their clusterTime and compare in stream
//! order. Derived tokens extend an event's token, so they sort after it and before the next
//! event:
//!
//! * fragment `k` of a split event: the event's token + `k` as two hex digits;
//! * the `invalidate` that follows a drop or rename: the drop's token + [`INVALIDATE_SUFFIX`];
//! * a high-water mark at time `T` (a post-batch token with no event): `82` + `T` + `01`, which
//!   sorts before every event token at `T`.
//!
//! ```
//! use changeflow_testkit::server::events::{event_token, high_water_mark, time_of_token};
//! let token = event_token((5, 2), 0, 7);
//! assert_eq!(time_of_token(&token), Some((5, 2)));
//! assert!(high_water_mark((5, 2)) < token && token < high_water_mark((5, 3)));
//! ```

use bson::{Binary, Bson, DateTime, Document, Timestamp, doc, spec::BinarySubtype};

/// Appended to a drop's or rename's token to form the token of the `invalidate` that follows.
pub const INVALIDATE_SUFFIX: &str = "FFFF";

/// The token `_data` of an event at `time`, index `op_index` in its transaction, with a
/// `unique` tail (distinct events at one time and index need distinct tails).
pub fn event_token(time: (u32, u32), op_index: u32, unique: u64) -> String {
    format!(
        "82{:08X}{:08X}2B{:08X}04{:016X}0004",
        time.0, time.1, op_index, unique
    )
}

/// The post-batch token of a stream that has seen everything before `time` and nothing at it.
pub fn high_water_mark(time: (u32, u32)) -> String {
    format!("82{:08X}{:08X}01", time.0, time.1)
}

/// The cluster time `(t, i)` at the front of a token's `_data`.
pub fn time_of_token(data: &str) -> Option<(u32, u32)> {
    if data.len() < 18 || !data.is_char_boundary(18) || !data[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let t = u32::from_str_radix(&data[2..10], 16).ok()?;
    let i = u32::from_str_radix(&data[10..18], 16).ok()?;
    Some((t, i))
}

/// `{_data: data}`.
pub fn token_document(data: &str) -> Document {
    doc! { "_data": data }
}

/// The header every event carries: `_id`, `operationType`, `clusterTime`, `wallTime`, `ns`.
pub fn header(operation: &str, token: &str, time: (u32, u32), db: &str, coll: &str) -> Document {
    doc! {
        "_id": token_document(token),
        "operationType": operation,
        "clusterTime": Timestamp { time: time.0, increment: time.1 },
        "wallTime": DateTime::from_millis(i64::from(time.0) * 1000 + i64::from(time.1 % 1000)),
        "ns": { "db": db, "coll": coll },
    }
}

/// An `insert` of `document` (which must have an `_id`).
pub fn insert(token: &str, time: (u32, u32), db: &str, coll: &str, document: Document) -> Document {
    let mut event = header("insert", token, time, db, coll);
    let id = document.get("_id").cloned().unwrap_or(Bson::Null);
    event.insert("documentKey", doc! { "_id": id });
    event.insert("fullDocument", document);
    event
}

/// An `update` of the document `id`: `updatedFields` (dotted paths → new values) and
/// `removedFields`, with an empty `truncatedArrays`.
pub fn update(
    token: &str,
    time: (u32, u32),
    db: &str,
    coll: &str,
    id: Bson,
    updated_fields: Document,
    removed_fields: &[&str],
) -> Document {
    let mut event = header("update", token, time, db, coll);
    event.insert("documentKey", doc! { "_id": id });
    event.insert(
        "updateDescription",
        doc! {
            "updatedFields": updated_fields,
            "removedFields": removed_fields.iter().map(|f| Bson::String((*f).into())).collect::<Vec<_>>(),
            "truncatedArrays": [],
        },
    );
    event
}

/// A `replace` of the document with `document`'s `_id`.
pub fn replace(
    token: &str,
    time: (u32, u32),
    db: &str,
    coll: &str,
    document: Document,
) -> Document {
    let mut event = insert(token, time, db, coll, document);
    event.insert("operationType", "replace");
    event
}

/// A `delete` of the document `id`.
pub fn delete(token: &str, time: (u32, u32), db: &str, coll: &str, id: Bson) -> Document {
    let mut event = header("delete", token, time, db, coll);
    event.insert("documentKey", doc! { "_id": id });
    event
}

/// A `drop` of `db.coll`.
pub fn drop(token: &str, time: (u32, u32), db: &str, coll: &str) -> Document {
    header("drop", token, time, db, coll)
}

/// A `rename` of `db.coll` to `db.to`.
pub fn rename(token: &str, time: (u32, u32), db: &str, coll: &str, to: &str) -> Document {
    let mut event = header("rename", token, time, db, coll);
    event.insert("to", doc! { "db": db, "coll": to });
    event
}

/// The `invalidate` that closes a collection stream after `cause` (a drop or rename).
pub fn invalidate(cause: &Document) -> Document {
    let data = token_data(cause).unwrap_or_default();
    let mut event = doc! {
        "_id": token_document(&format!("{data}{INVALIDATE_SUFFIX}")),
        "operationType": "invalidate",
    };
    for key in ["clusterTime", "wallTime"] {
        if let Some(value) = cause.get(key) {
            event.insert(key, value.clone());
        }
    }
    event
}

/// Marks `event` as part of the transaction `(session, txn_number)`: adds `lsid` and `txnNumber`.
pub fn in_transaction(mut event: Document, session: [u8; 16], txn_number: i64) -> Document {
    event.insert(
        "lsid",
        doc! {
            "id": Binary { subtype: BinarySubtype::Uuid, bytes: session.to_vec() },
            "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 32] },
        },
    );
    event.insert("txnNumber", txn_number);
    event
}

/// The `_data` string of an event's `_id`.
pub fn token_data(event: &Document) -> Option<&str> {
    event.get_document("_id").ok()?.get_str("_data").ok()
}

/// Splits `event` as `$changeStreamSplitLargeEvent` does: fragments of at most about
/// `max_bytes` each, every one with `_id` (the event's token + the fragment number) and
/// `splitEvent: {fragment, of}`, the top-level fields distributed over them in order.
///
/// A single field larger than `max_bytes` gets a fragment of its own (MongoDB would fail with
/// 10334 there; the server checks that before calling this).
///
/// ```
/// use bson::doc;
/// use changeflow_testkit::server::events::{insert, split};
/// let big = doc! { "_id": 1, "pad": "x".repeat(300) };
/// let event = insert("82000000010000000104", (1, 1), "a", "b", big);
/// let fragments = split(&event, 200);
/// assert!(fragments.len() >= 2);
/// assert_eq!(fragments[0].get_document("splitEvent").unwrap().get_i32("fragment").unwrap(), 1);
/// ```
pub fn split(event: &Document, max_bytes: usize) -> Vec<Document> {
    let data = token_data(event).unwrap_or_default().to_string();
    let overhead = 120 + data.len();
    let mut groups: Vec<Vec<(String, Bson)>> = vec![Vec::new()];
    let mut size = overhead;
    for (key, value) in event {
        if key == "_id" {
            continue;
        }
        let len = doc! { key: value.clone() }
            .to_vec()
            .map(|v| v.len())
            .unwrap_or(0);
        if size + len > max_bytes && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            size = overhead;
        }
        size += len;
        if let Some(group) = groups.last_mut() {
            group.push((key.clone(), value.clone()));
        }
    }
    let of = groups.len() as i32;
    groups
        .into_iter()
        .enumerate()
        .map(|(k, fields)| {
            let fragment = k as i32 + 1;
            let mut out = doc! { "_id": token_document(&format!("{data}{fragment:02X}")) };
            for (key, value) in fields {
                out.insert(key, value);
            }
            out.insert("splitEvent", doc! { "fragment": fragment, "of": of });
            out
        })
        .collect()
}
