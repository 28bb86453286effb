//! Group-by views at every closed time equal a batch recomputation over the reference model's
//! state at that time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use changeflow_core::{ChangeEvent, ClusterTime};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_operators::value::{Value, ValueType};
use changeflow_operators::views::{GroupBy, Row};
use changeflow_sources::memory::from_events;
use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
use changeflow_testkit::reference::ReferenceModel;

fn definition() -> GroupBy {
    GroupBy::new("shop.orders")
        .key("region", "region", ValueType::String)
        .count("orders")
        .sum("amount", "amount", ValueType::Double)
        .min("min_customer", "customer_id", ValueType::Int64)
        .max("max_customer", "customer_id", ValueType::Int64)
        .avg("avg_amount", "amount")
        .sum("customers", "customer_id", ValueType::Int64)
}

/// The same view computed directly from a set of live documents.
fn batch(model: &ReferenceModel) -> BTreeMap<String, (i64, f64, i64, i64, f64, i64)> {
    let mut groups: BTreeMap<String, Vec<(f64, i64)>> = BTreeMap::new();
    for ((ns, _), doc) in model.documents() {
        if ns != "shop.orders" {
            continue;
        }
        let region = doc.get_str("region").expect("region").to_string();
        let amount = doc.get_f64("amount").expect("amount");
        let customer = doc.get_i32("customer_id").map(i64::from).expect("customer");
        groups.entry(region).or_default().push((amount, customer));
    }
    groups
        .into_iter()
        .map(|(region, rows)| {
            let n = rows.len() as i64;
            let amounts: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let sum = changeflow_testkit::reference::fsum(&amounts);
            let min = rows.iter().map(|r| r.1).min().expect("non-empty");
            let max = rows.iter().map(|r| r.1).max().expect("non-empty");
            let customers = rows.iter().map(|r| r.1).sum();
            (region, (n, sum, min, max, sum / n as f64, customers))
        })
        .collect()
}

/// A generated orders workload (30% of events in transactions): its lines and their events.
fn workload(seed: u64, events: usize) -> (Vec<String>, Vec<ChangeEvent>) {
    let lines: Vec<String> = OrdersWorkload::new(OrdersConfig {
        seed,
        events,
        txn_fraction: 0.3,
        full_document_on_update: 0.3,
        ..OrdersConfig::default()
    })
    .collect();
    let decoded = lines
        .iter()
        .map(|l| ChangeEvent::from_json(l.as_bytes()).expect("decode"))
        .collect();
    (lines, decoded)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_closed_time_equals_a_batch_recomputation() {
    let (lines, events) = workload(5, 1500);
    let updates: Arc<Mutex<Vec<(Row, ClusterTime, isize)>>> = Arc::default();
    let sink = Arc::clone(&updates);
    let input = events.clone();
    timely::execute_directly(move |worker| {
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            let docs = document_state(from_events(scope, input), DocumentStats::new());
            definition()
                .build(docs)
                .inspect(move |u| sink.lock().expect("lock").push(u.clone()));
        });
    });
    let updates = updates.lock().expect("lock").clone();
    let mut model = ReferenceModel::new();
    let mut view: BTreeMap<Row, isize> = BTreeMap::new();
    let mut checked = 0;
    let mut i = 0;
    while i < lines.len() {
        let time = events[i].cluster_time();
        while i < lines.len() && events[i].cluster_time() == time {
            model.apply_json_line(&lines[i]).expect("reference");
            i += 1;
        }
        for (row, _, diff) in updates.iter().filter(|(_, t, _)| *t == time) {
            *view.entry(row.clone()).or_default() += diff;
        }
        view.retain(|_, n| *n != 0);
        let expected = batch(&model);
        assert_eq!(view.len(), expected.len(), "groups at {time}");
        for (row, n) in &view {
            assert_eq!(*n, 1, "row multiplicity at {time}");
            let [
                Value::String(region),
                Value::Int(count),
                Value::Double(sum),
                Value::Int(min),
                Value::Int(max),
                Value::Double(avg),
                Value::Int(customers),
            ] = row.as_slice()
            else {
                panic!("unexpected row shape {row:?}");
            };
            let e = expected[&**region];
            assert_eq!(
                (*count, *min, *max, *customers),
                (e.0, e.2, e.3, e.5),
                "{region} at {time}"
            );
            assert!(
                close(sum.0, e.1) && close(avg.0, e.4),
                "{region} sums at {time}: {} vs {}",
                sum.0,
                e.1
            );
        }
        checked += 1;
    }
    assert!(checked > 1000, "checked {checked} closed times");
}

/// Orders per customer, computed directly from the reference model's state.
fn batch_per_customer(model: &ReferenceModel) -> Vec<(Row, isize)> {
    let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
    for ((ns, _), doc) in model.documents() {
        if ns == "shop.orders" {
            let customer = doc.get_i32("customer_id").map(i64::from).expect("customer");
            *counts.entry(customer).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(c, n)| (vec![Value::Int(c), Value::Int(n)], 1))
        .collect()
}

/// `materialize` keeps several views in their handles in place (one worker): after every closed
/// time, each handle's snapshot equals a batch recomputation over the reference model at that
/// time, including a view with no keys and a view of a namespace with no documents.
#[test]
fn materialized_handles_equal_a_batch_recomputation_at_every_closed_time() {
    use changeflow_operators::handle::ViewHandle;
    use changeflow_operators::views::materialize;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::{Input, Probe};

    let (lines, events) = workload(11, 1200);
    let per_customer = GroupBy::new("shop.orders")
        .key("customer_id", "customer_id", ValueType::Int64)
        .count("orders");
    let total = GroupBy::new("shop.orders").count("orders").sum(
        "customers",
        "customer_id",
        ValueType::Int64,
    );
    let elsewhere = GroupBy::new("shop.other")
        .key("region", "region", ValueType::String)
        .count("n");
    let handles: Vec<ViewHandle<Row>> = (0..4).map(|_| ViewHandle::new()).collect();
    let views = vec![
        (definition(), handles[0].clone()),
        (per_customer, handles[1].clone()),
        (total, handles[2].clone()),
        (elsewhere, handles[3].clone()),
    ];
    timely::execute_directly(move |worker| {
        let mut input: InputHandle<
            ClusterTime,
            CapacityContainerBuilder<Vec<(ChangeEvent, ClusterTime)>>,
        > = InputHandle::new();
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let docs = document_state(scope.input_from(&mut input), DocumentStats::new());
            materialize(docs, &views).probe().0
        });
        let mut model = ReferenceModel::new();
        let mut checked = 0;
        let mut i = 0;
        while i < lines.len() {
            let time = events[i].cluster_time();
            input.advance_to(time);
            while i < lines.len() && events[i].cluster_time() == time {
                model.apply_json_line(&lines[i]).expect("reference");
                input.send((events[i].clone(), time));
                i += 1;
            }
            let next = events.get(i).map_or(ClusterTime::MAX, |e| e.cluster_time());
            input.advance_to(next);
            while probe.less_than(&next) {
                worker.step();
            }
            let [regions, customers, total, elsewhere] =
                [0, 1, 2, 3].map(|h| views[h].1.snapshot());
            let expected = batch(&model);
            assert_eq!(regions.rows.len(), expected.len(), "groups at {time}");
            for (row, n) in &regions.rows {
                assert_eq!(*n, 1, "row multiplicity at {time}");
                let (Value::String(region), Value::Int(count)) = (&row[0], &row[1]) else {
                    panic!("unexpected row shape {row:?}");
                };
                let e = expected[&**region];
                assert_eq!(
                    (
                        Value::Int(e.0),
                        Value::Int(e.2),
                        Value::Int(e.3),
                        Value::Int(e.5)
                    ),
                    (
                        Value::Int(*count),
                        row[3].clone(),
                        row[4].clone(),
                        row[6].clone()
                    ),
                    "{region} at {time}"
                );
                let (Value::Double(sum), Value::Double(avg)) = (&row[2], &row[5]) else {
                    panic!("unexpected row shape {row:?}");
                };
                assert!(
                    close(sum.0, e.1) && close(avg.0, e.4),
                    "{region} sums at {time}"
                );
            }
            assert_eq!(
                customers.rows,
                batch_per_customer(&model),
                "customers at {time}"
            );
            let live: i64 = expected.values().map(|e| e.0).sum();
            let ids: i64 = expected.values().map(|e| e.5).sum();
            let expected_total = if live == 0 {
                vec![]
            } else {
                vec![(vec![Value::Int(live), Value::Int(ids)], 1)]
            };
            assert_eq!(total.rows, expected_total, "total at {time}");
            assert!(elsewhere.rows.is_empty() && elsewhere.time.is_none());
            assert!(
                regions.time.is_some_and(|t| t <= time),
                "handle time at {time}"
            );
            assert!(
                views[0].1.frontier().is_none_or(|f| f > time),
                "frontier past {time}"
            );
            checked += 1;
        }
        input.close();
        while worker.step() {}
        assert!(views[0].1.snapshot().complete, "complete at the end");
        assert!(checked > 800, "checked {checked} closed times");
    });
}

/// An event line for the small in-place tests below.
fn line(t: u32, op: &str, id: i32, body: &str) -> ChangeEvent {
    let json = format!(
        r#"{{"_id": {{"_data": "82{t:08X}000000012B"}}, "operationType": "{op}", "clusterTime": {{"$timestamp": {{"t": {t}, "i": 1}}}}, "ns": {{"db": "s", "coll": "o"}}, "documentKey": {{"_id": {id}}}{body}}}"#
    );
    ChangeEvent::from_json(json.as_bytes()).expect("event")
}

/// Views kept in place: an integer sum leaving the `i64` range is counted once, however often
/// the handle is read; the handle's time is the last time the view's documents changed, not a
/// later update of a field it does not read.
#[test]
fn in_place_views_count_overflows_once_and_keep_the_time_of_their_last_change() {
    use changeflow_operators::handle::ViewHandle;
    use changeflow_operators::views::materialize;

    let big = i64::MAX / 2 + 1;
    let events = vec![
        line(
            1,
            "insert",
            1,
            &format!(r#", "fullDocument": {{"_id": 1, "n": {{"$numberLong": "{big}"}}, "x": 1}}"#),
        ),
        line(
            2,
            "insert",
            2,
            &format!(r#", "fullDocument": {{"_id": 2, "n": {{"$numberLong": "{big}"}}, "x": 1}}"#),
        ),
        line(
            3,
            "update",
            2,
            r#", "updateDescription": {"updatedFields": {"x": 2}, "removedFields": []}"#,
        ),
    ];
    let total = GroupBy::new("s.o")
        .count("docs")
        .sum("n", "n", ValueType::Int64);
    let stats = total.stats();
    let handle = ViewHandle::<Row>::new();
    let views = vec![(total, handle.clone())];
    timely::execute_directly(move |worker| {
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            let docs = document_state(from_events(scope, events), DocumentStats::new());
            materialize(docs, &views);
        });
    });
    for _ in 0..3 {
        let snapshot = handle.snapshot();
        assert_eq!(snapshot.rows, vec![(vec![Value::Int(2), Value::Null], 1)]);
        assert_eq!(snapshot.time, Some(ClusterTime::new(2, 1)));
    }
    assert_eq!(stats.overflows(), 1);
}

/// A handle holds one view: keeping a second one in place in it is refused.
#[test]
#[should_panic(expected = "a ViewHandle holds one view")]
fn a_handle_keeps_one_view_in_place() {
    use changeflow_operators::handle::ViewHandle;
    use changeflow_operators::views::materialize;

    let view = GroupBy::new("s.o").count("docs");
    let handle = ViewHandle::<Row>::new();
    let views = vec![(view.clone(), handle.clone()), (view, handle)];
    timely::execute_directly(move |worker| {
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            let docs = document_state(from_events(scope, Vec::new()), DocumentStats::new());
            materialize(docs, &views);
        });
    });
}
