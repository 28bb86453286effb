//! Malformed input: the job stops naming file and line, or with a dead-letter file keeps exactly
//! the bad lines there and computes the views of the good lines.

use std::process::Command;

use changeflow::jobs::orders_by_region::{JobError, OrdersOptions, run};
use changeflow_testkit::orders::OrdersConfig;

use crate::support::*;

const BAD: [&str; 3] = [
    "{not json at all",
    r#"{"_id": {"_data": "82"}, "operationType": "insert", "ns": {"db": "shop", "coll": "orders"}}"#,
    r#"{"_id": {"_data": "82"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "shop", "coll": "orders"}, "documentKey": {"_id": {"$oid": "zz"}}, "fullDocument": {}}"#,
];

/// Good lines with the bad ones spliced in at lines 11, 501 and 1201 (1-based).
fn input_with_bad_lines() -> (Vec<String>, Vec<String>) {
    let good = lines(OrdersConfig {
        seed: 21,
        events: 2000,
        txn_fraction: 0.2,
        ..OrdersConfig::default()
    });
    let mut mixed = good.clone();
    for (at, bad) in [(10, BAD[0]), (500, BAD[1]), (1200, BAD[2])] {
        mixed.insert(at, bad.to_string());
    }
    (good, mixed)
}

#[test]
fn a_malformed_line_stops_the_job_naming_file_and_line() {
    let dir = scratch("bad-stop");
    let (_, mixed) = input_with_bad_lines();
    let input = dir.join("mixed.jsonl");
    std::fs::write(&input, mixed.join("\n") + "\n").expect("write");
    let err = run(&OrdersOptions::new(&input, dir.join("out"))).expect_err("must fail");
    assert!(matches!(err, JobError::Source(_)));
    let message = err.to_string();
    assert!(message.contains("mixed.jsonl:11:"), "{message}");
    assert!(message.contains("invalid JSON"), "{message}");
    assert!(
        !dir.join("out/v1.parquet").exists(),
        "no output from a failed run"
    );
}

#[test]
fn the_command_exits_non_zero_with_the_location() {
    let dir = scratch("bad-exit");
    let (_, mixed) = input_with_bad_lines();
    let input = dir.join("mixed.jsonl");
    std::fs::write(&input, mixed[..600].join("\n") + "\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_changeflow"))
        .args(["orders-by-region", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mixed.jsonl:11:"), "{stderr}");
}

#[test]
fn dead_letters_hold_exactly_the_bad_lines_and_views_equal_the_good_lines() {
    let dir = scratch("bad-dead-letter");
    let (good, mixed) = input_with_bad_lines();
    let input = dir.join("mixed.jsonl");
    std::fs::write(&input, mixed.join("\n") + "\n").expect("write");
    let dead = dir.join("dead.jsonl");
    let mut options = OrdersOptions::new(&input, dir.join("out"));
    options.dead_letter = Some(dead.clone());
    let report = run(&options).expect("job carries on");
    assert_eq!(report.dead_lettered, 3);
    assert_eq!(report.events as usize, good.len());
    let dead_lines: Vec<String> = std::fs::read_to_string(&dead)
        .expect("dead letters")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(dead_lines, BAD.map(str::to_owned).to_vec());
    let (v1, v2) = oracle(&good);
    assert_v1_eq(&read_v1(&dir.join("out/v1.parquet")), &v1);
    assert_eq!(read_v2(&dir.join("out/v2.parquet")), v2);
}

#[test]
fn out_of_order_times_are_an_error_not_a_reordering() {
    let dir = scratch("bad-order");
    let mut good = lines(OrdersConfig {
        seed: 22,
        events: 300,
        ..OrdersConfig::default()
    });
    let late = good.remove(100);
    good.insert(250, late);
    let input = dir.join("shuffled.jsonl");
    std::fs::write(&input, good.join("\n") + "\n").expect("write");
    let message = run(&OrdersOptions::new(&input, dir.join("out")))
        .expect_err("must fail")
        .to_string();
    assert!(
        message.contains("shuffled.jsonl:251:")
            && message.contains("earlier than the source's frontier"),
        "{message}"
    );
}
