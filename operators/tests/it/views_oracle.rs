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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_closed_time_equals_a_batch_recomputation() {
    let lines: Vec<String> = OrdersWorkload::new(OrdersConfig {
        seed: 5,
        events: 1500,
        txn_fraction: 0.3,
        full_document_on_update: 0.3,
        ..OrdersConfig::default()
    })
    .collect();
    let events: Vec<ChangeEvent> = lines
        .iter()
        .map(|l| ChangeEvent::from_json(l.as_bytes()).expect("decode"))
        .collect();
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
