//! The orders job on a live change stream: the same views through the real `mongodb` driver and
//! the test kit's wire-protocol server, checked against the reference model; and the
//! `changeflow record` round trip through the replay job. (`cargo test --workspace` builds the
//! live source; with `-p changeflow` alone it may not be, and these tests say so.)

use changeflow::jobs::orders_by_region::{OrdersOptions, run};
use changeflow::sources::live::{self, LiveOptions, StartAt, WatchTarget};
use changeflow_core::ClusterTime;
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::server::ChangeStreamServer;

use crate::support::*;

fn built() -> bool {
    if !live::AVAILABLE {
        eprintln!(
            "skipped: this build has no live source (run `cargo test --workspace`, or add `--features live`)"
        );
    }
    live::AVAILABLE
}

#[test]
fn the_orders_job_on_a_live_stream_reaches_the_oracle() {
    if !built() {
        return;
    }
    let config = OrdersConfig {
        seed: 41,
        events: 3000,
        txn_fraction: 0.2,
        ..OrdersConfig::default()
    };
    let (v1, v2) = oracle(&lines(config.clone()));
    let server = ChangeStreamServer::start().unwrap();
    server.push_workload(config).unwrap();
    let mut live = LiveOptions::new(&server.uri(), WatchTarget::collection("shop", "orders"));
    live.start = StartAt::OperationTime(ClusterTime::new(1_600_000_000, 0));
    live.max_events = Some(3000);
    let dir = scratch("live-job");
    let mut options = OrdersOptions::live(live, &dir);
    options.workers = 2;
    let report = run(&options).expect("the live job runs");
    assert_eq!(report.events, 3000);
    assert_eq!(report.unapplied, 0);
    assert_eq!(read_v1(&dir.join("v1.parquet")), v1);
    assert_eq!(read_v2(&dir.join("v2.parquet")), v2);
}

#[test]
fn changeflow_record_captures_a_stream_that_replays_to_the_same_views() {
    if !built() {
        return;
    }
    let config = OrdersConfig {
        seed: 42,
        events: 1500,
        ..OrdersConfig::default()
    };
    let (v1, _) = oracle(&lines(config.clone()));
    let server = ChangeStreamServer::start().unwrap();
    let dir = scratch("live-record");
    let file = dir.join("recorded.jsonl");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_changeflow"))
        .args([
            "record",
            "--uri",
            &server.uri(),
            "--db",
            "shop",
            "--coll",
            "orders",
        ])
        .args(["--max-events", "1500", "--idle-timeout", "30"])
        .arg("--out")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run changeflow record");
    // `record` starts "now": write once its stream is open.
    let opened = std::time::Instant::now();
    while server.commands_named("aggregate").is_empty() {
        assert!(
            opened.elapsed().as_secs() < 30,
            "record never opened its stream"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.push_workload(config).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("1500 events") && stderr.contains("events/s") && stderr.contains("lag"),
        "{stderr}"
    );
    let report = run(&OrdersOptions::new(&file, dir.join("out"))).unwrap();
    assert_eq!(report.events, 1500);
    assert_eq!(read_v1(&dir.join("out").join("v1.parquet")), v1);
}
