//! A re-snapshot (`changeflowSnapshotReset` then the snapshot's inserts, all at one time) leaves
//! in document state exactly the difference between the old state and the snapshot, on every
//! worker.

use std::sync::{Arc, Mutex};

use changeflow_core::synthetic::{self, Origin};
use changeflow_core::{ChangeEvent, ClusterTime, Document, Namespace};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sources::memory::from_events;

fn doc(id: i32, v: i64) -> Document {
    Document::from_bytes(bson::rawdoc! { "_id": id, "v": v }.into_bytes()).expect("a document")
}

#[test]
fn a_reset_and_a_snapshot_at_one_time_emit_only_the_differences_on_every_worker() {
    let ns = Namespace::new("shop", Some("orders"));
    let other = Namespace::new("shop", Some("other"));
    let (t1, t2) = (ClusterTime::new(10, 1), ClusterTime::new(20, 1));
    let mut events: Vec<ChangeEvent> = (0..40)
        .map(|i| synthetic::insert(&ns, &doc(i, 0), t1, Origin::Restore, i as u64))
        .collect::<Result<_, _>>()
        .expect("inserts");
    events.push(synthetic::insert(&other, &doc(1, 0), t1, Origin::Restore, 99).expect("insert"));
    // The re-snapshot: 0..40 without 5 and 6, with 7 and 8 changed, plus 100.
    events.push(synthetic::reset(&ns, t2, Origin::Snapshot).expect("reset"));
    let snapshot = (0..40)
        .filter(|i| *i != 5 && *i != 6)
        .map(|i| doc(i, if i == 7 || i == 8 { 1 } else { 0 }))
        .chain([doc(100, 0)]);
    for (seq, d) in snapshot.enumerate() {
        events.push(synthetic::insert(&ns, &d, t2, Origin::Snapshot, seq as u64).expect("insert"));
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    timely::execute(timely::Config::process(3), move |worker| {
        let (events, sink) = (events.clone(), sink.clone());
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            document_state(from_events(scope, events), DocumentStats::new()).inspect(
                move |((key, d), time, diff)| {
                    let v = d.get("v").ok().flatten().and_then(|v| v.as_i64());
                    sink.lock()
                        .expect("lock")
                        .push((key.to_string(), v, *time, *diff))
                },
            );
        });
    })
    .expect("run");
    let mut at_t2: Vec<_> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(.., t, _)| *t == t2)
        .map(|(k, v, _, d)| (k.clone(), *v, *d))
        .collect();
    at_t2.sort();
    assert_eq!(
        at_t2,
        vec![
            ("shop.orders/100".to_string(), Some(0), 1),
            ("shop.orders/5".to_string(), Some(0), -1),
            ("shop.orders/6".to_string(), Some(0), -1),
            ("shop.orders/7".to_string(), Some(0), -1),
            ("shop.orders/7".to_string(), Some(1), 1),
            ("shop.orders/8".to_string(), Some(0), -1),
            ("shop.orders/8".to_string(), Some(1), 1),
        ],
        "only the differences, and nothing of the other namespace"
    );
}
