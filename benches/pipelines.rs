//! Aggregation pipelines against the hand-written views doing the same work, in the same run.
//!
//! ```text
//! cargo bench --bench pipelines                       # 1M events, best of 3
//! cargo bench --bench pipelines -- --events 200000 --runs 5
//! ```
//!
//! Events are generated (the orders workload) and decoded once, then each variant runs its own
//! dataflow over the same in-memory events: memory source → document state → view. So the
//! figures compare the views, not the parsing.
//!
//! * **hand-written V1**: `GroupBy` per region: count and sum of amount.
//! * **pipeline V1**: `[{$group: {_id: "$region", orders: {$sum: 1}, amount: {$sum: "$amount"}}}]`.
//! * **pipeline unwind**: `[{$unwind: "$items"}, {$group: {_id: "$items.sku", qty: {$sum: "$items.qty"}}}]`.
//! * **document state only**: the common part, for reference.
//!
//! Reported: events/s (best of `--runs`) and each pipeline's ratio to the hand-written V1.

use std::time::Instant;

use changeflow::core::{ChangeEvent, ClusterTime};
use changeflow::jobs::orders_by_region::v1_definition;
use changeflow::operators::documents::{DocumentStats, document_state};
use changeflow::operators::pipeline::compile::PipelineView;
use changeflow::sources::memory::from_events;
use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[derive(Clone, Copy)]
enum Variant {
    DocumentState,
    HandWritten,
    Pipeline(&'static str),
}

/// Runs one variant to completion and returns the seconds it took.
fn run(events: &[ChangeEvent], variant: Variant) -> f64 {
    let events = events.to_vec();
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let documents = document_state(from_events(scope, events), DocumentStats::new());
            match variant {
                Variant::DocumentState => documents.probe().0,
                Variant::HandWritten => v1_definition().build(documents).probe().0,
                Variant::Pipeline(text) => {
                    PipelineView::from_json("shop.orders", text)
                        .expect("pipeline")
                        .build(documents)
                        .probe()
                        .0
                }
            }
        });
        while !probe.done() {
            worker.step();
        }
    });
    started.elapsed().as_secs_f64()
}

fn main() {
    let events: usize = arg("--events")
        .and_then(|e| e.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(3);
    let decoded: Vec<ChangeEvent> = OrdersWorkload::new(OrdersConfig {
        seed: 1,
        events,
        ..OrdersConfig::default()
    })
    .map(|line| ChangeEvent::from_json(line.as_bytes()).expect("generated events decode"))
    .collect();
    let variants = [
        ("document state only", Variant::DocumentState),
        ("hand-written V1", Variant::HandWritten),
        (
            "pipeline V1",
            Variant::Pipeline(
                r#"[{"$group": {"_id": "$region", "orders": {"$sum": 1}, "amount": {"$sum": "$amount"}}}]"#,
            ),
        ),
        (
            "pipeline $unwind + $group by sku",
            Variant::Pipeline(
                r#"[{"$unwind": "$items"}, {"$group": {"_id": "$items.sku", "qty": {"$sum": "$items.qty"}}}]"#,
            ),
        ),
    ];
    println!("{events} events in memory, one worker, best of {runs} runs");
    let mut baseline = None;
    for (name, variant) in variants {
        let best = (0..runs)
            .map(|_| run(&decoded, variant))
            .fold(f64::INFINITY, f64::min);
        let rate = events as f64 / best;
        if matches!(variant, Variant::HandWritten) {
            baseline = Some(rate);
        }
        let ratio = baseline
            .filter(|_| matches!(variant, Variant::Pipeline(_)))
            .map_or(String::new(), |b| {
                format!("   {:.2}x hand-written V1", rate / b)
            });
        println!("{name:<34} {rate:>12.0} events/s{ratio}");
    }
}
