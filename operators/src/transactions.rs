//! Transactions: a change stream's multi-document transactions as records, plus a metadata
//! stream of their boundaries.
//!
//! ```text
//!                          ┌─ no lsid/txnNumber ─────────────────────────────▶ plain events
//!   EventStream ── split ──┤
//!                          └─ in a transaction ─▶ exchange by (lsid, txnNumber)
//!                                                   │
//!                                       [Transactions] stash by time; when the frontier
//!                                                   │  passes t, one record per id at t
//!                                                   ├──────────────────────────▶ Transaction
//!                                                   └─ BEGIN / END ───────────▶ TxnMetadata
//! ```
//!
//! Sources emit every event of a transaction at one time, its commit time (the clusterTime of
//! its last event; see `changeflow_sources::commit_time`). So once the input frontier passes
//! `t`, the events at `t` with one `(lsid, txnNumber)` are that whole transaction.
//!
//! # Invariants
//!
//! * A [`Transaction`] is emitted at its commit time, once, after every event of that time has
//!   arrived; its events are in resume-token order (stream order).
//! * Events outside transactions pass through unchanged, at their own times.
//! * For every transaction the metadata stream carries a `BEGIN` and then an `END` record (with
//!   the event count and the count per namespace, like Debezium's transaction topic), both at
//!   the commit time: changeflow releases a transaction only once it is complete, so its
//!   beginning is reported when its end is.
//!
//! # Progress tracking
//!
//! Like the other operators: records are stashed by time with one capability at the least
//! stashed time, and a time is processed once the input frontier has passed it.
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_operators::transactions::transactions;
//! use std::sync::{Arc, Mutex};
//! use timely::dataflow::operators::Inspect;
//! let event = |t: u32, txn: &str| ChangeEvent::from_json(format!(r#"{{"_id": {{"_data": "82{t:08X}0000000104"}},
//!     "operationType": "delete", "clusterTime": {{"$timestamp": {{"t": {t}, "i": 0}}}},
//!     "ns": {{"db": "bank", "coll": "accounts"}}, "documentKey": {{"_id": {t}}}{txn}}}"#).as_bytes()).unwrap();
//! let txn = r#", "lsid": {"id": 1}, "txnNumber": 3"#;
//! let events = vec![event(1, txn), event(2, txn), event(3, "")];
//! let (txns, plain) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
//! let (t, p) = (txns.clone(), plain.clone());
//! timely::execute_directly(move |worker| {
//!     worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         let streams = transactions(changeflow_sources::memory::from_events(scope, events));
//!         streams.transactions.inspect(move |(txn, time)| t.lock().unwrap().push((txn.clone(), *time)));
//!         streams.plain.inspect(move |_| *p.lock().unwrap() += 1);
//!     });
//! });
//! let txns = txns.lock().unwrap();
//! assert_eq!(txns.len(), 1);
//! let (txn, time) = &txns[0];
//! assert_eq!((txn.id.txn_number, txn.events.len(), *time), (3, 2, ClusterTime::new(2, 0)));
//! assert_eq!(txn.operations["delete"], 2);
//! assert_eq!(*plain.lock().unwrap(), 1);
//! ```

use std::collections::BTreeMap;

use changeflow_core::{ChangeEvent, ClusterTime, EventStream, TxnId};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Filter, Map};

use crate::documents::hash_of;
use crate::stash::TimeStash;

/// One multi-document transaction, whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// `lsid` and `txnNumber`.
    pub id: TxnId,
    /// The clusterTime of its last event: the dataflow time it is emitted at.
    pub commit_time: ClusterTime,
    /// The clusterTime of its first event (earlier than `commit_time` when the transaction
    /// spans several oplog entries).
    pub first_time: ClusterTime,
    /// The `wallTime` of its last event, in milliseconds since the epoch, if the events carry it.
    pub wall_time: Option<i64>,
    /// Its events in stream order.
    pub events: Vec<ChangeEvent>,
    /// Events per namespace (`db.coll`), e.g. `{"bank.accounts": 2}`.
    pub namespaces: BTreeMap<String, u64>,
    /// Events per operation type, e.g. `{"update": 2}`.
    pub operations: BTreeMap<String, u64>,
}

impl Transaction {
    /// Builds the record from the events of one transaction, in stream order, emitted at
    /// `commit_time`. `None` if `events` is empty or its first event has no transaction id.
    ///
    /// ```
    /// use changeflow_core::{ChangeEvent, ClusterTime};
    /// use changeflow_operators::transactions::Transaction;
    /// let e = ChangeEvent::from_json(br#"{"_id": {"_data": "82000000070000000104"}, "operationType": "insert",
    ///     "clusterTime": {"$timestamp": {"t": 7, "i": 0}}, "ns": {"db": "a", "coll": "b"},
    ///     "documentKey": {"_id": 1}, "fullDocument": {"_id": 1}, "lsid": {"id": 1}, "txnNumber": 2}"#).unwrap();
    /// let txn = Transaction::from_events(vec![e], ClusterTime::new(7, 0)).unwrap();
    /// assert_eq!(txn.namespaces["a.b"], 1);
    /// assert_eq!(txn.len(), 1);
    /// ```
    pub fn from_events(events: Vec<ChangeEvent>, commit_time: ClusterTime) -> Option<Self> {
        let first = events.first()?;
        let id = first.txn()?.clone();
        let first_time = first.cluster_time();
        let wall_time = events.last().and_then(ChangeEvent::wall_time_millis);
        let mut namespaces = BTreeMap::new();
        let mut operations = BTreeMap::new();
        for event in &events {
            if let Some(ns) = event.namespace() {
                *namespaces.entry(ns.to_string()).or_insert(0) += 1;
            }
            *operations
                .entry(event.operation().as_str().to_string())
                .or_insert(0) += 1;
        }
        Some(Transaction {
            id,
            commit_time,
            first_time,
            wall_time,
            events,
            namespaces,
            operations,
        })
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it has no event (never true for a transaction built from a stream).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Its `BEGIN` and `END` metadata records.
    pub fn metadata(&self) -> [TxnMetadata; 2] {
        let begin = TxnMetadata {
            status: TxnStatus::Begin,
            id: self.id.clone(),
            commit_time: self.commit_time,
            first_time: self.first_time,
            wall_time: self.wall_time,
            event_count: 0,
            data_collections: BTreeMap::new(),
        };
        let end = TxnMetadata {
            status: TxnStatus::End,
            event_count: self.events.len() as u64,
            data_collections: self.namespaces.clone(),
            ..begin.clone()
        };
        [begin, end]
    }
}

/// Whether a metadata record opens or closes a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TxnStatus {
    /// The transaction's first record.
    Begin,
    /// The transaction's last record, with counts.
    End,
}

/// A transaction boundary, as in Debezium's transaction metadata topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMetadata {
    /// `BEGIN` or `END`.
    pub status: TxnStatus,
    /// `lsid` and `txnNumber`.
    pub id: TxnId,
    /// The transaction's commit time (the time both records are emitted at).
    pub commit_time: ClusterTime,
    /// The clusterTime of its first event.
    pub first_time: ClusterTime,
    /// `wallTime` of its last event (milliseconds).
    pub wall_time: Option<i64>,
    /// Events in the transaction (`END` only; 0 for `BEGIN`).
    pub event_count: u64,
    /// Events per namespace (`END` only).
    pub data_collections: BTreeMap<String, u64>,
}

impl TxnMetadata {
    /// The transaction's id as one string: the session id's `id` (a UUID, as hex) or, failing
    /// that, the whole `lsid` as canonical Extended JSON, then `:` and the `txnNumber`.
    ///
    /// ```
    /// use changeflow_core::{ChangeEvent, ClusterTime};
    /// use changeflow_operators::transactions::Transaction;
    /// let e = ChangeEvent::from_json(br#"{"_id": {"_data": "82000000070000000104"}, "operationType": "delete",
    ///     "clusterTime": {"$timestamp": {"t": 7, "i": 0}}, "ns": {"db": "a", "coll": "b"}, "documentKey": {"_id": 1},
    ///     "lsid": {"id": {"$uuid": "00112233-4455-6677-8899-aabbccddeeff"}}, "txnNumber": 2}"#).unwrap();
    /// let [begin, end] = Transaction::from_events(vec![e], ClusterTime::new(7, 0)).unwrap().metadata();
    /// assert_eq!(end.id_string(), "00112233-4455-6677-8899-aabbccddeeff:2");
    /// assert!(end.to_json().starts_with(r#"{"status":"END","id":"00112233-4455-6677-8899-aabbccddeeff:2""#));
    /// assert!(begin.to_json().contains(r#""event_count":0"#));
    /// ```
    pub fn id_string(&self) -> String {
        let raw = bson::RawDocument::from_bytes(self.id.lsid.as_bytes()).ok();
        let uuid = raw
            .and_then(|d| d.get_binary("id").ok())
            .filter(|b| b.bytes.len() == 16)
            .map(|b| {
                let h: String = b.bytes.iter().map(|x| format!("{x:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            });
        let session = uuid.unwrap_or_else(|| {
            let mut json = String::new();
            match raw {
                Some(d) => {
                    let _ = changeflow_core::extjson::write_document(d, true, &mut json);
                }
                None => json.push('?'),
            }
            json
        });
        format!("{session}:{}", self.id.txn_number)
    }

    /// One JSON line: `{"status", "id", "lsid", "txnNumber", "commit_time": {"t", "i"},
    /// "first_time": {"t", "i"}, "ts_ms", "event_count", "data_collections": [{"data_collection",
    /// "event_count"}]}` (the field names of Debezium's transaction topic where they exist).
    pub fn to_json(&self) -> String {
        let mut lsid = String::new();
        match bson::RawDocument::from_bytes(self.id.lsid.as_bytes()) {
            Ok(d) if changeflow_core::extjson::write_document(d, false, &mut lsid).is_ok() => {}
            _ => lsid = "null".into(),
        }
        let collections: Vec<String> = self
            .data_collections
            .iter()
            .map(|(ns, n)| {
                format!(
                    r#"{{"data_collection":{},"event_count":{n}}}"#,
                    json_string(ns)
                )
            })
            .collect();
        format!(
            r#"{{"status":"{}","id":{},"lsid":{lsid},"txnNumber":{},"commit_time":{{"t":{},"i":{}}},"first_time":{{"t":{},"i":{}}},"ts_ms":{},"event_count":{},"data_collections":[{}]}}"#,
            match self.status {
                TxnStatus::Begin => "BEGIN",
                TxnStatus::End => "END",
            },
            json_string(&self.id_string()),
            self.id.txn_number,
            self.commit_time.seconds(),
            self.commit_time.increment(),
            self.first_time.seconds(),
            self.first_time.increment(),
            self.wall_time.map_or("null".to_string(), |w| w.to_string()),
            self.event_count,
            collections.join(","),
        )
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A stream of records with their own times, like [`EventStream`].
pub type TimedStream<'scope, D> = Stream<'scope, ClusterTime, Vec<(D, ClusterTime)>>;

/// The outputs of [`transactions`].
pub struct Transactions<'scope> {
    /// One record per transaction, at its commit time.
    pub transactions: TimedStream<'scope, Transaction>,
    /// The events outside transactions, unchanged.
    pub plain: EventStream<'scope>,
    /// `BEGIN` / `END` records per transaction, at its commit time.
    pub metadata: TimedStream<'scope, TxnMetadata>,
}

/// Splits `events` into whole transactions, their metadata and the plain events (see the
/// module docs).
pub fn transactions(events: EventStream<'_>) -> Transactions<'_> {
    let plain = events.clone().filter(|(e, _)| e.txn().is_none());
    let grouped = events
        .filter(|(e, _)| e.txn().is_some())
        .unary_frontier::<CapacityContainerBuilder<Vec<(Transaction, ClusterTime)>>, _, _, _>(
            Exchange::new(|(e, _): &(ChangeEvent, ClusterTime)| e.txn().map_or(0, hash_of)),
            "Transactions",
            |_, _| {
                let mut stash: TimeStash<ChangeEvent> = TimeStash::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        stash.stash(&cap, 0, data.drain(..).map(|(e, t)| (t, e)));
                    });
                    let Some(closed) = stash.take_closed(frontier) else {
                        return;
                    };
                    let mut session = output.session(&closed.cap);
                    let mut records = closed.records;
                    for chunk in records.chunk_by_mut(|a, b| a.0 == b.0) {
                        let time = chunk[0].0;
                        // By id, then in stream order within each transaction.
                        chunk.sort_by(|a, b| a.1.txn().cmp(&b.1.txn()).then(a.1.cmp_token(&b.1)));
                        let mut events: Vec<ChangeEvent> =
                            chunk.iter().map(|(_, e)| e.clone()).collect();
                        while !events.is_empty() {
                            let split = events
                                .iter()
                                .position(|e| e.txn() != events[0].txn())
                                .unwrap_or(events.len());
                            let rest = events.split_off(split);
                            if let Some(txn) = Transaction::from_events(events, time) {
                                session.give((txn, time));
                            }
                            events = rest;
                        }
                    }
                    stash.recycle(records);
                }
            },
        );
    let metadata = grouped
        .clone()
        .flat_map(|(txn, time)| txn.metadata().map(|m| (m, time)));
    Transactions {
        transactions: grouped,
        plain,
        metadata,
    }
}
