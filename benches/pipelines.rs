//! Aggregation pipelines against the hand-written views doing the same work, in the same run.
//!
//! ```text
//! cargo bench --bench pipelines                       # 1M events, best of 3
//! cargo bench --bench pipelines -- --events 200000 --runs 5
//! cargo bench --bench pipelines -- --only "pipeline V1"   # one variant (and the baseline)
//! ```
//!
//! Events are generated (the orders workload) and decoded once, then each variant runs its own
//! dataflow over the same in-memory events: memory source (4096 events per batch, the frontier
//! advancing after each, as the replay source does) → document state → view. So the figures
//! compare the views, not the parsing.
//!
//! * **hand-written V1**: `GroupBy` per region: count and sum of amount.
//! * **pipeline V1**: `[{$group: {_id: "$region", orders: {$sum: 1}, amount: {$sum: "$amount"}}}]`.
//! * **pipeline unwind**: `[{$unwind: "$items"}, {$group: {_id: "$items.sku", qty: {$sum: "$items.qty"}}}]`.
//! * **pipeline $lookup**: orders joined with a changing `shop.customers` collection
//!   (`testkit::customers`: 5 000 customers, then one customer change per 20 orders events,
//!   merged by clusterTime), then grouped by the customer's tier:
//!   `[{$lookup: {from: "customers", localField: "customer_id", foreignField: "_id", as: "c"}},
//!   {$unwind: "$c"}, {$group: {_id: "$c.tier", orders: {$sum: 1}, amount: {$sum: "$amount"}}}]`.
//!   Its events/s count both collections' events.
//! * **document state only**: the common part, for reference.
//!
//! Reported: each round's rates, events/s (best of `--runs`), and each pipeline's ratio to the
//! hand-written V1: of the best rates, and the median of the rounds' own ratios.

changeflow::global_allocator!();

use std::time::Instant;

use changeflow::core::{ChangeEvent, ClusterTime};
use changeflow::jobs::orders_by_region::v1_definition;
use changeflow::operators::documents::{DocumentStats, document_state};
use changeflow::operators::pipeline::compile::PipelineView;
use changeflow::sources::memory::from_events_in_batches;
use changeflow_testkit::customers::{CustomersConfig, customer_events};
use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Events per source activation, as the replay source reads them: the frontier advances every
/// batch, so each view runs as it does on a stream (not as one batch load of the whole input).
const BATCH: usize = 4096;

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
            let documents = document_state(
                from_events_in_batches(scope, events, BATCH),
                DocumentStats::new(),
            );
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
    changeflow::runtime::keep_freed_memory();
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
    // The orders plus a customers collection changing over the same span, for the $lookup.
    let (first, last) = (
        decoded.first().map_or(0, |e| e.cluster_time().seconds()),
        decoded.last().map_or(0, |e| e.cluster_time().seconds()),
    );
    let mut with_customers = decoded.clone();
    with_customers.extend(
        customer_events(&CustomersConfig {
            seed: 1,
            customers: 5000,
            changes: events / 20,
            start_time: first,
            seconds: last.saturating_sub(first).max(1),
        })
        .iter()
        .map(|line| ChangeEvent::from_json(line.as_bytes()).expect("customer events decode")),
    );
    with_customers.sort_by_key(ChangeEvent::cluster_time);
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
        (
            "pipeline $lookup customers + $group",
            Variant::Pipeline(
                r#"[{"$lookup": {"from": "customers", "localField": "customer_id", "foreignField": "_id", "as": "c"}}, {"$unwind": "$c"}, {"$group": {"_id": "$c.tier", "orders": {"$sum": 1}, "amount": {"$sum": "$amount"}}}]"#,
            ),
        ),
    ];
    // `--only TEXT`: the variants whose name contains TEXT (plus the hand-written baseline).
    let only = arg("--only");
    let selected: Vec<(&str, Variant)> = variants
        .into_iter()
        .filter(|(name, variant)| {
            only.as_ref().is_none_or(|o| {
                name.contains(o.as_str()) || matches!(variant, Variant::HandWritten)
            })
        })
        .collect();
    println!(
        "{events} events in memory, one worker, best of {runs} rounds (each round runs every \
         variant once, so a slow spell of the machine hits all of them)"
    );
    let input_of = |name: &str| {
        if name.contains("$lookup") {
            &with_customers
        } else {
            &decoded
        }
    };
    let mut best = vec![f64::INFINITY; selected.len()];
    // Seconds per variant per round, for the per-round ratios.
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); selected.len()];
    for round in 0..runs {
        // Every other round runs the variants in reverse, so neither order's after-effects
        // (the allocator's state left by the previous variant) favour one of them.
        let mut order: Vec<usize> = (0..selected.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = format!("round {round}:");
        for i in order {
            let (name, variant) = &selected[i];
            let seconds = run(input_of(name), *variant);
            best[i] = best[i].min(seconds);
            rounds[i].push(seconds);
            line += &format!("  {name} {:.0}/s", input_of(name).len() as f64 / seconds);
        }
        println!("{line}");
    }
    let rates: Vec<f64> = selected
        .iter()
        .zip(&best)
        .map(|((name, _), seconds)| input_of(name).len() as f64 / seconds)
        .collect();
    let baseline = selected
        .iter()
        .zip(&rates)
        .find(|((_, v), _)| matches!(v, Variant::HandWritten))
        .map(|(_, rate)| *rate);
    let hand = selected
        .iter()
        .position(|(_, v)| matches!(v, Variant::HandWritten));
    for (i, ((name, variant), rate)) in selected.iter().zip(&rates).enumerate() {
        let ratio = baseline
            .filter(|_| matches!(variant, Variant::Pipeline(_)))
            .map_or(String::new(), |b| {
                // Each round's own ratio (same events, seconds apart), then their median: less
                // sensitive than the best-of figures to one lucky or unlucky run.
                let mut per_round: Vec<f64> = hand
                    .map(|h| {
                        let ins = input_of(name).len() as f64 / input_of("").len() as f64;
                        rounds[h]
                            .iter()
                            .zip(&rounds[i])
                            .map(|(base, ours)| ins * base / ours)
                            .collect()
                    })
                    .unwrap_or_default();
                per_round.sort_by(f64::total_cmp);
                let median = per_round.get(per_round.len() / 2).copied().unwrap_or(0.0);
                format!(
                    "   {:.2}x hand-written V1 (median of per-round ratios {median:.2}x)",
                    rate / b
                )
            });
        println!("{name:<34} {rate:>12.0} events/s{ratio}");
    }
}
