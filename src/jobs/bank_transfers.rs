//! The bank-transfer job: balances per account and the grand total, checked at every closed
//! time. Money only moves inside transactions, so the total never changes; a partial
//! transaction anywhere would show a different total.
//!
//! ```text
//!   replay(file) ──┬──▶ document_state ──┬──▶ balances: per _id, sum(balance) ──▶ check Σ, handle, changelog
//!                  │                     └──▶ total: count, sum(balance) ───────▶ check, handle, changelog
//!                  └──▶ transactions ──▶ count, largest ──────────────────────▶ transactions.jsonl (BEGIN/END)
//! ```
//!
//! The input is the [`changeflow_testkit::bank`] workload (generated into the output directory
//! unless a file is given): transfers of several hops, transactions spanning several
//! clusterTimes and, optionally, transactions interleaved at one clusterTime as on a sharded
//! cluster.
//!
//! ```no_run
//! use changeflow::jobs::bank_transfers::{BankJob, BankOptions};
//! let job = BankJob::new(BankOptions::generated("target/bank", 10_000));
//! let total = job.total_handle();
//! std::thread::spawn(move || println!("{:?}", total.snapshot().rows));
//! let report = job.run().unwrap();
//! assert_eq!(report.violations, 0);
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use changeflow_core::ClusterTime;
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_operators::handle::{ViewHandle, on_closed_records, on_closed_times};
use changeflow_operators::transactions::{TxnMetadata, transactions};
use changeflow_operators::value::{Value, ValueType};
use changeflow_operators::views::{GroupBy, Row};
use changeflow_sinks::SinkError;
use changeflow_sinks::changelog::ChangelogWriter;
use changeflow_sinks::transaction_log::TransactionLog;
use changeflow_sources::commit_time::{GroupingCounts, TxnCompletion};
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};
use changeflow_testkit::bank::{BankConfig, write_json_lines};
use timely::dataflow::operators::{Inspect, Probe};

use crate::jobs::orders_by_region::JobError;
use crate::runtime;

/// What to run.
#[derive(Clone, Debug)]
pub struct BankOptions {
    /// A recorded bank stream to replay; `None` generates one from `workload` into `out`.
    pub input: Option<PathBuf>,
    /// The workload to generate when there is no input.
    pub workload: BankConfig,
    /// The expected total (the workload's, unless replaying another file).
    pub expected_total: i64,
    /// Output directory: the generated input, the changelogs and `transactions.jsonl`.
    pub out: PathBuf,
    /// Timely worker threads.
    pub workers: usize,
    /// When a transaction counts as complete.
    pub txn_completion: TxnCompletion,
}

impl BankOptions {
    /// Generates `events` events of the default bank workload (with interleaved transactions)
    /// into `out` and runs on one worker.
    pub fn generated(out: impl AsRef<Path>, events: usize) -> Self {
        let workload = BankConfig {
            events,
            accounts: 1_000,
            interleave_fraction: 0.1,
            ..BankConfig::default()
        };
        BankOptions {
            input: None,
            expected_total: workload.total(),
            workload,
            out: out.as_ref().into(),
            workers: 1,
            txn_completion: TxnCompletion::Sharded,
        }
    }
}

/// What the job did.
#[derive(Clone, Debug)]
pub struct BankReport {
    /// Change events read.
    pub events: u64,
    /// Transactions seen by the transaction operator.
    pub transactions: u64,
    /// Events of the largest transaction.
    pub largest_transaction: u64,
    /// What the source's commit-time grouping did (multi-entry transactions, late events).
    pub grouping: GroupingCounts,
    /// Closed times at which the invariant was checked.
    pub checked_times: u64,
    /// Closed times at which the total, or the sum of the balances, was not the expected total.
    pub violations: u64,
    /// The first violation, described.
    pub first_violation: Option<String>,
    /// The final total and number of accounts.
    pub total: i64,
    /// Accounts at the end.
    pub accounts: i64,
    /// Wall-clock time of the dataflow.
    pub elapsed: Duration,
    /// The input file replayed.
    pub input: PathBuf,
    /// Files written: the balances and total changelogs, the transaction log.
    pub files: Vec<PathBuf>,
}

impl BankReport {
    /// Transactions per second over the dataflow's run time.
    pub fn transactions_per_second(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Balances: per account, its balance.
pub fn balances_definition() -> GroupBy {
    GroupBy::new("bank.accounts")
        .key("account", "_id", ValueType::Int64)
        .sum("balance", "balance", ValueType::Int64)
}

/// The grand total: number of accounts and sum of balances.
pub fn total_definition() -> GroupBy {
    GroupBy::new("bank.accounts")
        .count("accounts")
        .sum("total", "balance", ValueType::Int64)
}

/// The job, with its view handles readable from other threads while it runs.
pub struct BankJob {
    options: BankOptions,
    total: ViewHandle<Row>,
    balances: ViewHandle<Row>,
}

/// Checks the invariant at each closed time and counts violations.
#[derive(Default)]
struct Checker {
    sum: i64,
    checked: u64,
    violations: u64,
    first: Option<String>,
}

impl Checker {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.first.is_none() {
            self.first = Some(what);
        }
    }
}

fn int(row: &Row, column: usize) -> i64 {
    match row.get(column) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

fn writer(
    path: &Path,
    columns: &GroupBy,
) -> Result<ChangelogWriter<std::io::BufWriter<std::fs::File>>, SinkError> {
    let file = std::fs::File::create(path).map_err(|e| SinkError::Write {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(ChangelogWriter::new(
        std::io::BufWriter::new(file),
        columns.columns().into_iter().map(|(n, _)| n).collect(),
    ))
}

impl BankJob {
    /// A job that has not started.
    pub fn new(options: BankOptions) -> Self {
        BankJob {
            options,
            total: ViewHandle::new(),
            balances: ViewHandle::new(),
        }
    }

    /// The total view (`[accounts, total]`), readable while the job runs.
    pub fn total_handle(&self) -> ViewHandle<Row> {
        self.total.clone()
    }

    /// The balances view (`[account, balance]`), readable while the job runs.
    pub fn balances_handle(&self) -> ViewHandle<Row> {
        self.balances.clone()
    }

    /// Runs to the end of the input.
    pub fn run(&self) -> Result<BankReport, JobError> {
        let options = &self.options;
        let io = |path: &Path, e: std::io::Error| SinkError::Write {
            path: path.into(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&options.out).map_err(|e| io(&options.out, e))?;
        let input = match &options.input {
            Some(path) => path.clone(),
            None => {
                let path = options.out.join("bank.jsonl");
                let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
                let mut out = std::io::BufWriter::new(file);
                write_json_lines(options.workload.clone(), &mut out).map_err(|e| io(&path, e))?;
                std::io::Write::flush(&mut out).map_err(|e| io(&path, e))?;
                path
            }
        };
        let mut replay_options = ReplayOptions::new(ReaderOptions::new(&input));
        replay_options.txn_completion = options.txn_completion;
        let status = replay_options.status();

        let files = [
            options.out.join("balances.changes.jsonl"),
            options.out.join("total.changes.jsonl"),
            options.out.join("transactions.jsonl"),
        ];
        let sinks = Arc::new(Mutex::new((
            writer(&files[0], &balances_definition())?,
            writer(&files[1], &total_definition())?,
            TransactionLog::create(&files[2])?,
            None::<String>,
        )));
        let checker = Arc::new(Mutex::new(Checker::default()));
        let (txn_count, largest) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let expected = options.expected_total;

        let started = Instant::now();
        let worker_job = {
            let (status, sinks, checker) = (status.clone(), sinks.clone(), checker.clone());
            let (total, balances) = (self.total.clone(), self.balances.clone());
            let (txn_count, largest) = (txn_count.clone(), largest.clone());
            move |worker: &mut timely::worker::Worker| {
                let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                    let events = replay(scope, replay_options.clone());
                    let documents = document_state(events.clone(), DocumentStats::new());
                    let balances_view = balances_definition().build(documents.clone());
                    let total_view = total_definition().build(documents);

                    // The invariant, at every closed time of each view.
                    let (check, sink) = (checker.clone(), sinks.clone());
                    on_closed_times(
                        balances_view.clone(),
                        move |time, changes| {
                            if let Ok(mut c) = check.lock() {
                                for (row, diff) in changes {
                                    c.sum += int(row, 1) * *diff as i64;
                                }
                                c.checked += 1;
                                if c.sum != expected && c.sum != 0 {
                                    let sum = c.sum;
                                    c.violation(format!("sum of balances {sum} at {time}"));
                                }
                            }
                            if let Ok(mut s) = sink.lock()
                                && s.3.is_none()
                                && let Err(e) = s.0.write_changes(time, changes)
                            {
                                s.3 = Some(e.to_string());
                            }
                        },
                        |_| {},
                    );
                    let (check, sink) = (checker.clone(), sinks.clone());
                    let mut current: Option<Row> = None;
                    on_closed_times(
                        total_view.clone(),
                        move |time, changes| {
                            for (row, diff) in changes {
                                match diff {
                                    1 => current = Some(row.clone()),
                                    -1 if current.as_ref() == Some(row) => current = None,
                                    _ => {}
                                }
                            }
                            let total = current.as_ref().map_or(0, |r| int(r, 1));
                            if total != expected
                                && let Ok(mut c) = check.lock()
                            {
                                c.violation(format!("total {total} at {time}"));
                            }
                            if let Ok(mut s) = sink.lock()
                                && s.3.is_none()
                                && let Err(e) = s.1.write_changes(time, changes)
                            {
                                s.3 = Some(e.to_string());
                            }
                        },
                        |_| {},
                    );
                    total.attach(total_view.clone());
                    balances.attach(balances_view.clone());

                    let (probe, _) = total_view.probe();
                    balances_view.probe_with(&probe);
                    let txns = transactions(events);
                    let (count, big) = (txn_count.clone(), largest.clone());
                    txns.transactions
                        .inspect(move |(txn, _)| {
                            count.fetch_add(1, Ordering::Relaxed);
                            big.fetch_max(txn.len() as u64, Ordering::Relaxed);
                        })
                        .probe_with(&probe);
                    // The log is written in commit order, at closed times, on worker 0.
                    let sink = sinks.clone();
                    on_closed_records(txns.metadata, move |_, records| {
                        let mut records: Vec<&TxnMetadata> = records.iter().collect();
                        records.sort_by(|a, b| (&a.id, a.status).cmp(&(&b.id, b.status)));
                        if let Ok(mut s) = sink.lock() {
                            for record in records {
                                if s.3.is_none()
                                    && let Err(e) = s.2.write(record)
                                {
                                    s.3 = Some(e.to_string());
                                }
                            }
                        }
                    });
                    probe
                });
                runtime::drive(worker, &probe, std::slice::from_ref(&status))
            }
        };
        super::run_to_end(options.workers, &status, worker_job)?;
        let elapsed = started.elapsed();
        if let Ok(mut s) = sinks.lock() {
            let flushed =
                s.0.flush()
                    .and_then(|_| s.1.flush())
                    .and_then(|_| s.2.flush());
            if let Some(reason) = s.3.take().or(flushed.err().map(|e| e.to_string())) {
                return Err(SinkError::Write {
                    path: options.out.clone(),
                    reason,
                }
                .into());
            }
        }
        let final_total = self.total.snapshot();
        let row = final_total.rows.first().map(|(r, _)| r.clone());
        let checker = checker
            .lock()
            .map_err(|e| JobError::Dataflow(e.to_string()))?;
        Ok(BankReport {
            events: status.events(),
            transactions: txn_count.load(Ordering::Relaxed),
            largest_transaction: largest.load(Ordering::Relaxed),
            grouping: status.transactions(),
            checked_times: checker.checked,
            violations: checker.violations,
            first_violation: checker.first.clone(),
            total: row.as_ref().map_or(0, |r| int(r, 1)),
            accounts: row.as_ref().map_or(0, |r| int(r, 0)),
            elapsed,
            input,
            files: files.to_vec(),
        })
    }
}

/// Command-line arguments of the job.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Events to generate
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Seed of the generated workload
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Accounts opened by the first transaction
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u32,
    /// Fraction of steps that interleave two transactions at one clusterTime (sharded cluster)
    #[arg(long, default_value_t = 0.1)]
    pub interleave: f64,
    /// Replay this recorded bank stream instead of generating one (expects --total)
    #[arg(long, requires = "total")]
    pub input: Option<PathBuf>,
    /// The expected total when replaying --input
    #[arg(long)]
    pub total: Option<i64>,
    /// Output directory [default: target/changeflow/bank_transfers]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
}

/// Runs the job from command-line arguments and prints a summary; the exit code is 1 if the
/// invariant was ever broken or the job failed.
pub fn main_with(args: Args) -> std::process::ExitCode {
    crate::runtime::keep_freed_memory();
    let out = args.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("changeflow")
            .join("bank_transfers")
    });
    let mut options = BankOptions::generated(&out, args.events);
    options.workload.seed = args.seed;
    options.workload.accounts = args.accounts;
    options.workload.interleave_fraction = args.interleave;
    options.expected_total = args.total.unwrap_or(options.workload.total());
    options.input = args.input;
    options.workers = args.workers;
    match BankJob::new(options).run() {
        Ok(report) => {
            println!(
                "{} events, {} transactions in {:.2} s: {:.0} transactions/s ({} worker{})",
                report.events,
                report.transactions,
                report.elapsed.as_secs_f64(),
                report.transactions_per_second(),
                args.workers,
                if args.workers == 1 { "" } else { "s" },
            );
            println!(
                "largest transaction: {} events; {} spanned several clusterTimes",
                report.largest_transaction, report.grouping.multi_time_transactions
            );
            println!(
                "final: {} accounts, total {}; invariant checked at {} closed times: {}",
                report.accounts,
                report.total,
                report.checked_times,
                if report.violations == 0 {
                    "never broken".to_string()
                } else {
                    format!(
                        "BROKEN {} times (first: {})",
                        report.violations,
                        report.first_violation.clone().unwrap_or_default()
                    )
                }
            );
            for file in &report.files {
                println!("wrote {}", file.display());
            }
            if report.violations == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
