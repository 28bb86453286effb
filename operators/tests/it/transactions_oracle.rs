//! Property test: transactions are atomic in every view.
//!
//! Random bank workloads (transactions of several transfers, some spanning several
//! clusterTimes, some interleaved at one clusterTime as on a sharded cluster, plain events in
//! between) run through a source, document state, a total-balance view and the transaction
//! operator. At **every** clusterTime of the stream — including the times of a multi-entry
//! transaction's earlier entries — the document state must equal the sequential reference model
//! applied to whole transactions only (an event counts once its transaction's last event has
//! come), and the total must be 0 (before the accounts open) or the workload's total.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bson::Document as BsonDoc;
use changeflow_core::{ChangeEvent, ClusterTime};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_operators::transactions::{Transaction, TxnStatus, transactions};
use changeflow_operators::value::{Value, ValueType};
use changeflow_operators::views::{GroupBy, Row};
use changeflow_sources::memory::from_events;
use changeflow_testkit::bank::{BankConfig, BankWorkload};
use changeflow_testkit::reference::{ReferenceModel, commit_times};
use proptest::prelude::*;

use crate::support::{DocUpdates, state_at};

#[derive(Default)]
struct Seen {
    documents: DocUpdates,
    totals: Vec<(Row, ClusterTime, isize)>,
    transactions: Vec<(Transaction, ClusterTime)>,
    metadata: Vec<(TxnStatus, u64, ClusterTime)>,
}

fn run(events: Vec<ChangeEvent>, workers: usize) -> Seen {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = Arc::clone(&seen);
    timely::execute(timely::Config::process(workers), move |worker| {
        let events = events.clone();
        let (a, b, c, d) = (
            Arc::clone(&sink),
            Arc::clone(&sink),
            Arc::clone(&sink),
            Arc::clone(&sink),
        );
        worker.dataflow::<ClusterTime, _, _>(|scope| {
            let stream = from_events(scope, events);
            let documents = document_state(stream.clone(), DocumentStats::new());
            let total = GroupBy::new("bank.accounts")
                .count("accounts")
                .sum("total", "balance", ValueType::Int64)
                .build(documents.clone());
            documents.inspect(move |u| a.lock().expect("lock").documents.push(u.clone()));
            total.inspect(move |u| b.lock().expect("lock").totals.push(u.clone()));
            let streams = transactions(stream);
            use timely::dataflow::operators::Inspect;
            streams
                .transactions
                .inspect(move |t| c.lock().expect("lock").transactions.push(t.clone()));
            streams.metadata.inspect(move |(m, t)| {
                d.lock()
                    .expect("lock")
                    .metadata
                    .push((m.status, m.event_count, *t))
            });
        });
    })
    .expect("timely runs")
    .join();
    Arc::try_unwrap(seen)
        .unwrap_or_else(|_| panic!("workers done"))
        .into_inner()
        .expect("lock")
}

fn total_at(updates: &[(Row, ClusterTime, isize)], time: ClusterTime) -> Option<i64> {
    let mut rows: BTreeMap<Row, isize> = BTreeMap::new();
    for (row, t, diff) in updates {
        if *t <= time {
            *rows.entry(row.clone()).or_default() += diff;
        }
    }
    rows.retain(|_, n| *n != 0);
    assert!(rows.len() <= 1, "the total view has one row: {rows:?}");
    rows.into_iter().next().map(|(row, n)| {
        assert_eq!(n, 1);
        match row.get(1) {
            Some(Value::Int(total)) => *total,
            other => panic!("total is {other:?}"),
        }
    })
}

fn check(config: BankConfig, workers: usize) {
    let events: Vec<BsonDoc> = BankWorkload::new(config.clone()).collect();
    let decoded: Vec<ChangeEvent> = events
        .iter()
        .map(|e| ChangeEvent::from_bson(e.to_vec().expect("encode")).expect("decode"))
        .collect();
    let seen = run(decoded, workers);
    let commits = commit_times(&events);

    // Every clusterTime of the stream, and the reference over whole transactions at it.
    let mut times: Vec<(u32, u32)> = events
        .iter()
        .map(|e| {
            let t = e.get_timestamp("clusterTime").expect("time");
            (t.time, t.increment)
        })
        .collect();
    times.dedup();
    let mut model = ReferenceModel::new();
    let mut applied = vec![false; events.len()];
    for &(t, i) in &times {
        // Stream order among the events that became visible (commit ≤ this time).
        for (n, event) in events.iter().enumerate() {
            if !applied[n] && commits[n] <= (t, i) {
                model.apply(event).expect("reference applies");
                applied[n] = true;
            }
        }
        let time = ClusterTime::new(t, i);
        let expected: BTreeMap<(String, String), Vec<u8>> = model
            .documents()
            .iter()
            .map(|(k, d)| (k.clone(), d.to_vec().expect("encode")))
            .collect();
        assert_eq!(
            state_at(&seen.documents, time),
            expected,
            "document state at {time} is not the state after whole transactions"
        );
        let total = total_at(&seen.totals, time);
        assert!(
            total.is_none() || total == Some(config.total()),
            "total {total:?} at {time}: a partial transaction is visible"
        );
    }

    // The transaction operator: one record per transaction, at its commit time, events in order.
    let mut expected: BTreeMap<((u32, u32), String), Vec<String>> = BTreeMap::new();
    for (n, event) in events.iter().enumerate() {
        if let (Ok(lsid), Ok(number)) = (event.get_document("lsid"), event.get_i64("txnNumber")) {
            let id = format!(
                "{}/{number}",
                bson::Bson::Document(lsid.clone()).into_canonical_extjson()
            );
            let token = event
                .get_document("_id")
                .expect("token")
                .get_str("_data")
                .expect("data");
            expected
                .entry((commits[n], id))
                .or_default()
                .push(token.to_string());
        }
    }
    let mut actual: BTreeMap<((u32, u32), String), Vec<String>> = BTreeMap::new();
    for (txn, time) in &seen.transactions {
        assert_eq!(*time, txn.commit_time);
        let lsid = bson::Document::from_reader(txn.id.lsid.as_bytes()).expect("lsid");
        let id = format!(
            "{}/{}",
            bson::Bson::Document(lsid).into_canonical_extjson(),
            txn.id.txn_number
        );
        let tokens = txn
            .events
            .iter()
            .map(|e| e.token_data().expect("token").to_string())
            .collect();
        let key = ((time.seconds(), time.increment()), id);
        assert!(
            actual.insert(key, tokens).is_none(),
            "a transaction emitted twice"
        );
    }
    assert_eq!(actual, expected, "transactions differ from the stream's");
    let ends: u64 = seen
        .metadata
        .iter()
        .filter(|m| m.0 == TxnStatus::End)
        .map(|m| m.1)
        .sum();
    let begins = seen
        .metadata
        .iter()
        .filter(|m| m.0 == TxnStatus::Begin)
        .count();
    assert_eq!(begins, expected.len());
    assert_eq!(
        ends as usize,
        expected.values().map(Vec::len).sum::<usize>()
    );
}

fn configs() -> impl Strategy<Value = (BankConfig, usize)> {
    (
        any::<u64>(),
        2..12u32,
        40..400usize,
        0.0..0.6f64,
        0.0..0.8f64,
        0.0..0.5f64,
        1..4u32,
        2..6usize,
        1..3usize,
    )
        .prop_map(
            |(seed, accounts, events, plain, multi, interleave, hops, entry, workers)| {
                (
                    BankConfig {
                        seed,
                        accounts,
                        initial_balance: 1_000,
                        events,
                        plain_fraction: plain,
                        multi_entry_fraction: multi,
                        interleave_fraction: interleave,
                        max_hops: hops,
                        entry_size: entry,
                        ..BankConfig::default()
                    },
                    workers,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_time_shows_whole_transactions_only((config, workers) in configs()) {
        check(config, workers);
    }
}

#[test]
fn a_large_opening_transaction_over_many_entries_lands_at_once() {
    check(
        BankConfig {
            seed: 5,
            accounts: 300,
            events: 1_500,
            entry_size: 7,
            multi_entry_fraction: 0.5,
            interleave_fraction: 0.1,
            ..BankConfig::default()
        },
        2,
    );
}
