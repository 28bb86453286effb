//! A view handle read concurrently, while two workers run, only ever shows the view exactly as
//! of a closed time: each snapshot equals the reference model's V1 over the events up to its
//! time, never a partial time (transactions included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use changeflow::core::{ChangeEvent, ClusterTime};
use changeflow::jobs::orders_by_region::v1_definition;
use changeflow::operators::documents::{DocumentStats, document_state};
use changeflow::operators::handle::{Snapshot, ViewHandle};
use changeflow::operators::value::Value;
use changeflow::operators::views::Row;
use changeflow::sources::reader::ReaderOptions;
use changeflow::sources::replay::{ReplayOptions, replay};
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::reference::ReferenceModel;

use crate::support::*;

#[test]
fn concurrent_snapshots_are_whole_closed_times() {
    let dir = scratch("handles");
    let lines = lines(OrdersConfig {
        seed: 41,
        events: 4000,
        txn_fraction: 0.4,
        full_document_on_update: 0.2,
        ..OrdersConfig::default()
    });
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");

    let mut replay_options = ReplayOptions::new(ReaderOptions::new(&input));
    replay_options.batch = 64; // many small batches: many closed times to observe
    let status = replay_options.status();
    let handle: ViewHandle<Row> = ViewHandle::new();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (handle, done) = (handle.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<Snapshot<Row>> = Vec::new();
            while !done.load(Ordering::Acquire) {
                let snapshot = handle.snapshot();
                if snapshot.time.is_some()
                    && seen.last().is_none_or(|last| last.time != snapshot.time)
                {
                    seen.push(snapshot);
                }
                std::thread::yield_now();
            }
            seen.push(handle.snapshot());
            seen
        })
    };
    let attach = handle.clone();
    changeflow::runtime::execute(2, move |worker| {
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let documents =
                document_state(replay(scope, replay_options.clone()), DocumentStats::new());
            let view = v1_definition().build(documents);
            attach.attach(view.clone());
            view.probe().0
        });
        changeflow::runtime::drive(worker, &probe, std::slice::from_ref(&status))
    })
    .expect("dataflow")
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .expect("no source error");
    done.store(true, Ordering::Release);
    let snapshots = reader.join().expect("reader");
    assert!(
        snapshots.len() >= 3,
        "observed {} snapshots",
        snapshots.len()
    );
    assert!(
        snapshots.last().is_some_and(|s| s.complete),
        "the last snapshot is final"
    );

    let events: Vec<ChangeEvent> = lines
        .iter()
        .map(|l| ChangeEvent::from_json(l.as_bytes()).expect("decode"))
        .collect();
    for snapshot in snapshots
        .iter()
        .step_by((snapshots.len() / 25).max(1))
        .chain(snapshots.last())
    {
        let time = snapshot.time.expect("time");
        let mut model = ReferenceModel::new();
        for (line, event) in lines.iter().zip(&events) {
            if event.cluster_time() <= time {
                model.apply_json_line(line).expect("reference");
            }
        }
        let expected = model.orders_by_region();
        let got: BTreeMap<String, (i64, f64)> = snapshot
            .rows
            .iter()
            .map(|(row, n)| {
                assert_eq!(*n, 1);
                match row.as_slice() {
                    [
                        Value::String(region),
                        Value::Int(orders),
                        Value::Double(amount),
                    ] => (region.to_string(), (*orders, amount.0)),
                    other => panic!("unexpected row {other:?}"),
                }
            })
            .collect();
        assert_v1_eq(&got, &expected);
    }
}
