//! Property test: document state at every closed time equals the sequential reference model
//! applied to every event up to that time, byte for byte.
//!
//! Random streams over a few `_id`s include inserts, replaces, deletes, updates with dotted
//! paths, array index sets and appends, removals, truncations, disambiguated numeric field names,
//! several events (a transaction) at one cluster time updating the same document, updates with
//! and without `fullDocument`, a namespace drop, and a rename to another collection (replacing
//! what an earlier rename left there), possibly inside a transaction that also writes, then
//! deletes of the renamed documents (with two workers: they must be where the delete is routed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bson::{Bson, Document as BsonDoc, doc};
use changeflow_core::{ChangeEvent, ClusterTime};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sources::memory::from_events;
use changeflow_testkit::reference::{ReferenceModel, apply_update_description};
use proptest::prelude::*;

use crate::support::{DocUpdates, state_at};

/// One generated step: what to do to which document.
#[derive(Clone, Debug)]
enum Step {
    Write {
        id: i32,
        seed: u32,
    },
    Update {
        id: i32,
        kind: u8,
        value: i32,
        with_full_document: bool,
    },
    Delete {
        id: i32,
    },
    Drop,
    /// `shop.orders` renamed to `shop.archive`.
    Rename,
    /// A delete in `shop.archive` (of a document an earlier rename moved there).
    DeleteArchived {
        id: i32,
    },
}

fn steps() -> impl Strategy<Value = Vec<(Step, bool)>> {
    let step = prop_oneof![
        3 => (0..4i32, any::<u32>()).prop_map(|(id, seed)| Step::Write { id, seed }),
        6 => (0..4i32, 0..9u8, -3..40i32, any::<bool>()).prop_map(|(id, kind, value, with_full_document)| Step::Update { id, kind, value, with_full_document }),
        2 => (0..4i32).prop_map(|id| Step::Delete { id }),
        1 => Just(Step::Drop),
        1 => Just(Step::Rename),
        1 => (0..4i32).prop_map(|id| Step::DeleteArchived { id }),
    ];
    // The bool says whether the step shares the previous step's cluster time (a transaction).
    prop::collection::vec((step, prop::bool::weighted(0.35)), 1..40)
}

fn new_document(id: i32, seed: u32) -> BsonDoc {
    let len = (seed % 4) as i32;
    doc! { "_id": id, "a": (seed % 100) as i32, "s": format!("s{seed}"), "arr": (0..len).map(Bson::Int32).collect::<Vec<_>>(), "sub": { "x": 1, "0": "zero" } }
}

/// An `updateDescription` for `current`, valid for it (paths exist where they must).
fn delta(current: &BsonDoc, kind: u8, value: i32) -> BsonDoc {
    let len = current.get_array("arr").map(|a| a.len()).unwrap_or(0) as i32;
    let empty = || Vec::<Bson>::new();
    match kind {
        0 => {
            doc! { "updatedFields": { "a": value }, "removedFields": empty(), "truncatedArrays": empty() }
        }
        1 => {
            doc! { "updatedFields": { "sub.x": value, "new.deep.path": value }, "removedFields": empty(), "truncatedArrays": empty() }
        }
        2 if len > 0 => {
            doc! { "updatedFields": { format!("arr.{}", value.rem_euclid(len)): value }, "removedFields": empty(), "truncatedArrays": empty() }
        }
        3 => {
            doc! { "updatedFields": { format!("arr.{len}"): value }, "removedFields": empty(), "truncatedArrays": empty() }
        }
        4 if len > 0 => {
            doc! { "updatedFields": {}, "removedFields": empty(), "truncatedArrays": [{ "field": "arr", "newSize": value.rem_euclid(len) }] }
        }
        5 => {
            doc! { "updatedFields": {}, "removedFields": ["s", "sub.x"], "truncatedArrays": empty() }
        }
        6 => {
            doc! { "updatedFields": { "sub.0": value }, "removedFields": empty(), "truncatedArrays": empty(), "disambiguatedPaths": { "sub.0": ["sub", "0"] } }
        }
        7 if len > 1 => {
            doc! { "updatedFields": { "arr.0": value }, "removedFields": empty(), "truncatedArrays": [{ "field": "arr", "newSize": 1 }] }
        }
        _ => {
            doc! { "updatedFields": { "s": format!("v{value}") }, "removedFields": empty(), "truncatedArrays": empty() }
        }
    }
}

/// Turns steps into a valid change stream (events only touch live documents where required).
fn events(steps: &[(Step, bool)]) -> Vec<BsonDoc> {
    let mut model = ReferenceModel::new();
    let mut out = Vec::new();
    let (mut t, mut seq) = (100u32, 0u32);
    for (step, same_time) in steps {
        if !same_time || out.is_empty() {
            t += 1;
        }
        seq += 1;
        let header_in = |coll: &str, op: &str, id: Option<i32>| {
            let mut d = doc! {
                "_id": { "_data": format!("82{t:08X}{:08X}2B{seq:08X}04", 1) },
                "operationType": op,
                "clusterTime": bson::Timestamp { time: t, increment: 1 },
                "ns": { "db": "shop", "coll": coll },
            };
            if let Some(id) = id {
                d.insert("documentKey", doc! { "_id": id });
            }
            d
        };
        let header = |op: &str, id: Option<i32>| header_in("orders", op, id);
        let event = match step {
            Step::Write { id, seed } => {
                let live = model.get("shop.orders", &Bson::Int32(*id)).is_some();
                let mut e = header(if live { "replace" } else { "insert" }, Some(*id));
                e.insert("fullDocument", new_document(*id, *seed));
                e
            }
            Step::Update {
                id,
                kind,
                value,
                with_full_document,
            } => {
                let Some(current) = model.get("shop.orders", &Bson::Int32(*id)).cloned() else {
                    continue;
                };
                let description = delta(&current, *kind, *value);
                let mut e = header("update", Some(*id));
                if *with_full_document {
                    e.insert(
                        "fullDocument",
                        apply_update_description(&current, &description).expect("valid delta"),
                    );
                }
                e.insert("updateDescription", description);
                e
            }
            Step::Delete { id } => {
                if model.get("shop.orders", &Bson::Int32(*id)).is_none() {
                    continue;
                }
                header("delete", Some(*id))
            }
            Step::Drop => header("drop", None),
            Step::DeleteArchived { id } => {
                if model.get("shop.archive", &Bson::Int32(*id)).is_none() {
                    continue;
                }
                header_in("archive", "delete", Some(*id))
            }
            Step::Rename => {
                let mut e = header("rename", None);
                e.insert("to", doc! { "db": "shop", "coll": "archive" });
                e
            }
        };
        model.apply(&event).expect("reference applies");
        out.push(event);
    }
    out
}

type Updates = DocUpdates;

fn run_document_state(events: Vec<ChangeEvent>, workers: usize) -> Updates {
    let seen: Arc<Mutex<Updates>> = Arc::default();
    let sink = Arc::clone(&seen);
    let config = timely::Config::process(workers);
    timely::execute(config, move |worker| {
        let sink = Arc::clone(&sink);
        let events = events.clone();
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            document_state(from_events(scope, events), DocumentStats::new())
                .inspect(move |update| sink.lock().expect("lock").push(update.clone()));
        });
    })
    .expect("timely runs")
    .join();
    Arc::try_unwrap(seen)
        .expect("workers done")
        .into_inner()
        .expect("lock")
}

fn check(steps: &[(Step, bool)], workers: usize) {
    let events = events(steps);
    let decoded: Vec<ChangeEvent> = events
        .iter()
        .map(|e| ChangeEvent::from_bson(e.to_vec().expect("encode")).expect("decode"))
        .collect();
    let updates = run_document_state(decoded, workers);
    let mut model = ReferenceModel::new();
    let mut i = 0;
    while i < events.len() {
        let time = events[i].get_timestamp("clusterTime").expect("time");
        while i < events.len() && events[i].get_timestamp("clusterTime").expect("time") == time {
            model.apply(&events[i]).expect("reference");
            i += 1;
        }
        let expected: BTreeMap<(String, String), Vec<u8>> = model
            .documents()
            .iter()
            .map(|(k, d)| (k.clone(), d.to_vec().expect("encode")))
            .collect();
        let actual = state_at(&updates, ClusterTime::from(time));
        assert_eq!(actual, expected, "document state differs at {time:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn document_state_matches_the_reference_at_every_time(steps in steps()) {
        check(&steps, 1);
    }

    #[test]
    fn two_workers_give_the_same_document_state(steps in steps()) {
        check(&steps, 2);
    }
}

#[test]
fn transaction_updating_one_document_three_times_emits_one_net_change() {
    let steps = vec![
        (Step::Write { id: 1, seed: 7 }, false),
        (
            Step::Update {
                id: 1,
                kind: 0,
                value: 5,
                with_full_document: false,
            },
            false,
        ),
        (
            Step::Update {
                id: 1,
                kind: 3,
                value: 6,
                with_full_document: false,
            },
            true,
        ),
        (
            Step::Update {
                id: 1,
                kind: 5,
                value: 0,
                with_full_document: false,
            },
            true,
        ),
    ];
    check(&steps, 1);
    let events = events(&steps);
    let decoded = events
        .iter()
        .map(|e| ChangeEvent::from_bson(e.to_vec().expect("encode")).expect("decode"))
        .collect();
    let updates = run_document_state(decoded, 1);
    let at_txn: Vec<_> = updates
        .iter()
        .filter(|(_, t, _)| t.seconds() == 102)
        .collect();
    assert_eq!(
        at_txn.len(),
        2,
        "one retraction and one insertion for the whole transaction: {at_txn:?}"
    );
}

/// With several workers, a renamed document must stay where later events about it are routed.
#[test]
fn renamed_documents_can_be_deleted_with_two_workers() {
    let mut steps: Vec<(Step, bool)> = (0..8)
        .map(|id| (Step::Write { id, seed: 1 }, false))
        .collect();
    steps.push((Step::Rename, false));
    steps.extend((0..8).map(|id| (Step::DeleteArchived { id }, false)));
    check(&steps, 2);
}
