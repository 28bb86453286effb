//! Exactly-once across kill -9: `changeflow follow` against the wire test server, killed at
//! random moments and at injected crash points, restarted, and checked against the reference
//! model (see `changeflow::jobs::crash_trials` for what is checked).

use std::process::Command;
use std::time::Duration;

use changeflow::jobs::crash_trials::{TrialOptions, run};
use changeflow::sources::live;

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
    };
    let report = run(&options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report:?}");
    assert_eq!(report.killed + report.injected, trials);
    assert!(report.killed > 0 && report.checkpoints > 0, "{report:?}");
    assert!(report.times > 10, "{report:?}");
    assert!(report.documents >= 50, "{report:?}");
}
