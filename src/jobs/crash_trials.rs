//! Crash trials: `changeflow follow` killed with SIGKILL at random moments and restarted, then
//! its committed output checked against the reference model.
//!
//! ```text
//!   this process                                          child process (killed, restarted)
//!   ┌────────────────────────────────────────┐           ┌─────────────────────────────────┐
//!   │ wire test server ◀── bank workload,     │ ◀─ wire ─ │ changeflow follow --state-dir D │
//!   │   pushed while the child runs           │           │   checkpoints every 50 ms       │
//!   │ trial: spawn, sleep a random time, kill │──SIGKILL─▶│   (some trials also abort at an │
//!   │   -9 (or an injected crash point fires) │           │    injected point: before a     │
//!   │ last run: SIGTERM once it caught up     │──SIGTERM─▶│    rename, during the manifest) │
//!   └────────────────────────────────────────┘           └─────────────────────────────────┘
//! ```
//!
//! # What is checked
//!
//! * **No time committed twice**: no change `(_time, _id, sign)` appears twice in the
//!   committed files (a time's changes may span two files only where the schema changed).
//! * **No change lost or duplicated**: replaying the committed changelog time by time, every
//!   retraction removes exactly the version present, and the final documents equal the
//!   reference model's after the whole workload.
//! * **Transactions never split across a checkpoint**: after every committed time the balances
//!   sum to the bank's invariant total (a transfer committed half would break it).
//! * **The persisted state equals the oracle**: the state directory, loaded as a restart would,
//!   holds exactly the reference model's documents.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, Int32Array, Int64Array, RecordBatch, UInt64Array};
use changeflow_core::ClusterTime;
use changeflow_sinks::checkpoint::{Checkpoints, Manifest, state};
use changeflow_sources::SourceStatus;
use changeflow_testkit::bank::{BankConfig, BankWorkload, COLLECTION, DB as DATABASE};
use changeflow_testkit::reference::ReferenceModel;
use changeflow_testkit::server::ChangeStreamServer;

/// How to run the trials.
pub struct TrialOptions {
    /// Kill-and-restart trials before the final run.
    pub trials: usize,
    /// Seed of the workload and of the kill timings.
    pub seed: u64,
    /// Events of the bank workload.
    pub events: usize,
    /// Working directory (state directory and changelog inside); emptied first.
    pub dir: PathBuf,
    /// Builds the command that runs `changeflow follow` (arguments are appended).
    pub follow: Box<dyn Fn() -> Command>,
    /// Milliseconds between checkpoints in the child.
    pub checkpoint_ms: u64,
    /// The longest a child runs before it is killed.
    pub max_life: Duration,
    /// Start from a consistent snapshot of a collection that already holds the first trial's
    /// share of the workload (else from the workload's first cluster time).
    pub initial_snapshot: bool,
}

/// What the trials did and found.
#[derive(Clone, Debug, Default)]
pub struct TrialReport {
    /// Children killed with SIGKILL.
    pub killed: usize,
    /// Children that aborted at an injected crash point.
    pub injected: usize,
    /// Trials during which a checkpoint was committed before the child died.
    pub advanced: usize,
    /// Checkpoints in the final manifest's sequence.
    pub checkpoints: u64,
    /// Events in the workload.
    pub events: usize,
    /// Committed changelog files and rows.
    pub files: usize,
    /// Committed changelog rows.
    pub rows: usize,
    /// Distinct committed times, each checked against the invariant.
    pub times: usize,
    /// Documents in the final state.
    pub documents: usize,
}

/// A deterministic xorshift generator for the kill timings.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const CRASH_POINTS: [&str; 5] = [
    "file-before-rename",
    "manifest-before-rename",
    "manifest-renamed",
    "segment-before-rename",
    "base-before-rename",
];

/// Runs the trials and checks the result; an error says what was wrong.
pub fn run(options: &TrialOptions) -> Result<TrialReport, String> {
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir).map_err(|e| e.to_string())?;
    let state_dir = options.dir.join("state");
    let changelog = state_dir.join("changelog");
    let config = BankConfig {
        seed: options.seed,
        events: options.events,
        accounts: 50,
        ..BankConfig::default()
    };
    let total = config.total();
    let events: Vec<bson::Document> = BankWorkload::new(config.clone()).collect();
    let mut model = ReferenceModel::new();
    for event in &events {
        model.apply(event).map_err(|e| e.to_string())?;
    }
    let last_time = events
        .last()
        .and_then(|e| e.get_timestamp("clusterTime").ok())
        .map(|ts| ClusterTime::new(ts.time, ts.increment))
        .ok_or("an empty workload")?;
    let server = ChangeStreamServer::start().map_err(|e| e.to_string())?;
    let start_at = format!("{}", config.start_time);
    let spawn = |crash: Option<&str>, workers: usize| -> Result<Child, String> {
        let mut command = (options.follow)();
        command
            .args([
                "--uri",
                &server.uri(),
                "--db",
                DATABASE,
                "--coll",
                COLLECTION,
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(if options.initial_snapshot {
                vec!["--initial-snapshot".to_string()]
            } else {
                vec!["--start-at".to_string(), start_at.clone()]
            })
            .args(["--checkpoint-ms", &options.checkpoint_ms.to_string()])
            .args(["--roll-rows", "400"])
            // Small, so that bases are compacted (and crashed into) during the trials.
            .args(["--compact-bytes", "20000"])
            .args(["--workers", &workers.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(point) = crash {
            command
                .env("CHANGEFLOW_CRASH_AT", point)
                .env("CHANGEFLOW_CRASH_ODDS", "3");
        }
        command
            .spawn()
            .map_err(|e| format!("cannot run follow: {e}"))
    };

    let mut report = TrialReport {
        events: events.len(),
        ..TrialReport::default()
    };
    let mut rng = Rng(options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let share = events.len().div_ceil(options.trials.max(1) + 1);
    // The server only ever holds whole transactions: a MongoDB snapshot never sees part of one
    // (its writes become visible at its commit), but the test server's versions follow its log
    // entry by entry, and the bank workload has transactions over several entries.
    let mut pending = transactions_whole(&events);
    let push = |units: Vec<Vec<&bson::Document>>| -> Result<(), String> {
        for event in units.into_iter().flatten() {
            server
                .push(event.clone())
                .map_err(|e| format!("push: {}", e.0))?;
        }
        Ok(())
    };
    if options.initial_snapshot {
        // The collection already holds data when the pipeline first starts.
        push(take_events(&mut pending, share))?;
    }
    let committed = || -> Result<u64, String> {
        Ok(Manifest::read(&state_dir)
            .map_err(|e| e.to_string())?
            .map_or(0, |m| m.checkpoint))
    };
    for trial in 0..options.trials {
        let before = committed()?;
        let crash = (trial % 2 == 1).then(|| CRASH_POINTS[rng.below(5) as usize]);
        let mut child = spawn(crash, 1 + trial % 3 / 2)?;
        // This trial's share of the workload arrives while the child runs.
        let life =
            Duration::from_millis(50 + rng.below(options.max_life.as_millis().max(51) as u64 - 50));
        let begun = Instant::now();
        let mut chunk = take_events(&mut pending, share).into();
        // Spread over 80 % of the child's life, about 16 events at a time: kills land mid-batch.
        let steps = share.div_ceil(16).max(1) as u32;
        let pause = life.mul_f64(0.8) / steps;
        loop {
            let group = take_events(&mut chunk, 16);
            if group.is_empty() {
                break;
            }
            push(group)?;
            std::thread::sleep(pause);
        }
        if let Some(rest) = life.checked_sub(begun.elapsed()) {
            std::thread::sleep(rest);
        }
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                let stderr = read_stderr(&mut child);
                if stderr.contains("injected crash") {
                    report.injected += 1;
                } else {
                    return Err(format!(
                        "trial {trial}: follow exited on its own ({status}): {stderr}"
                    ));
                }
            }
            None => {
                child.kill().map_err(|e| e.to_string())?;
                let _ = child.wait();
                report.killed += 1;
            }
        }
        if committed()? > before {
            report.advanced += 1;
        }
    }
    push(pending.into())?;

    // The last run catches up and is stopped gracefully.
    let mut child = spawn(None, 2)?;
    // An idle replica set still moves its clock (periodic no-op writes), which is what lets an
    // idle stream's frontier pass its last event; the test server does it when asked.
    let deadline = Instant::now() + Duration::from_secs(if options.trials < 5 { 20 } else { 120 });
    loop {
        let caught_up = Manifest::read(&state_dir)
            .map_err(|e| e.to_string())?
            .is_some_and(|m| m.frontier > last_time);
        if caught_up {
            break;
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the last run exited ({status}) before catching up: {}",
                read_stderr(&mut child)
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let manifest = Manifest::read(&state_dir).ok().flatten();
            return Err(format!(
                "the last run did not catch up to {last_time} within 120 s (last checkpoint: \
                 {:?}): {}",
                manifest.map(|m| (m.checkpoint, m.frontier)),
                read_stderr(&mut child)
            ));
        }
        server.noop();
        std::thread::sleep(Duration::from_millis(50));
    }
    let before_stop = committed()?;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if !term.success() {
        return Err("cannot send SIGTERM".into());
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "a graceful stop must exit 0, got {status}: {}",
            read_stderr(&mut child)
        ));
    }
    report.checkpoints = committed()?;
    if report.checkpoints <= before_stop {
        return Err(format!(
            "a graceful stop must commit a final checkpoint (still {before_stop})"
        ));
    }

    check_changelog(&changelog, &model, total, &mut report)?;
    check_state(&state_dir, &model, &mut report)?;
    Ok(report)
}

/// The events in units that are pushed whole: a transaction (its run of events with one
/// `lsid` + `txnNumber`) or a single plain event.
fn transactions_whole(events: &[bson::Document]) -> VecDeque<Vec<&bson::Document>> {
    let txn = |e: &bson::Document| {
        e.get("txnNumber")
            .map(|n| (e.get("lsid").cloned(), n.clone()))
    };
    let mut units: VecDeque<Vec<&bson::Document>> = VecDeque::new();
    for event in events {
        match units.back_mut() {
            Some(last)
                if txn(event).is_some() && last.last().and_then(|l| txn(l)) == txn(event) =>
            {
                last.push(event)
            }
            _ => units.push_back(vec![event]),
        }
    }
    units
}

/// Whole units from the front of `units` until they hold at least `n` events.
fn take_events<'a>(
    units: &mut VecDeque<Vec<&'a bson::Document>>,
    n: usize,
) -> Vec<Vec<&'a bson::Document>> {
    let mut taken = Vec::new();
    let mut count = 0;
    while count < n {
        let Some(unit) = units.pop_front() else { break };
        count += unit.len();
        taken.push(unit);
    }
    taken
}

fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// One committed row: account, balance, diff.
pub type Row = (i64, i64, i64);

fn int_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no column {name}"))?;
    let any = column.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        Ok((0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i)))
            .collect())
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        Ok((0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i) as i64))
            .collect())
    } else if let Some(a) = any.downcast_ref::<UInt64Array>() {
        Ok((0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i) as i64))
            .collect())
    } else {
        Err(format!("column {name} is {}", column.data_type()))
    }
}

/// Reads every committed changelog file of `follow` over the bank workload: `(account,
/// balance, diff)` rows by time, and the number of files. A change `(time, account, sign)` found
/// twice is an error.
pub fn read_changelog(dir: &Path) -> Result<(BTreeMap<u64, Vec<Row>>, usize), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut times: BTreeMap<u64, Vec<Row>> = BTreeMap::new();
    // Where each change (time, account, sign) was committed: at most once, in one file.
    let mut seen: BTreeMap<(u64, i64, bool), PathBuf> = BTreeMap::new();
    for path in &files {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let (ids, balances) = (int_column(&batch, "_id")?, int_column(&batch, "balance")?);
            let (time, diff) = (int_column(&batch, "_time")?, int_column(&batch, "_diff")?);
            for row in 0..batch.num_rows() {
                let (Some(id), Some(t), Some(d)) = (ids[row], time[row], diff[row]) else {
                    return Err(format!("{}: a row without _id/_time/_diff", path.display()));
                };
                let balance = balances[row].ok_or("a row without balance")?;
                if let Some(first) = seen.insert((t as u64, id, d > 0), path.clone()) {
                    return Err(format!(
                        "time {} committed twice (account {id}, diff {d}): in {} and {}",
                        ClusterTime::from_u64(t as u64),
                        first.display(),
                        path.display()
                    ));
                }
                times.entry(t as u64).or_default().push((id, balance, d));
            }
        }
    }
    Ok((times, files.len()))
}

fn check_changelog(
    dir: &Path,
    model: &ReferenceModel,
    total: i64,
    report: &mut TrialReport,
) -> Result<(), String> {
    let (times, files) = read_changelog(dir)?;
    report.files = files;
    let mut balances: BTreeMap<i64, i64> = BTreeMap::new();
    for (time, rows) in &times {
        let time = ClusterTime::from_u64(*time);
        for (id, balance, diff) in rows.iter().filter(|r| r.2 < 0) {
            if *diff != -1 || balances.remove(id) != Some(*balance) {
                return Err(format!(
                    "at {time}: retraction of account {id} with balance {balance} does not match \
                     the committed state (a change lost or committed twice)"
                ));
            }
        }
        for (id, balance, diff) in rows.iter().filter(|r| r.2 > 0) {
            if *diff != 1 || balances.insert(*id, *balance).is_some() {
                return Err(format!(
                    "at {time}: account {id} inserted twice (a change committed twice)"
                ));
            }
        }
        let sum: i64 = balances.values().sum();
        if sum != total {
            return Err(format!(
                "at {time}: balances sum to {sum}, not {total}: a transaction was split"
            ));
        }
        report.rows += rows.len();
    }
    report.times = times.len();
    let expected: BTreeMap<i64, i64> = model
        .documents()
        .values()
        .filter_map(|d| Some((bson_int(d.get("_id")?)?, d.get_i64("balance").ok()?)))
        .collect();
    if balances != expected {
        return Err(format!(
            "the committed changelog sums to {} accounts that differ from the oracle's {}",
            balances.len(),
            expected.len()
        ));
    }
    Ok(())
}

fn bson_int(value: &bson::Bson) -> Option<i64> {
    match value {
        bson::Bson::Int32(v) => Some(*v as i64),
        bson::Bson::Int64(v) => Some(*v),
        _ => None,
    }
}

fn check_state(
    state_dir: &Path,
    model: &ReferenceModel,
    report: &mut TrialReport,
) -> Result<(), String> {
    let checkpoints = Checkpoints::open(state_dir, Duration::from_secs(3600), SourceStatus::new())
        .map_err(|e| e.to_string())?;
    let loaded = state::load(&checkpoints).map_err(|e| e.to_string())?;
    let mut ours: BTreeMap<i64, bson::Document> = BTreeMap::new();
    for (_, doc) in loaded {
        let doc = doc.to_bson().map_err(|e| e.to_string())?;
        let id = doc
            .get("_id")
            .and_then(bson_int)
            .ok_or("a document without _id")?;
        ours.insert(id, doc);
    }
    let theirs: BTreeMap<i64, bson::Document> = model
        .documents()
        .values()
        .filter_map(|d| Some((bson_int(d.get("_id")?)?, d.clone())))
        .collect();
    if ours != theirs {
        let differing = theirs
            .iter()
            .find(|(id, d)| ours.get(id) != Some(d))
            .map(|(id, _)| *id);
        return Err(format!(
            "the persisted state ({} documents) differs from the oracle ({}), e.g. account {differing:?}",
            ours.len(),
            theirs.len()
        ));
    }
    report.documents = ours.len();
    Ok(())
}
