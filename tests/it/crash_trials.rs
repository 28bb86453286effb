//! Exactly-once across kill -9: `changeflow follow` against the wire test server, killed at
//! random moments and at injected crash points, restarted, and checked against the reference
//! model (see `changeflow::jobs::crash_trials` for what is checked).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use changeflow::jobs::crash_trials::{TrialOptions, read_changelog, run};
use changeflow::sources::live;
use changeflow_core::ClusterTime;
use changeflow_sinks::checkpoint::Manifest;
use changeflow_testkit::bank::{BankConfig, BankWorkload};
use changeflow_testkit::reference::ReferenceModel;
use changeflow_testkit::server::ChangeStreamServer;

use crate::support::scratch;

#[test]
fn twenty_kill_9_trials_commit_every_change_exactly_once() {
    if !live::AVAILABLE {
        eprintln!("skipped: this build has no live source (run `cargo test --workspace`)");
        return;
    }
    let trials = std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    let options = TrialOptions {
        trials,
        seed: 8,
        events: 6000,
        dir: scratch("crash-trials"),
        follow: Box::new(|| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_changeflow"));
            command.arg("follow");
            command
        }),
        checkpoint_ms: 50,
        max_life: Duration::from_millis(1500),
        // The collection holds data before the first start: a consistent snapshot, then the
        // stream (a kill before the first checkpoint takes a new one).
        initial_snapshot: true,
    };
    let report = run(&options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report:?}");
    assert_eq!(report.killed + report.injected, trials);
    assert!(report.killed > 0 && report.checkpoints > 0, "{report:?}");
    assert!(report.times > 10, "{report:?}");
    assert!(report.documents >= 50, "{report:?}");
}

/// Runs `changeflow follow` on the bank collection of `server` with `state` and `extra` args.
fn follow(
    server: &ChangeStreamServer,
    state: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_changeflow"))
        .args([
            "follow",
            "--uri",
            &server.uri(),
            "--db",
            "bank",
            "--coll",
            "accounts",
        ])
        .arg("--state-dir")
        .arg(state)
        .args(["--checkpoint-ms", "50"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run follow")
}

/// Waits until the manifest's frontier passes `time` (moving the server's clock as an idle
/// replica set does), then stops the child with SIGTERM; it must exit 0.
fn catch_up_and_stop(
    server: &ChangeStreamServer,
    state: &std::path::Path,
    mut child: std::process::Child,
    time: ClusterTime,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Manifest::read(state)
        .expect("manifest")
        .is_none_or(|m| m.frontier <= time)
    {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            panic!("follow exited ({status}) before catching up: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "follow did not catch up to {time}"
        );
        server.noop();
        std::thread::sleep(Duration::from_millis(30));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(term.expect("kill").success());
    assert!(
        child.wait().expect("wait").success(),
        "a graceful stop exits 0"
    );
}

fn time_of(event: &bson::Document) -> ClusterTime {
    let ts = event.get_timestamp("clusterTime").expect("clusterTime");
    ClusterTime::new(ts.time, ts.increment)
}

#[test]
fn history_lost_while_stopped_fails_by_default_and_resnapshot_jumps_once_to_the_oracle() {
    if !live::AVAILABLE {
        eprintln!("skipped: this build has no live source (run `cargo test --workspace`)");
        return;
    }
    let dir = scratch("history-lost");
    let state = dir.join("state");
    let config = BankConfig {
        seed: 5,
        events: 3000,
        accounts: 30,
        ..BankConfig::default()
    };
    let events: Vec<bson::Document> = BankWorkload::new(config.clone()).collect();
    // Split where the seconds change: the no-ops that let the first run catch up move the
    // server's clock within the last second only.
    let split = (1500..events.len())
        .find(|&k| time_of(&events[k]).seconds() > time_of(&events[k - 1]).seconds())
        .expect("a later second");
    let (first, second) = events.split_at(split);
    let server = ChangeStreamServer::start().expect("server");
    for event in first {
        server.push(event.clone()).expect("push");
    }
    let start = config.start_time.to_string();
    let child = follow(&server, &state, &["--start-at", &start]);
    catch_up_and_stop(
        &server,
        &state,
        child,
        time_of(first.last().expect("events")),
    );
    let stopped_at = Manifest::read(&state)
        .expect("manifest")
        .expect("a checkpoint")
        .frontier;

    // While it is stopped: more changes, then the oplog rolls over past its token.
    for event in second {
        server.push(event.clone()).expect("push");
    }
    let (t, i) = server.noop();
    server.truncate_history((t, i));

    // Default policy: a typed error naming the token and the missing range; exit 1.
    let failed = follow(&server, &state, &[])
        .wait_with_output()
        .expect("follow");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("286") && stderr.contains("gone"),
        "{stderr}"
    );
    let manifest = Manifest::read(&state)
        .expect("manifest")
        .expect("checkpoint");
    let token = manifest.token.expect("a token").to_string();
    assert!(
        stderr.contains(&token),
        "the error names the token {token}: {stderr}"
    );
    assert_eq!(
        manifest.frontier, stopped_at,
        "a failed start commits nothing"
    );

    // Re-snapshot: catches up, and the changelog after the stop is one jump at T1.
    let child = follow(&server, &state, &["--on-history-lost", "resnapshot"]);
    catch_up_and_stop(&server, &state, child, ClusterTime::new(t, i));
    let (times, _) = read_changelog(&state.join("changelog")).unwrap_or_else(|e| panic!("{e}"));
    let after: Vec<u64> = times
        .range(stopped_at.as_u64()..)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(after.len(), 1, "one jump after the stop, not {after:?}");
    let mut model = ReferenceModel::new();
    for event in &events {
        model.apply(event).expect("oracle");
    }
    let mut balances: BTreeMap<i64, i64> = BTreeMap::new();
    let mut before_jump = BTreeMap::new();
    for (time, rows) in &times {
        if *time == after[0] {
            before_jump = balances.clone();
        }
        for (id, balance, diff) in rows.iter().filter(|r| r.2 < 0) {
            assert_eq!((balances.remove(id), *diff), (Some(*balance), -1));
        }
        for (id, balance, _) in rows.iter().filter(|r| r.2 > 0) {
            balances.insert(*id, *balance);
        }
        assert_eq!(
            balances.values().sum::<i64>(),
            config.total(),
            "the invariant at {time}"
        );
    }
    let expected: BTreeMap<i64, i64> = model
        .documents()
        .values()
        .map(|d| {
            (
                i64::from(d.get_i32("_id").expect("_id")),
                d.get_i64("balance").expect("balance"),
            )
        })
        .collect();
    assert_eq!(
        balances, expected,
        "after the jump the changelog sums to the oracle"
    );
    // Only the documents that differ are in the jump.
    let jump = &times[&after[0]];
    let changed = expected
        .iter()
        .filter(|(id, b)| before_jump.get(*id) != Some(*b))
        .count()
        + before_jump
            .keys()
            .filter(|id| !expected.contains_key(*id))
            .count();
    let touched: std::collections::BTreeSet<i64> = jump.iter().map(|r| r.0).collect();
    assert_eq!(
        touched.len(),
        changed,
        "the jump touches exactly the documents that differ"
    );
}
