//! A MongoDB change-stream server for tests: the wire protocol on `127.0.0.1:0`, enough of a
//! replica-set primary for the real `mongodb` driver to open, follow and resume change streams.
//!
//! ```text
//!   test ── push / insert / update / drop / fail points ──▶ ┌──────────── server ────────────┐
//!                                                           │ event log (the oracle), clock  │
//!   mongodb driver ── OP_MSG: hello, aggregate, getMore ──▶ │ cursors: scope, position,      │
//!                  ◀── batches + postBatchResumeToken ───── │   pipeline; fail points;       │
//!                                                           │ recorder of commands received  │
//!                                                           └────────────────────────────────┘
//! ```
//!
//! Built on `std::net`, threads and `bson` only (no async runtime, no driver), one thread per
//! connection.
//!
//! # What it does
//!
//! * Handshake: `hello` / `isMaster` as a replica-set primary (`setName`, `hosts` = its own
//!   address, wire version 21 = MongoDB 7.0, sessions), or as a standalone
//!   ([`ServerOptions::replica_set`] `None`), on which `$changeStream` fails with 40573 like
//!   MongoDB's.
//! * `aggregate` with a first stage `$changeStream` on a collection, a database
//!   (`aggregate: 1`) or the deployment (`allChangesForCluster` on `admin`); options
//!   `resumeAfter` / `startAfter` (exclusive), `startAtOperationTime` (inclusive),
//!   `fullDocument` (`updateLookup` fills `fullDocument` of updates with the current version),
//!   `fullDocumentBeforeChange`, `showExpandedEvents`, `allChangesForCluster`; anything else is
//!   40415. A token older than the log ([`ChangeStreamServer::truncate_history`]) is 286; a
//!   malformed one 260; `resumeAfter` an `invalidate` is 260.
//! * `getMore` with a post-batch resume token in every reply, waiting up to `maxTimeMS`
//!   (default 1 s) for events; `killCursors`, `endSessions`, `ping`, `buildInfo`; other commands
//!   are 59 `CommandNotFound`; `saslStart` is 18 (no users here).
//! * A drop or rename of a watched collection is followed by `invalidate`, with cursor id 0.
//! * Events larger than [`ServerOptions::max_event_size`] are split into fragments with
//!   `$changeStreamSplitLargeEvent`, and fail with 10334 without it.
//! * Fail points ([`FailPoint`]): per command, `times` times: an error with a code and labels, a
//!   closed socket, or a delay.
//! * Cosmos DB mode ([`ServerOptions::cosmos`]): see [`cosmos`].
//!
//! # Invariants
//!
//! * The log is in stream order: tokens strictly increase and cluster times never decrease; a
//!   pushed event that would break this is refused.
//! * The clock (the last oplog time, events and no-ops) runs at most one increment ahead of the
//!   last event unless [`ServerOptions::noop_on_idle`] is set, so workload events (whose times
//!   are fixed) can always follow.
//! * A cursor's position is a token; a batch returns exactly the visible events after it, and its
//!   post-batch token is never behind an event it returned.
//!
//! ```
//! use changeflow_testkit::server::ChangeStreamServer;
//! let server = ChangeStreamServer::start().unwrap();
//! assert!(server.uri().starts_with("mongodb://127.0.0.1:"));
//! let event = server.insert("shop", "orders", bson::doc! { "_id": 1, "region": "eu" });
//! assert_eq!(server.events(), vec![event]);
//! ```

pub mod collections;
pub mod cosmos;
pub mod events;
mod find;
pub mod pipeline;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bson::{Bson, DateTime, Document, Timestamp, doc};

use crate::orders::{OrdersConfig, OrdersWorkload};
use crate::reference::{ReferenceModel, id_key};
use pipeline::Stage;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The replica set's name (`Some("rs0")` by default); `None` answers as a standalone.
    pub replica_set: Option<String>,
    /// Events larger than this (BSON bytes) are split or fail with 10334 (default 16 MiB).
    pub max_event_size: usize,
    /// An idle `getMore` writes a no-op, moving the clock and so the post-batch token on, as a
    /// replica set's periodic no-op writer does (default false: the clock stays put).
    pub noop_on_idle: bool,
    /// Cosmos DB mode (see [`cosmos`]).
    pub cosmos: Option<cosmos::CosmosOptions>,
    /// Send no `postBatchResumeToken` (as servers before 4.0.7): the driver then resumes with
    /// `startAtOperationTime` until it has seen an event.
    pub omit_post_batch_token: bool,
    /// Serve `readConcern: {level: "snapshot"}` reads (default true). When false, such reads
    /// fail with 72 `InvalidOptions` "read concern level snapshot is only valid in a
    /// transaction", as a MongoDB 4.x replica set answers (a 5.0+ standalone says 123
    /// `NotAReplicaSet`).
    pub snapshot_reads: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            replica_set: Some("rs0".into()),
            max_event_size: 16 * 1024 * 1024,
            noop_on_idle: false,
            cosmos: None,
            omit_post_batch_token: false,
            snapshot_reads: true,
        }
    }
}

/// What a fail point does to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum FailAction {
    /// Reply `{ok: 0, code, codeName, errmsg, errorLabels}`.
    Error {
        /// The error code.
        code: i32,
        /// The code's name.
        name: String,
        /// Error labels, e.g. `ResumableChangeStreamError`.
        labels: Vec<String>,
    },
    /// Close the connection without replying.
    CloseSocket,
    /// Wait this long, then run the command normally.
    Delay(Duration),
}

/// A fail point: the next `times` commands named `command` suffer `action`, once `after` of them
/// went through. Fail points count commands independently; when several are due for one command,
/// the first added acts.
#[derive(Debug, Clone, PartialEq)]
pub struct FailPoint {
    /// The command name (`getMore`, `aggregate`, …).
    pub command: String,
    /// How many commands it applies to.
    pub times: usize,
    /// How many matching commands pass untouched before it applies.
    pub after: usize,
    /// What happens to them.
    pub action: FailAction,
}

impl FailPoint {
    /// Fails the next `times` `command`s with `code` and `labels`.
    pub fn error(command: &str, times: usize, code: i32, name: &str, labels: &[&str]) -> Self {
        FailPoint {
            command: command.into(),
            times,
            after: 0,
            action: FailAction::Error {
                code,
                name: name.into(),
                labels: labels.iter().map(|l| (*l).to_string()).collect(),
            },
        }
    }
    /// Closes the socket on the next `times` `command`s.
    pub fn close_socket(command: &str, times: usize) -> Self {
        FailPoint {
            command: command.into(),
            times,
            after: 0,
            action: FailAction::CloseSocket,
        }
    }
    /// The same fail point, applying only after `n` matching commands went through.
    pub fn after(mut self, n: usize) -> Self {
        self.after = n;
        self
    }
    /// Delays the next `times` `command`s by `delay`.
    pub fn delay(command: &str, times: usize, delay: Duration) -> Self {
        FailPoint {
            command: command.into(),
            times,
            after: 0,
            action: FailAction::Delay(delay),
        }
    }
}

/// One event in the log.
#[derive(Debug, Clone)]
struct Entry {
    token: String,
    time: (u32, u32),
    db: String,
    coll: Option<String>,
    /// For drop and rename: the collection whose streams this invalidates.
    invalidates: bool,
    event: Document,
    /// The event's BSON size, measured when first needed (most seeded events are never sent).
    size: std::sync::OnceLock<usize>,
}

impl Entry {
    fn size(&self) -> usize {
        *self
            .size
            .get_or_init(|| self.event.to_vec().map(|v| v.len()).unwrap_or(0))
    }
}

/// What a cursor watches.
#[derive(Debug, Clone, PartialEq)]
enum Scope {
    Cluster,
    Database(String),
    Collection(String, String),
}

#[derive(Debug)]
struct Cursor {
    scope: Scope,
    ns: String,
    position: String,
    stages: Vec<Stage>,
    split: bool,
    lookup: bool,
    cosmos: Option<cosmos::Partition>,
    batch_size: usize,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Entry>,
    clock: (u32, u32),
    history_start: (u32, u32),
    cursors: HashMap<i64, Cursor>,
    fail_points: Vec<FailPoint>,
    commands: Vec<Document>,
    model: ReferenceModel,
    unique: u64,
    txn_numbers: u64,
    collections: Vec<(String, String)>,
    /// Every document's versions, from the log (`find`, `count`, `collStats`).
    data: collections::Collections,
    find_cursors: HashMap<i64, find::FindCursor>,
}

struct Shared {
    options: ServerOptions,
    address: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    next_cursor: AtomicI64,
    connections: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running change-stream server; it stops when dropped.
pub struct ChangeStreamServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// Why the server refused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushError(pub String);

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PushError {}

/// One operation of a transaction built by [`ChangeStreamServer::transaction`].
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Insert this document into `(db, coll)`.
    Insert(String, String, Document),
    /// Update `_id` in `(db, coll)` with these `updatedFields`.
    Update(String, String, Bson, Document),
    /// Delete `_id` from `(db, coll)`.
    Delete(String, String, Bson),
}

impl ChangeStreamServer {
    /// Starts a replica-set primary named `rs0` on `127.0.0.1:0`.
    pub fn start() -> io::Result<Self> {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` on `127.0.0.1:0`.
    pub fn start_with(options: ServerOptions) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let start = (1_700_000_000, 1);
        let shared = Arc::new(Shared {
            options,
            address,
            state: Mutex::new(State {
                clock: start,
                history_start: (0, 0),
                ..State::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            next_cursor: AtomicI64::new(1_000_001),
            connections: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("cs-server-accept".into())
            .spawn(move || accept_loop(listener, accepting))?;
        Ok(ChangeStreamServer {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    /// A connection string for the driver: the replica set, fast server selection.
    pub fn uri(&self) -> String {
        match &self.shared.options.replica_set {
            Some(name) => format!(
                "mongodb://{}/?replicaSet={name}&serverSelectionTimeoutMS=5000",
                self.shared.address
            ),
            None => format!(
                "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=5000",
                self.shared.address
            ),
        }
    }

    /// The current cluster time (the last event or no-op).
    pub fn clock(&self) -> (u32, u32) {
        self.shared.lock().clock
    }

    /// Every event in the log, in stream order (the oracle for what a stream must deliver).
    pub fn events(&self) -> Vec<Document> {
        self.shared
            .lock()
            .log
            .iter()
            .map(|e| e.event.clone())
            .collect()
    }

    /// How many events the log holds.
    pub fn log_len(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// Appends a complete event (e.g. from the orders workload) in stream order.
    pub fn push(&self, event: Document) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        push_locked(&mut state, event)?;
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Appends the events of the orders workload `config`; returns how many.
    pub fn push_workload(&self, config: OrdersConfig) -> Result<usize, PushError> {
        let mut workload = OrdersWorkload::new(config);
        let mut n = 0;
        let mut state = self.shared.lock();
        while let Some(event) = workload.next_document() {
            push_locked(&mut state, event)?;
            n += 1;
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(n)
    }

    fn append(&self, build: impl FnOnce(&str, (u32, u32)) -> Document) -> Document {
        let mut state = self.shared.lock();
        let time = next_time(&state);
        state.unique += 1;
        let token = events::event_token(time, 0, state.unique);
        let event = build(&token, time);
        // Built here in stream order, so it cannot be refused.
        let _ = push_locked(&mut state, event.clone());
        drop(state);
        self.shared.changed.notify_all();
        event
    }

    /// Inserts `document` into `db.coll` at the next cluster time; returns the event.
    pub fn insert(&self, db: &str, coll: &str, document: Document) -> Document {
        self.append(|token, time| events::insert(token, time, db, coll, document))
    }

    /// Updates document `id` of `db.coll` (`updatedFields`, `removedFields`); returns the event.
    pub fn update(
        &self,
        db: &str,
        coll: &str,
        id: impl Into<Bson>,
        updated_fields: Document,
        removed_fields: &[&str],
    ) -> Document {
        let id = id.into();
        self.append(|token, time| {
            events::update(token, time, db, coll, id, updated_fields, removed_fields)
        })
    }

    /// Replaces a document of `db.coll` (by `document._id`); returns the event.
    pub fn replace(&self, db: &str, coll: &str, document: Document) -> Document {
        self.append(|token, time| events::replace(token, time, db, coll, document))
    }

    /// Deletes document `id` of `db.coll`; returns the event.
    pub fn delete(&self, db: &str, coll: &str, id: impl Into<Bson>) -> Document {
        let id = id.into();
        self.append(|token, time| events::delete(token, time, db, coll, id))
    }

    /// Inserts every document of `documents` into `db.coll`, one event each at successive
    /// cluster times, under one lock (fast seeding of large collections); returns how many.
    pub fn insert_many(&self, db: &str, coll: &str, documents: Vec<Document>) -> usize {
        let mut state = self.shared.lock();
        let n = documents.len();
        for document in documents {
            let time = next_time(&state);
            state.unique += 1;
            let token = events::event_token(time, 0, state.unique);
            let event = events::insert(&token, time, db, coll, document);
            // Built here in stream order, so it cannot be refused.
            let _ = push_locked(&mut state, event);
        }
        drop(state);
        self.shared.changed.notify_all();
        n
    }

    /// The documents of `db.coll` now, in `_id` order (what a `majority` `find` returns).
    pub fn documents(&self, db: &str, coll: &str) -> Vec<Document> {
        self.shared
            .lock()
            .data
            .current(&format!("{db}.{coll}"))
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    /// The documents of `db.coll` as of cluster time `at`, in `_id` order (what a snapshot
    /// `find` at `atClusterTime: at` returns).
    pub fn documents_at(&self, db: &str, coll: &str, at: (u32, u32)) -> Vec<Document> {
        self.shared
            .lock()
            .data
            .read(
                &format!("{db}.{coll}"),
                Some(at),
                &collections::IdRange::all(),
                false,
                usize::MAX,
            )
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    /// The oldest cluster time the server still has history for (set by
    /// [`ChangeStreamServer::truncate_history`]): older resume points give 286, older snapshot
    /// reads 239.
    pub fn history_start(&self) -> (u32, u32) {
        self.shared.lock().history_start
    }

    /// Drops `db.coll`: a `drop` event, which invalidates that collection's streams.
    pub fn drop_collection(&self, db: &str, coll: &str) -> Document {
        self.append(|token, time| events::drop(token, time, db, coll))
    }

    /// Renames `db.coll` to `db.to`: a `rename` event, which invalidates streams on `coll`.
    pub fn rename_collection(&self, db: &str, coll: &str, to: &str) -> Document {
        self.append(|token, time| events::rename(token, time, db, coll, to))
    }

    /// Commits a transaction: all `ops` at one cluster time, with one `lsid` and `txnNumber`,
    /// in order. Returns the events.
    pub fn transaction(&self, ops: Vec<TxnOp>) -> Vec<Document> {
        let mut state = self.shared.lock();
        let time = next_time(&state);
        state.txn_numbers += 1;
        let txn_number = state.txn_numbers as i64;
        let mut session = [0u8; 16];
        session[..8].copy_from_slice(&(txn_number as u64).to_be_bytes());
        let mut out = Vec::new();
        for (index, op) in ops.into_iter().enumerate() {
            state.unique += 1;
            let token = events::event_token(time, index as u32, state.unique);
            let event = match op {
                TxnOp::Insert(db, coll, d) => events::insert(&token, time, &db, &coll, d),
                TxnOp::Update(db, coll, id, fields) => {
                    events::update(&token, time, &db, &coll, id, fields, &[])
                }
                TxnOp::Delete(db, coll, id) => events::delete(&token, time, &db, &coll, id),
            };
            let event = events::in_transaction(event, session, txn_number);
            let _ = push_locked(&mut state, event.clone());
            out.push(event);
        }
        drop(state);
        self.shared.changed.notify_all();
        out
    }

    /// Writes a no-op: the clock moves one increment on, with no event (post-batch tokens follow).
    pub fn noop(&self) -> (u32, u32) {
        let mut state = self.shared.lock();
        state.clock = (state.clock.0, state.clock.1 + 1);
        let clock = state.clock;
        drop(state);
        self.shared.changed.notify_all();
        clock
    }

    /// Forgets the log before `time` (the oplog rolled over): resuming from an earlier token or
    /// time fails with 286 `ChangeStreamHistoryLost`, and snapshot reads at an earlier
    /// `atClusterTime` with 239 `SnapshotTooOld` (also on `getMore` of such a cursor).
    pub fn truncate_history(&self, time: (u32, u32)) {
        let mut state = self.shared.lock();
        state.history_start = time;
    }

    /// Adds a fail point.
    pub fn fail(&self, point: FailPoint) {
        self.shared.lock().fail_points.push(point);
    }

    /// Removes every fail point.
    pub fn clear_fail_points(&self) {
        self.shared.lock().fail_points.clear();
    }

    /// Every command received so far (handshakes included), in arrival order.
    pub fn commands(&self) -> Vec<Document> {
        self.shared.lock().commands.clone()
    }

    /// The commands received whose name (first key) is `name`.
    pub fn commands_named(&self, name: &str) -> Vec<Document> {
        self.shared
            .lock()
            .commands
            .iter()
            .filter(|c| c.keys().next().is_some_and(|k| k == name))
            .cloned()
            .collect()
    }

    /// The `$changeStream` stage of every `aggregate` received, in order.
    pub fn change_stream_stages(&self) -> Vec<Document> {
        self.commands_named("aggregate")
            .iter()
            .filter_map(|c| {
                c.get_array("pipeline")
                    .ok()?
                    .first()?
                    .as_document()?
                    .get_document("$changeStream")
                    .ok()
                    .cloned()
            })
            .collect()
    }

    /// Open cursors.
    pub fn open_cursors(&self) -> usize {
        self.shared.lock().cursors.len()
    }

    /// Closes every connection (the driver sees network errors and reconnects).
    pub fn close_connections(&self) {
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in connections {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stops accepting, closes every connection and waits for the acceptor.
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        self.close_connections();
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for ChangeStreamServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The next event time: one increment after the last event, or the clock if a no-op already
/// moved it there (an event may take a no-op's time: its token sorts after the no-op's mark).
fn next_time(state: &State) -> (u32, u32) {
    let (t, i) = state.clock;
    match state.log.last() {
        Some(last) if last.time == state.clock => (t, i + 1),
        _ => (t, i),
    }
}

fn push_locked(state: &mut State, event: Document) -> Result<(), PushError> {
    let token = events::token_data(&event)
        .ok_or_else(|| PushError("event without `_id._data`".into()))?
        .to_ascii_uppercase();
    let time = match event.get("clusterTime") {
        Some(Bson::Timestamp(ts)) => (ts.time, ts.increment),
        _ => return Err(PushError(format!("{token}: no clusterTime"))),
    };
    if events::time_of_token(&token) != Some(time) {
        return Err(PushError(format!(
            "{token}: the token does not start with the clusterTime"
        )));
    }
    if let Some(last) = state.log.last()
        && token <= last.token
    {
        return Err(PushError(format!(
            "{token}: not after the last token {}",
            last.token
        )));
    }
    if time < state.clock {
        return Err(PushError(format!(
            "{token}: time {time:?} is before the server's clock {:?}",
            state.clock
        )));
    }
    let ns = event.get_document("ns").ok();
    let db = ns
        .and_then(|n| n.get_str("db").ok())
        .unwrap_or_default()
        .to_string();
    let coll = ns.and_then(|n| n.get_str("coll").ok()).map(String::from);
    let operation = event.get_str("operationType").unwrap_or_default();
    let invalidates = matches!(operation, "drop" | "rename");
    if let Some(c) = &coll {
        let key = (db.clone(), c.clone());
        if invalidates {
            state.collections.retain(|k| *k != key);
        } else if !state.collections.contains(&key) {
            state.collections.push(key);
        }
    }
    let _ = state.model.apply(&event);
    if let Some(c) = &coll {
        let ns = format!("{db}.{c}");
        match operation {
            "drop" => state.data.drop_ns(&ns, time),
            "rename" => {
                state.data.drop_ns(&ns, time);
                if let Some(to) = event.get_document("to").ok().and_then(|t| {
                    Some(format!(
                        "{}.{}",
                        t.get_str("db").ok()?,
                        t.get_str("coll").ok()?
                    ))
                }) {
                    state.data.drop_ns(&to, time);
                    let moved: Vec<(Bson, Document)> = state
                        .model
                        .documents()
                        .iter()
                        .filter(|((n, _), _)| *n == to)
                        .filter_map(|(_, d)| Some((d.get("_id")?.clone(), d.clone())))
                        .collect();
                    for (id, d) in moved {
                        state.data.record(&to, &id, time, Some(d));
                    }
                }
            }
            _ => {
                if let Some(id) = event
                    .get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get("_id"))
                {
                    let now = match (operation, event.get_document("fullDocument")) {
                        ("insert" | "replace", Ok(full)) => Some(full.clone()),
                        _ => state.model.get(&ns, id).cloned(),
                    };
                    // An update the model could not apply (no such document) changes nothing.
                    if now.is_some() || operation != "update" {
                        state.data.record(&ns, id, time, now);
                    }
                }
            }
        }
    } else if operation == "dropDatabase" {
        for ns in state.data.namespaces_with_prefix(&format!("{db}.")) {
            state.data.drop_ns(&ns, time);
        }
    }
    state.clock = time;
    state.log.push(Entry {
        token,
        time,
        db,
        coll,
        invalidates,
        event,
        size: std::sync::OnceLock::new(),
    });
    Ok(())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                if let Ok(copy) = stream.try_clone() {
                    shared
                        .connections
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(copy);
                }
                let shared = Arc::clone(&shared);
                if let Ok(handle) = std::thread::Builder::new()
                    .name("cs-server-conn".into())
                    .spawn(move || serve(stream, shared))
                {
                    workers.push(handle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        workers.retain(|h: &JoinHandle<()>| !h.is_finished());
    }
    for handle in workers {
        let _ = handle.join();
    }
}

fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut reply_id = 1;
    loop {
        let request = match wire::read_request(&mut stream) {
            Ok(Some(r)) => r,
            _ => return,
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let reply = match handle(&shared, request.command) {
            Some(reply) => reply,
            None => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        if request.more_to_come {
            continue;
        }
        reply_id += 1;
        if wire::write_reply(&mut stream, reply_id, request.request_id, &reply).is_err() {
            return;
        }
    }
}

fn error(code: i32, name: &str, message: impl Into<String>) -> Document {
    doc! { "ok": 0.0, "errmsg": message.into(), "code": code, "codeName": name }
}

fn time_bson(time: (u32, u32)) -> Timestamp {
    Timestamp {
        time: time.0,
        increment: time.1,
    }
}

/// Runs one command; `None` means: close the socket.
fn handle(shared: &Shared, command: Document) -> Option<Document> {
    let name = command.keys().next().cloned().unwrap_or_default();
    let delay = {
        let mut state = shared.lock();
        state.commands.push(command.clone());
        // Each fail point counts the matching commands on its own; the first one due acts.
        let mut action = None;
        for point in state
            .fail_points
            .iter_mut()
            .filter(|p| p.command.eq_ignore_ascii_case(&name) && p.times > 0)
        {
            if point.after > 0 {
                point.after -= 1;
            } else if action.is_none() {
                point.times -= 1;
                action = Some(point.action.clone());
            }
        }
        state.fail_points.retain(|p| p.times > 0);
        match action {
            Some(FailAction::CloseSocket) => return None,
            Some(FailAction::Error { code, name, labels }) => {
                let mut reply = error(code, &name, format!("fail point: {name}"));
                if !labels.is_empty() {
                    reply.insert("errorLabels", labels);
                }
                return Some(reply);
            }
            Some(FailAction::Delay(d)) => Some(d),
            None => None,
        }
    };
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    let mut reply = match name.as_str() {
        "hello" | "isMaster" | "ismaster" => hello(shared),
        "ping" | "endSessions" => doc! { "ok": 1.0 },
        "buildInfo" | "buildinfo" => {
            doc! { "version": "7.0.0", "versionArray": [7, 0, 0, 0], "ok": 1.0 }
        }
        "saslStart" | "authenticate" => error(18, "AuthenticationFailed", "Authentication failed."),
        "aggregate" => aggregate(shared, &command),
        "getMore" => match command.get("getMore") {
            Some(Bson::Int64(id)) if shared.lock().find_cursors.contains_key(id) => {
                find::get_more(shared, &command)
            }
            _ => get_more(shared, &command),
        },
        "find" => find::find(shared, &command),
        "count" => find::count(shared, &command),
        "collStats" | "collstats" => find::coll_stats(shared, &command),
        "killCursors" => kill_cursors(shared, &command),
        "GetChangeStreamTokens" | "getChangeStreamTokens" => cosmos::tokens(shared, &command),
        "customAction" if command.get_str("customAction").ok() == Some("GetChangeStreamTokens") => {
            cosmos::tokens(shared, &command)
        }
        other => error(59, "CommandNotFound", format!("no such command: '{other}'")),
    };
    let clock = shared.lock().clock;
    if shared.options.replica_set.is_some() {
        reply.insert("operationTime", time_bson(clock));
        reply.insert(
            "$clusterTime",
            doc! { "clusterTime": time_bson(clock), "signature": { "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] }, "keyId": 0_i64 } },
        );
    }
    Some(reply)
}

fn hello(shared: &Shared) -> Document {
    let me = shared.address.to_string();
    let mut reply = doc! {
        "helloOk": true,
        "ismaster": true,
        "isWritablePrimary": true,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": 1,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": false,
        "ok": 1.0,
    };
    if let Some(name) = &shared.options.replica_set {
        reply.insert("hosts", vec![me.clone()]);
        reply.insert("setName", name.clone());
        reply.insert("setVersion", 1);
        reply.insert("primary", me.clone());
        reply.insert("me", me);
    }
    reply
}

/// The `_data` of a token document, validated; `Err` is a 260 reply.
fn token_of(value: &Bson, option: &str) -> Result<String, Document> {
    let bad = || {
        error(
            260,
            "InvalidResumeToken",
            format!("{option}: the resume token is not a valid token"),
        )
    };
    let data = value
        .as_document()
        .and_then(|d| d.get("_data"))
        .ok_or_else(bad)?;
    match data {
        Bson::String(s) if events::time_of_token(s).is_some() => Ok(s.to_ascii_uppercase()),
        Bson::Binary(b) => cosmos::position_of(&b.bytes).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn aggregate(shared: &Shared, command: &Document) -> Document {
    let db = command.get_str("$db").unwrap_or("test").to_string();
    let Some(pipeline) = command.get_array("pipeline").ok() else {
        return error(9, "FailedToParse", "aggregate needs a pipeline");
    };
    let Some(spec) = pipeline
        .first()
        .and_then(Bson::as_document)
        .and_then(|s| s.get_document("$changeStream").ok())
    else {
        return error(
            2,
            "BadValue",
            "the test server only runs $changeStream aggregations",
        );
    };
    if shared.options.replica_set.is_none() {
        return error(
            40573,
            "Location40573",
            "The $changeStream stage is only supported on replica sets",
        );
    }
    let stages = match pipeline::parse(&pipeline[1..]) {
        Ok(s) => s,
        Err((code, name, msg)) => return error(code, name, msg),
    };
    let mut lookup = false;
    let mut cluster = false;
    let mut start: Option<(String, &str)> = None;
    for (key, value) in spec {
        match key.as_str() {
            "fullDocument" => lookup = value.as_str() == Some("updateLookup"),
            "fullDocumentBeforeChange"
            | "showExpandedEvents"
            | "allowToRunOnConfigDB"
            | "comment" => {}
            "allChangesForCluster" => cluster = value.as_bool() == Some(true),
            "resumeAfter" | "startAfter" => match token_of(value, key) {
                Ok(token) => {
                    start = Some((
                        token,
                        if key == "resumeAfter" {
                            "resume"
                        } else {
                            "start"
                        },
                    ))
                }
                Err(reply) => return reply,
            },
            "startAtOperationTime" => match value {
                Bson::Timestamp(ts) => {
                    start = Some((events::high_water_mark((ts.time, ts.increment)), "time"))
                }
                _ => {
                    return error(
                        14,
                        "TypeMismatch",
                        "startAtOperationTime must be a timestamp",
                    );
                }
            },
            other => {
                return error(
                    40415,
                    "Location40415",
                    format!("BSON field '$changeStream.{other}' is an unknown field."),
                );
            }
        }
    }
    let target = command.get("aggregate");
    let scope = match (target, cluster) {
        (Some(Bson::String(coll)), false) => Scope::Collection(db.clone(), coll.clone()),
        (Some(Bson::Int32(1) | Bson::Int64(1)), true) if db == "admin" => Scope::Cluster,
        (Some(Bson::Int32(1) | Bson::Int64(1)), false) => Scope::Database(db.clone()),
        _ => {
            return error(
                73,
                "InvalidNamespace",
                "$changeStream must run on a collection, a database (aggregate: 1) or admin with allChangesForCluster",
            );
        }
    };
    let ns = match &scope {
        Scope::Collection(d, c) => format!("{d}.{c}"),
        _ => format!("{db}.$cmd.aggregate"),
    };
    let batch_size = command
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_usize)
        .unwrap_or(101);
    let mut state = shared.lock();
    let mut partition = None;
    if let Some(options) = &shared.options.cosmos {
        if let Err(reply) = cosmos::check_pipeline(&stages, lookup) {
            return reply;
        }
        lookup = true;
        if let Scope::Collection(d, c) = &scope
            && !state.collections.contains(&(d.clone(), c.clone()))
        {
            return error(
                26,
                "NamespaceNotFound",
                format!("Collection {d}.{c} does not exist"),
            );
        }
        partition = Some(cosmos::partition_of_start(
            options,
            start.as_ref().map(|(t, _)| t.as_str()),
            command,
        ));
        if let Some(Bson::Document(d)) = spec.get("resumeAfter").or(spec.get("startAfter"))
            && let Some(Bson::Binary(b)) = d.get("_data")
        {
            partition = cosmos::partition_of_token(&b.bytes).or(partition);
        }
    }
    let position = match start {
        Some((token, how)) => {
            let time = events::time_of_token(&token).unwrap_or((0, 0));
            if time < state.history_start {
                return error(
                    286,
                    "ChangeStreamHistoryLost",
                    format!(
                        "Resume of change stream was not possible, as the resume point may no longer be in the oplog. (test server: the oldest time in the oplog is Timestamp({}, {}))",
                        state.history_start.0, state.history_start.1
                    ),
                );
            }
            if how == "resume" && token.ends_with(events::INVALIDATE_SUFFIX) {
                return error(
                    260,
                    "InvalidResumeToken",
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
                );
            }
            token
        }
        None => {
            // Start "now": after everything in the log, at a fresh no-op time.
            if state.log.last().is_some_and(|e| e.time == state.clock) {
                state.clock.1 += 1;
            }
            let hwm = events::high_water_mark(state.clock);
            match state.log.last() {
                Some(e) if e.token > hwm => e.token.clone(),
                _ => hwm,
            }
        }
    };
    let split = stages.contains(&Stage::Split);
    let mut cursor = Cursor {
        scope,
        ns: ns.clone(),
        position,
        stages,
        split,
        lookup,
        cosmos: partition,
        batch_size,
    };
    let first = match next_batch(shared, &state, &mut cursor, batch_size) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let id = if first.closed {
        0
    } else {
        shared.next_cursor.fetch_add(1, Ordering::SeqCst)
    };
    let pbrt = post_batch_token(shared, &cursor);
    if id != 0 {
        state.cursors.insert(id, cursor);
    }
    cursor_reply("firstBatch", first.events, pbrt, id, ns)
}

fn as_usize(v: &Bson) -> Option<usize> {
    match v {
        Bson::Int32(n) => usize::try_from(*n).ok(),
        Bson::Int64(n) => usize::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 => Some(*n as usize),
        _ => None,
    }
}

fn post_batch_token(shared: &Shared, cursor: &Cursor) -> Option<Document> {
    if shared.options.omit_post_batch_token {
        return None;
    }
    Some(match &shared.options.cosmos {
        Some(_) => doc! { "_data": cosmos::opaque(&cursor.position, cursor.cosmos.as_ref()) },
        None => events::token_document(&cursor.position),
    })
}

fn cursor_reply(
    batch_key: &str,
    events: Vec<Document>,
    pbrt: Option<Document>,
    id: i64,
    ns: String,
) -> Document {
    let mut cursor = doc! { batch_key: events };
    if let Some(pbrt) = pbrt {
        cursor.insert("postBatchResumeToken", pbrt);
    }
    cursor.insert("id", id);
    cursor.insert("ns", ns);
    doc! { "cursor": cursor, "ok": 1.0 }
}

struct Batch {
    events: Vec<Document>,
    closed: bool,
}

/// Scans the log after the cursor's position: up to `limit` visible events (a split event's
/// fragments stay together), moving the position over everything scanned.
fn next_batch(
    shared: &Shared,
    state: &State,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<Batch, Document> {
    let mut out = Vec::new();
    let mut index = state.log.partition_point(|e| e.token <= cursor.position);
    // A position inside an event (a fragment token, an invalidate token) refers to the entry
    // whose token it extends.
    let mut resume_inside = None;
    if index > 0 {
        let previous = &state.log[index - 1];
        if cursor.position.len() > previous.token.len()
            && cursor.position.starts_with(&previous.token)
        {
            resume_inside = Some(cursor.position[previous.token.len()..].to_string());
            index -= 1;
        }
    }
    let limit = limit.max(1);
    while index < state.log.len() && out.len() < limit {
        let entry = &state.log[index];
        index += 1;
        let inside = resume_inside.take();
        if inside.as_deref() == Some(events::INVALIDATE_SUFFIX) {
            cursor.position = format!("{}{}", entry.token, events::INVALIDATE_SUFFIX);
            continue;
        }
        cursor.position = entry.token.clone();
        if !visible(&cursor.scope, entry) {
            continue;
        }
        if let Some(partition) = &cursor.cosmos {
            if let Some(event) = cosmos::shape(entry, &state.model, partition, &cursor.stages) {
                out.push(event);
            }
            continue;
        }
        let mut event = entry.event.clone();
        if cursor.lookup
            && event.get_str("operationType").ok() == Some("update")
            && !event.contains_key("fullDocument")
        {
            let current = event
                .get_document("documentKey")
                .ok()
                .and_then(|k| k.get("_id"))
                .and_then(|id| {
                    state
                        .model
                        .documents()
                        .get(&(ns_string(entry), id_key(id)))
                        .cloned()
                });
            event.insert("fullDocument", current.map_or(Bson::Null, Bson::Document));
        }
        let invalidate = entry.invalidates
            && matches!(&cursor.scope, Scope::Collection(d, c) if *d == entry.db && Some(c) == entry.coll.as_ref());
        if pipeline::touches_id(&cursor.stages) {
            return Err(error(
                280,
                "ChangeStreamFatalError",
                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline.",
            ));
        }
        // Unchanged by the pipeline or a lookup: the size measured when it was logged holds.
        let unchanged = cursor.stages.is_empty()
            && event.contains_key("fullDocument") == entry.event.contains_key("fullDocument");
        if let Some(event) = pipeline::apply(&cursor.stages, event) {
            let size = if unchanged {
                entry.size()
            } else {
                event
                    .to_vec()
                    .map(|v| v.len())
                    .unwrap_or_else(|_| entry.size())
            };
            if size > shared.options.max_event_size {
                if !cursor.split {
                    return Err(error(
                        10334,
                        "BSONObjectTooLarge",
                        format!(
                            "BSONObj size: {size} is invalid. Size must be between 0 and 16793600(16MB)"
                        ),
                    ));
                }
                let fragments = events::split(&event, shared.options.max_event_size);
                let skip = inside
                    .as_deref()
                    .and_then(|s| u32::from_str_radix(s, 16).ok())
                    .unwrap_or(0) as usize;
                for fragment in fragments.into_iter().skip(skip) {
                    if let Some(data) = events::token_data(&fragment) {
                        cursor.position = data.to_string();
                    }
                    out.push(fragment);
                }
            } else {
                out.push(event);
            }
        }
        if invalidate {
            let event = events::invalidate(&entry.event);
            if let Some(data) = events::token_data(&event) {
                cursor.position = data.to_string();
            }
            out.push(event);
            return Ok(Batch {
                events: out,
                closed: true,
            });
        }
    }
    if index >= state.log.len() {
        let hwm = events::high_water_mark(state.clock);
        if hwm > cursor.position {
            cursor.position = hwm;
        }
    }
    Ok(Batch {
        events: out,
        closed: false,
    })
}

fn ns_string(entry: &Entry) -> String {
    match &entry.coll {
        Some(c) => format!("{}.{c}", entry.db),
        None => entry.db.clone(),
    }
}

fn visible(scope: &Scope, entry: &Entry) -> bool {
    match scope {
        Scope::Cluster => !matches!(entry.db.as_str(), "admin" | "config" | "local"),
        Scope::Database(db) => entry.db == *db,
        Scope::Collection(db, coll) => entry.db == *db && entry.coll.as_ref() == Some(coll),
    }
}

fn get_more(shared: &Shared, command: &Document) -> Document {
    let id = match command.get("getMore") {
        Some(Bson::Int64(id)) => *id,
        _ => return error(14, "TypeMismatch", "getMore must be an int64 cursor id"),
    };
    let wait = command
        .get("maxTimeMS")
        .and_then(as_usize)
        .map_or(Duration::from_secs(1), |ms| {
            Duration::from_millis(ms as u64)
        });
    let deadline = Instant::now() + wait;
    let mut state = shared.lock();
    let Some(mut cursor) = state.cursors.remove(&id) else {
        return error(43, "CursorNotFound", format!("cursor id {id} not found"));
    };
    let limit = command
        .get("batchSize")
        .and_then(as_usize)
        .unwrap_or(cursor.batch_size);
    loop {
        let batch = match next_batch(shared, &state, &mut cursor, limit) {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let now = Instant::now();
        if !batch.events.is_empty()
            || batch.closed
            || now >= deadline
            || shared.stop.load(Ordering::SeqCst)
        {
            if batch.events.is_empty() && !batch.closed && shared.options.noop_on_idle {
                state.clock.1 += 1;
                let hwm = events::high_water_mark(state.clock);
                if hwm > cursor.position {
                    cursor.position = hwm;
                }
            }
            let pbrt = post_batch_token(shared, &cursor);
            let ns = cursor.ns.clone();
            let out_id = if batch.closed { 0 } else { id };
            if !batch.closed {
                state.cursors.insert(id, cursor);
            }
            return cursor_reply("nextBatch", batch.events, pbrt, out_id, ns);
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .map(|(s, _)| s)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

fn kill_cursors(shared: &Shared, command: &Document) -> Document {
    let mut state = shared.lock();
    let mut killed = Vec::new();
    let mut missing = Vec::new();
    for id in command.get_array("cursors").into_iter().flatten() {
        if let Bson::Int64(n) = id {
            if state.cursors.remove(n).is_some() || state.find_cursors.remove(n).is_some() {
                killed.push(Bson::Int64(*n));
            } else {
                missing.push(Bson::Int64(*n));
            }
        }
    }
    doc! { "cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(stream: &mut TcpStream, id: i32, command: Document) -> Document {
        wire::write_request(stream, id, &command).expect("send");
        wire::read_reply(stream).expect("reply")
    }

    #[test]
    fn commands_without_a_driver() {
        let server = ChangeStreamServer::start().expect("start");
        let mut c = TcpStream::connect(server.address()).expect("connect");
        let hello = call(&mut c, 1, doc! { "hello": 1, "$db": "admin" });
        assert_eq!(hello.get_str("setName").ok(), Some("rs0"));
        assert_eq!(
            hello
                .get_array("hosts")
                .ok()
                .and_then(|h| h.first())
                .and_then(Bson::as_str),
            Some(server.address().to_string().as_str())
        );
        let unknown = call(&mut c, 2, doc! { "frobnicate": 1, "$db": "admin" });
        assert_eq!(unknown.get_i32("code").ok(), Some(59));
        let bad = call(
            &mut c,
            3,
            doc! { "aggregate": "c", "pipeline": [{ "$changeStream": { "nope": 1 } }], "cursor": {}, "$db": "d" },
        );
        assert_eq!(bad.get_i32("code").ok(), Some(40415));

        server.insert("d", "c", doc! { "_id": 1 });
        let opened = call(
            &mut c,
            4,
            doc! { "aggregate": "c", "pipeline": [{ "$changeStream": { "startAtOperationTime": Timestamp { time: 1, increment: 0 } } }], "cursor": {}, "$db": "d" },
        );
        let cursor = opened.get_document("cursor").expect("cursor");
        assert_eq!(cursor.get_array("firstBatch").map(Vec::len).ok(), Some(1));
        let id = cursor.get_i64("id").expect("int64 id");
        assert!(id != 0);
        let started = Instant::now();
        let idle = call(
            &mut c,
            5,
            doc! { "getMore": id, "collection": "c", "maxTimeMS": 150, "$db": "d" },
        );
        assert!(
            started.elapsed() >= Duration::from_millis(140),
            "an empty getMore waits maxTimeMS"
        );
        let next = idle.get_document("cursor").expect("cursor");
        assert!(next.get_array("nextBatch").expect("batch").is_empty());
        assert!(next.get_document("postBatchResumeToken").is_ok());
        let killed = call(
            &mut c,
            6,
            doc! { "killCursors": "c", "cursors": [id], "$db": "d" },
        );
        assert_eq!(
            killed.get_array("cursorsKilled").map(Vec::len).ok(),
            Some(1)
        );
        let gone = call(
            &mut c,
            7,
            doc! { "getMore": id, "collection": "c", "$db": "d" },
        );
        assert_eq!(gone.get_i32("code").ok(), Some(43));
        assert_eq!(
            call(&mut c, 8, doc! { "endSessions": [], "$db": "admin" })
                .get_f64("ok")
                .ok(),
            Some(1.0)
        );
        assert_eq!(server.commands().len(), 8, "the recorder saw every command");

        server.fail(FailPoint::error(
            "ping",
            1,
            91,
            "ShutdownInProgress",
            &["ResumableChangeStreamError"],
        ));
        let failed = call(&mut c, 9, doc! { "ping": 1, "$db": "admin" });
        assert_eq!(failed.get_i32("code").ok(), Some(91));
        assert_eq!(
            failed
                .get_array("errorLabels")
                .ok()
                .and_then(|l| l.first())
                .and_then(Bson::as_str),
            Some("ResumableChangeStreamError")
        );
        assert_eq!(
            call(&mut c, 10, doc! { "ping": 1, "$db": "admin" })
                .get_f64("ok")
                .ok(),
            Some(1.0)
        );
    }

    #[test]
    fn find_reads_ranges_now_and_at_a_snapshot_time() {
        let server = ChangeStreamServer::start().expect("start");
        server.insert_many(
            "d",
            "c",
            (0..10).map(|i| doc! { "_id": i, "v": 0 }).collect(),
        );
        let t0 = server.clock();
        server.update("d", "c", 3, doc! { "v": 1 }, &[]);
        server.delete("d", "c", 4);
        server.insert("d", "c", doc! { "_id": 20, "v": 2 });
        let mut c = TcpStream::connect(server.address()).expect("connect");
        let ids = |reply: &Document, key: &str| -> Vec<i32> {
            reply
                .get_document("cursor")
                .and_then(|c| c.get_array(key))
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_document()?.get_i32("_id").ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let at = Timestamp {
            time: t0.0,
            increment: t0.1,
        };
        let snap = call(
            &mut c,
            1,
            doc! { "find": "c", "filter": { "_id": { "$gte": 2, "$lt": 6 } }, "sort": { "_id": 1 },
            "batchSize": 2, "readConcern": { "level": "snapshot", "atClusterTime": at }, "$db": "d" },
        );
        assert_eq!(ids(&snap, "firstBatch"), vec![2, 3]);
        let cursor = snap.get_document("cursor").expect("cursor");
        assert_eq!(cursor.get_timestamp("atClusterTime").ok(), Some(at));
        let id = cursor.get_i64("id").expect("id");
        assert_ne!(id, 0);
        let more = call(
            &mut c,
            2,
            doc! { "getMore": id, "collection": "c", "$db": "d" },
        );
        assert_eq!(
            ids(&more, "nextBatch"),
            vec![4, 5],
            "deleted 4 is still there at t0"
        );
        let now = call(
            &mut c,
            3,
            doc! { "find": "c", "filter": { "_id": { "$gt": 2 } }, "projection": { "_id": 1 },
            "skip": 1, "limit": 3, "readConcern": { "level": "majority" }, "$db": "d" },
        );
        assert_eq!(
            ids(&now, "firstBatch"),
            vec![5, 6, 7],
            "4 is gone now, 3 skipped"
        );
        let last = call(
            &mut c,
            4,
            doc! { "find": "c", "sort": { "_id": -1 }, "limit": 1, "readConcern": { "level": "snapshot" }, "$db": "d" },
        );
        assert_eq!(ids(&last, "firstBatch"), vec![20]);
        let picked = last
            .get_document("cursor")
            .and_then(|c| c.get_timestamp("atClusterTime"))
            .expect("the server picks the snapshot time");
        assert_eq!((picked.time, picked.increment), server.clock());
        let count = call(&mut c, 5, doc! { "count": "c", "$db": "d" });
        assert_eq!(count.get_i64("n").ok(), Some(10));
        let stats = call(&mut c, 6, doc! { "collStats": "c", "$db": "d" });
        assert_eq!(stats.get_i64("count").ok(), Some(10));
        assert!(stats.get_i64("avgObjSize").expect("avgObjSize") > 0);
        assert_eq!(server.documents_at("d", "c", t0).len(), 10);
        assert_eq!(
            server
                .documents("d", "c")
                .iter()
                .find(|d| d.get_i32("_id").ok() == Some(3))
                .and_then(|d| d.get_i32("v").ok()),
            Some(1)
        );
        server.truncate_history(server.clock());
        let old = call(
            &mut c,
            7,
            doc! { "find": "c", "readConcern": { "level": "snapshot", "atClusterTime": at }, "$db": "d" },
        );
        assert_eq!(old.get_i32("code").ok(), Some(239));
        let bad = call(
            &mut c,
            8,
            doc! { "find": "c", "filter": { "v": 1 }, "$db": "d" },
        );
        assert_eq!(bad.get_i32("code").ok(), Some(2));
    }

    #[test]
    fn a_server_without_snapshot_reads_refuses_them_like_mongodb_4() {
        let server = ChangeStreamServer::start_with(ServerOptions {
            snapshot_reads: false,
            ..ServerOptions::default()
        })
        .expect("start");
        let mut c = TcpStream::connect(server.address()).expect("connect");
        let refused = call(
            &mut c,
            1,
            doc! { "find": "c", "readConcern": { "level": "snapshot" }, "$db": "d" },
        );
        assert_eq!(refused.get_i32("code").ok(), Some(72));
        let majority = call(
            &mut c,
            2,
            doc! { "find": "c", "readConcern": { "level": "majority" }, "$db": "d" },
        );
        assert_eq!(majority.get_f64("ok").ok(), Some(1.0));
    }

    #[test]
    fn the_log_refuses_events_out_of_stream_order() {
        let server = ChangeStreamServer::start().expect("start");
        let first = server.insert("d", "c", doc! { "_id": 1 });
        assert!(server.push(first).is_err(), "the same token again");
        assert!(server.push(doc! { "_id": { "_data": "zz" } }).is_err());
        server.truncate_history(server.clock());
        assert_eq!(server.log_len(), 1);
    }
}
