//! The orders job's Parquet output equals a batch recomputation over the final collection state,
//! for inputs generated independently of the job (other seeds, transactions, updates with and
//! without fullDocument, canonical JSON, BSON files, several workers).

use changeflow::jobs::orders_by_region::{OrdersOptions, run};
use changeflow_testkit::orders::{OrdersConfig, write_bson};

use std::collections::BTreeMap;

use crate::support::*;

fn check(name: &str, config: OrdersConfig, bson: bool, workers: usize) {
    check_with(name, config, bson, workers, false);
}

/// [`check`], optionally with V1's changelog, which must then replay to the final V1.
fn check_with(name: &str, config: OrdersConfig, bson: bool, workers: usize, changelog: bool) {
    let dir = scratch(name);
    let lines = lines(config.clone());
    let input = if bson {
        let path = dir.join("events.bson");
        write_bson(config, &mut std::fs::File::create(&path).expect("create")).expect("write bson");
        path
    } else {
        let path = dir.join("events.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").expect("write jsonl");
        path
    };
    let mut options = OrdersOptions::new(&input, dir.join("out"));
    options.workers = workers;
    if changelog {
        options.changelog = Some(dir.join("v1.changes.jsonl"));
    }
    let report = run(&options).expect("job runs");
    assert_eq!(report.events as usize, lines.len());
    assert_eq!(
        report.unapplied, 0,
        "every update applies: the stream starts at the beginning"
    );
    let (v1, v2) = oracle(&lines);
    assert!(
        v1.len() >= 4 && v2.len() > 100,
        "the workload is not trivial"
    );
    assert_v1_eq(&read_v1(&dir.join("out/v1.parquet")), &v1);
    assert_eq!(read_v2(&dir.join("out/v2.parquet")), v2, "V2");
    if changelog {
        // Summing every change line's `_diff` per row gives V1's final rows.
        let text = std::fs::read_to_string(dir.join("v1.changes.jsonl")).expect("changelog");
        let mut rows: BTreeMap<String, isize> = BTreeMap::new();
        for line in text.lines() {
            let mut change: serde_json::Value = serde_json::from_str(line).expect("json line");
            let diff = change["_diff"].as_i64().expect("_diff") as isize;
            let object = change.as_object_mut().expect("object");
            object.remove("_diff");
            object.remove("_time");
            *rows.entry(change.to_string()).or_default() += diff;
        }
        rows.retain(|_, n| *n != 0);
        assert_eq!(rows.len(), v1.len(), "changelog rows");
        for (row, n) in &rows {
            let row: serde_json::Value = serde_json::from_str(row).expect("row");
            let region = row["region"].as_str().expect("region");
            let (orders, _) = v1[region];
            assert_eq!((row["orders"].as_i64(), *n), (Some(orders), 1), "{region}");
        }
    }
}

#[test]
fn with_a_changelog_the_views_still_equal_the_oracle_and_the_changelog_replays_to_v1() {
    check_with(
        "changelog",
        OrdersConfig {
            seed: 17,
            events: 4000,
            txn_fraction: 0.2,
            full_document_on_update: 0.5,
            ..OrdersConfig::default()
        },
        false,
        1,
        true,
    );
}

#[test]
fn relaxed_json_with_transactions_and_partial_full_documents() {
    check(
        "relaxed",
        OrdersConfig {
            seed: 11,
            events: 6000,
            txn_fraction: 0.3,
            full_document_on_update: 0.5,
            ..OrdersConfig::default()
        },
        false,
        1,
    );
}

#[test]
fn updates_without_any_full_document() {
    check(
        "no-full-doc",
        OrdersConfig {
            seed: 12,
            events: 5000,
            txn_fraction: 0.1,
            full_document_on_update: 0.0,
            ..OrdersConfig::default()
        },
        false,
        1,
    );
}

#[test]
fn canonical_extended_json() {
    check(
        "canonical",
        OrdersConfig {
            seed: 13,
            events: 3000,
            canonical: true,
            full_document_on_update: 1.0,
            ..OrdersConfig::default()
        },
        false,
        1,
    );
}

#[test]
fn bson_input_file() {
    check(
        "bson",
        OrdersConfig {
            seed: 14,
            events: 3000,
            txn_fraction: 0.2,
            ..OrdersConfig::default()
        },
        true,
        1,
    );
}

#[test]
fn two_workers_agree_with_the_oracle() {
    check(
        "two-workers",
        OrdersConfig {
            seed: 15,
            events: 4000,
            txn_fraction: 0.2,
            full_document_on_update: 0.0,
            ..OrdersConfig::default()
        },
        false,
        2,
    );
}

#[test]
fn pyarrow_reads_the_same_views() {
    let dir = scratch("pyarrow");
    let config = OrdersConfig {
        seed: 16,
        events: 3000,
        txn_fraction: 0.2,
        ..OrdersConfig::default()
    };
    let lines = lines(config);
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    run(&OrdersOptions::new(&input, dir.join("out"))).expect("job runs");
    let (v1, v2) = oracle(&lines);
    if let Some(rows) = pyarrow_rows(&dir.join("out/v1.parquet")) {
        let got = rows
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().expect("region").to_string(),
                    (
                        r["orders"].as_i64().expect("orders"),
                        r["amount"].as_f64().expect("amount"),
                    ),
                )
            })
            .collect();
        assert_v1_eq(&got, &v1);
    }
    if let Some(rows) = pyarrow_rows(&dir.join("out/v2.parquet")) {
        let got: std::collections::BTreeMap<i64, i64> = rows
            .iter()
            .map(|r| {
                (
                    r["customer_id"].as_i64().expect("customer"),
                    r["orders"].as_i64().expect("orders"),
                )
            })
            .collect();
        assert_eq!(got, v2);
    }
}

#[test]
fn the_bundled_sample_matches_the_oracle() {
    let sample = changeflow::jobs::orders_by_region::bundled_sample();
    let text = std::fs::read_to_string(&sample).expect("bundled sample exists");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(
        lines.iter().any(|l| l.contains("\"lsid\"")),
        "the sample has transactions"
    );
    let dir = scratch("sample");
    let report = run(&OrdersOptions::new(&sample, &dir)).expect("job runs");
    let (v1, v2) = oracle(&lines);
    assert_v1_eq(&read_v1(&dir.join("v1.parquet")), &v1);
    assert_eq!(read_v2(&dir.join("v2.parquet")), v2);
    assert_eq!(report.events as usize, lines.len());
    // The report counts the sample's transactions, each once.
    let mut txns = std::collections::BTreeMap::<String, u64>::new();
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).expect("json");
        if let (Some(lsid), Some(n)) = (event.get("lsid"), event.get("txnNumber")) {
            *txns.entry(format!("{lsid}/{n}")).or_default() += 1;
        }
    }
    assert!(txns.len() > 10);
    assert_eq!(report.transactions.transactions, txns.len() as u64);
    assert_eq!(
        report.transactions.transaction_events,
        txns.values().sum::<u64>()
    );
    assert_eq!(
        report.transactions.largest_transaction,
        txns.values().copied().max().unwrap_or(0)
    );
}
