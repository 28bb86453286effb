//! Crash trials for exactly-once restarts: `changeflow follow` run as a child process against
//! the wire test server (in this process), killed with SIGKILL at random moments and at injected
//! crash points, restarted, then stopped with SIGTERM; its committed Parquet changelog and its
//! persisted state are checked against the reference model.
//!
//! ```text
//! cargo run --release --features live --example crash_trials -- --trials 100
//! ```
//!
//! The child is this same executable, re-run with `follow …` as its arguments.

changeflow::global_allocator!();

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use changeflow::jobs::crash_trials::{TrialOptions, run};
use changeflow::jobs::follow;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Kill -9 trials of `changeflow follow`, checked against the reference model")]
struct Args {
    /// Kill-and-restart trials
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// Seed of the workload and of the kill timings
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Events of the bank workload
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Milliseconds between checkpoints in the child
    #[arg(long, default_value_t = 50)]
    checkpoint_ms: u64,
    /// Longest life of a child before it is killed, in milliseconds
    #[arg(long, default_value_t = 1500)]
    max_life_ms: u64,
    /// First start from a consistent snapshot of a collection that already holds data
    #[arg(long)]
    initial_snapshot: bool,
    /// Working directory [default: target/changeflow/crash_trials]
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Parser)]
struct Child {
    #[command(flatten)]
    args: follow::Args,
}

fn main() -> ExitCode {
    changeflow::runtime::keep_freed_memory();
    let mut argv = std::env::args();
    if argv.nth(1).as_deref() == Some("follow") {
        let child = Child::parse_from(std::env::args().skip(1));
        return follow::main_with(child.args);
    }
    let args = Args::parse();
    let Ok(me) = std::env::current_exe() else {
        eprintln!("error: cannot find this executable to run it as the child");
        return ExitCode::FAILURE;
    };
    let options = TrialOptions {
        trials: args.trials,
        seed: args.seed,
        events: args.events,
        dir: args.dir.unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/changeflow/crash_trials")
        }),
        follow: Box::new(move || {
            let mut command = Command::new(&me);
            command.arg("follow");
            command
        }),
        checkpoint_ms: args.checkpoint_ms,
        max_life: Duration::from_millis(args.max_life_ms),
        initial_snapshot: args.initial_snapshot,
    };
    let started = std::time::Instant::now();
    match run(&options) {
        Ok(report) => {
            println!(
                "{} trials ({} killed with SIGKILL, {} aborted at injected crash points), then a \
                 graceful stop; {} events, {} checkpoints",
                args.trials, report.killed, report.injected, report.events, report.checkpoints
            );
            println!(
                "committed: {} files, {} rows, {} times; every time checked (invariant total), \
                 0 lost, 0 duplicated; final state = oracle ({} documents); {:.1} s",
                report.files,
                report.rows,
                report.times,
                report.documents,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
