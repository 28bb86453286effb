//! `find` / `getMore` over the server's collections, `count` and `collStats`.
//!
//! * `find`: `filter` on `_id` only ([`IdRange::from_filter`]), `sort` on `_id` (1 or -1),
//!   `skip`, `limit`, `batchSize`, `singleBatch`, `projection` (`{_id: 1}` keeps only `_id`;
//!   other projections are refused with 2 `BadValue`).
//! * `readConcern`: `local` / `majority` / `available` / none read the current state, batch by
//!   batch (like a yielding majority read, a long scan sees writes made between batches);
//!   `{level: "snapshot", atClusterTime: T}` reads the collection as of `T` on every batch;
//!   `level: "snapshot"` without `atClusterTime` reads at the server's current time and returns
//!   it as `cursor.atClusterTime`, as MongoDB does. `T` older than the retained history
//!   ([`ChangeStreamServer::truncate_history`](super::ChangeStreamServer::truncate_history)) is
//!   239 `SnapshotTooOld`, on `find` or any later `getMore`; `T` after the current time is 72
//!   `InvalidOptions`; with [`ServerOptions::snapshot_reads`](super::ServerOptions::snapshot_reads)
//!   false, snapshot reads are 72 `InvalidOptions`.
//! * `count` (`query` on `_id` too) and `collStats` (`count`, `size`, `avgObjSize`) describe the
//!   current state.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use bson::{Bson, Document, doc};

use super::collections::{IdKey, IdRange};
use super::{Shared, State, as_usize, error};

/// An open `find` cursor: where the next batch starts.
#[derive(Debug)]
pub(crate) struct FindCursor {
    ns: String,
    at: Option<(u32, u32)>,
    range: IdRange,
    reverse: bool,
    remaining: Option<usize>,
    id_only: bool,
    batch_size: usize,
}

fn namespace(command: &Document, key: &str) -> Result<(String, String), Document> {
    let db = command.get_str("$db").unwrap_or("test");
    match command.get_str(key) {
        Ok(coll) => Ok((format!("{db}.{coll}"), coll.to_string())),
        Err(_) => Err(error(
            73,
            "InvalidNamespace",
            format!("{key} needs a collection name"),
        )),
    }
}

/// The read time of a command's `readConcern`: `Ok(None)` for the current state.
fn read_time(
    shared: &Shared,
    state: &State,
    command: &Document,
) -> Result<Option<(u32, u32)>, Document> {
    let Ok(concern) = command.get_document("readConcern") else {
        return Ok(None);
    };
    match concern.get_str("level").unwrap_or("local") {
        "snapshot" => {
            if !shared.options.snapshot_reads {
                return Err(error(
                    72,
                    "InvalidOptions",
                    "read concern level snapshot is only valid in a transaction",
                ));
            }
            let at = match concern.get("atClusterTime") {
                Some(Bson::Timestamp(ts)) => (ts.time, ts.increment),
                Some(_) => {
                    return Err(error(
                        14,
                        "TypeMismatch",
                        "atClusterTime must be a timestamp",
                    ));
                }
                None => state.clock,
            };
            check_history(state, at)?;
            if at > state.clock {
                return Err(error(
                    72,
                    "InvalidOptions",
                    format!(
                        "readConcern atClusterTime value Timestamp({}, {}) must not be greater than the current clusterTime Timestamp({}, {})",
                        at.0, at.1, state.clock.0, state.clock.1
                    ),
                ));
            }
            Ok(Some(at))
        }
        "local" | "majority" | "available" | "linearizable" => Ok(None),
        other => Err(error(
            9,
            "FailedToParse",
            format!("readConcern.level {other} is not a valid read concern level"),
        )),
    }
}

fn check_history(state: &State, at: (u32, u32)) -> Result<(), Document> {
    if at < state.history_start {
        return Err(error(
            239,
            "SnapshotTooOld",
            format!(
                "Read timestamp Timestamp({}, {}) is older than the oldest available timestamp Timestamp({}, {}).",
                at.0, at.1, state.history_start.0, state.history_start.1
            ),
        ));
    }
    Ok(())
}

fn batch(state: &State, cursor: &mut FindCursor, limit: usize) -> Vec<Document> {
    let want = cursor.remaining.map_or(limit, |r| r.min(limit));
    let docs = state
        .data
        .read(&cursor.ns, cursor.at, &cursor.range, cursor.reverse, want);
    if let Some(r) = &mut cursor.remaining {
        *r -= docs.len().min(*r);
    }
    if let Some((last, _)) = docs.last() {
        let bound = Bound::Excluded(IdKey(last.clone()));
        if cursor.reverse {
            cursor.range.upper = bound;
        } else {
            cursor.range.lower = bound;
        }
    }
    docs.into_iter()
        .map(|(id, d)| {
            if cursor.id_only {
                doc! { "_id": id }
            } else {
                d
            }
        })
        .collect()
}

fn reply(key: &str, docs: Vec<Document>, id: i64, ns: &str, at: Option<(u32, u32)>) -> Document {
    let mut cursor = doc! { key: docs, "id": id, "ns": ns };
    if let Some(at) = at {
        cursor.insert("atClusterTime", super::time_bson(at));
    }
    doc! { "cursor": cursor, "ok": 1.0 }
}

/// `find`.
pub(crate) fn find(shared: &Shared, command: &Document) -> Document {
    let (ns, _) = match namespace(command, "find") {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let range = match command.get_document("filter") {
        Ok(filter) => match IdRange::from_filter(filter) {
            Ok(r) => r,
            Err(message) => return error(2, "BadValue", message),
        },
        Err(_) => IdRange::all(),
    };
    let reverse = match command.get_document("sort") {
        Ok(sort) => {
            let mut reverse = false;
            for (key, value) in sort {
                let direction = match value {
                    Bson::Int32(n) => i64::from(*n),
                    Bson::Int64(n) => *n,
                    Bson::Double(n) => *n as i64,
                    _ => 0,
                };
                if key != "_id" || !(direction == 1 || direction == -1) {
                    return error(2, "BadValue", "the test server sorts on _id (1 or -1) only");
                }
                reverse = direction == -1;
            }
            reverse
        }
        Err(_) => false,
    };
    let id_only = match command.get_document("projection") {
        Ok(p) if p.is_empty() => false,
        Ok(p) if p.len() == 1 && p.get("_id").is_some_and(|v| as_usize(v) == Some(1)) => true,
        Ok(_) => return error(2, "BadValue", "the test server projects {_id: 1} only"),
        Err(_) => false,
    };
    let skip = command.get("skip").and_then(as_usize).unwrap_or(0);
    let limit = match command.get("limit") {
        Some(Bson::Int32(n)) if *n < 0 => Some(n.unsigned_abs() as usize),
        Some(Bson::Int64(n)) if *n < 0 => Some(n.unsigned_abs() as usize),
        Some(v) => as_usize(v).filter(|n| *n > 0),
        None => None,
    };
    let single = command.get_bool("singleBatch").unwrap_or(false)
        || matches!(command.get("limit"), Some(Bson::Int32(n)) if *n < 0);
    let batch_size = command
        .get("batchSize")
        .and_then(as_usize)
        .unwrap_or(101)
        .max(1);
    let mut state = shared.lock();
    let at = match read_time(shared, &state, command) {
        Ok(at) => at,
        Err(reply) => return reply,
    };
    let mut cursor = FindCursor {
        ns: ns.clone(),
        at,
        range,
        reverse,
        remaining: limit,
        id_only,
        batch_size,
    };
    if skip > 0 {
        // Skipped documents move the cursor's bound like a batch that is not returned.
        let remaining = cursor.remaining.take();
        let _ = batch(&state, &mut cursor, skip);
        cursor.remaining = remaining;
    }
    let first_size = command.get("batchSize").and_then(as_usize).unwrap_or(101);
    let docs = batch(&state, &mut cursor, first_size.max(1));
    let exhausted = docs.len() < first_size.max(1) || cursor.remaining == Some(0) || single;
    let id = if exhausted {
        0
    } else {
        shared.next_cursor.fetch_add(1, Ordering::SeqCst)
    };
    let reply = reply("firstBatch", docs, id, &ns, at);
    if id != 0 {
        state.find_cursors.insert(id, cursor);
    }
    reply
}

/// `getMore` of a `find` cursor.
pub(crate) fn get_more(shared: &Shared, command: &Document) -> Document {
    let Some(Bson::Int64(id)) = command.get("getMore").cloned() else {
        return error(14, "TypeMismatch", "getMore must be an int64 cursor id");
    };
    let mut state = shared.lock();
    let Some(mut cursor) = state.find_cursors.remove(&id) else {
        return error(43, "CursorNotFound", format!("cursor id {id} not found"));
    };
    if let Some(at) = cursor.at
        && let Err(reply) = check_history(&state, at)
    {
        return reply;
    }
    let size = command
        .get("batchSize")
        .and_then(as_usize)
        .unwrap_or(cursor.batch_size)
        .max(1);
    let docs = batch(&state, &mut cursor, size);
    let exhausted = docs.len() < size || cursor.remaining == Some(0);
    let ns = cursor.ns.clone();
    let out_id = if exhausted { 0 } else { id };
    if !exhausted {
        state.find_cursors.insert(id, cursor);
    }
    reply("nextBatch", docs, out_id, &ns, None)
}

/// `count` (current state; `query` on `_id` only).
pub(crate) fn count(shared: &Shared, command: &Document) -> Document {
    let (ns, _) = match namespace(command, "count") {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let state = shared.lock();
    let n = match command.get_document("query") {
        Ok(q) if !q.is_empty() => match IdRange::from_filter(q) {
            Ok(range) => state.data.read(&ns, None, &range, false, usize::MAX).len(),
            Err(message) => return error(2, "BadValue", message),
        },
        _ => state.data.count(&ns),
    };
    doc! { "n": n as i64, "ok": 1.0 }
}

/// `collStats` (current state).
pub(crate) fn coll_stats(shared: &Shared, command: &Document) -> Document {
    let key = if command.contains_key("collStats") {
        "collStats"
    } else {
        "collstats"
    };
    let (ns, _) = match namespace(command, key) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let stats = shared.lock().data.stats(&ns);
    let avg = stats.size.checked_div(stats.count).unwrap_or(0);
    doc! {
        "ns": ns,
        "count": stats.count as i64,
        "size": stats.size as i64,
        "avgObjSize": avg as i64,
        "storageSize": stats.size as i64,
        "nindexes": 1,
        "ok": 1.0,
    }
}
