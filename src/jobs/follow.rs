//! `changeflow follow`: a live collection kept as an exactly-once Parquet changelog and a
//! persisted document state, restartable after any crash.
//!
//! ```text
//!   state dir: manifest.json ──(F, token K)──▶ live source: resume after K, drop what is
//!              state/ base + segments ──load──▶ restore: the documents at F as inserts at F-1
//!                                                     │
//!                       live events ──┬───────────────┘
//!                                     ▼
//!                               document_state ──┬──▶ state store (segments; base compaction)
//!                                                └──▶ DB.COLL changes ──ArrowSink──▶ OUT/changes-NNNNNN.parquet
//!                                                     (times before F dropped: already committed)
//!   every interval: the source records a candidate (F', K'); each participant closes its output
//!   at F' and acks; the manifest (F', K', positions) is then written atomically
//! ```
//!
//! A first start needs a definite start (`--start-at`) or an initial snapshot
//! (`--initial-snapshot`), so that a crash before the first checkpoint restarts from the same
//! place (or takes a new snapshot). `--on-history-lost resnapshot` re-reads the collection when
//! the stream's history is gone and emits the difference with the restored state at one time. SIGTERM or Ctrl-C ends the input: the last
//! checkpoint covers everything read and the process exits 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use changeflow_core::{ChangeEvent, ClusterTime, synthetic};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sinks::SinkError;
use changeflow_sinks::arrow::schema::SchemaSource;
use changeflow_sinks::checkpoint::{CheckpointStats, Checkpoints, state};
use changeflow_sinks::dataflow::ArrowSink;
use changeflow_sinks::parquet::{ParquetOptions, ParquetWriter};
use changeflow_sinks::writer::RollPolicy;
use changeflow_sources::live::snapshot::{HistoryLostPolicy, SnapshotFallback, SnapshotOptions};
use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget, watch};
use changeflow_sources::memory;
use timely::dataflow::operators::Concat;

use super::orders_by_region::JobError;
use crate::runtime;

/// What to follow and where to keep it.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// The live source (its start is replaced by the checkpoint's on a restart).
    pub live: LiveOptions,
    /// The namespace written to the changelog, `db.coll`.
    pub namespace: String,
    /// The state directory: manifest, persisted state, lock.
    pub state_dir: PathBuf,
    /// The changelog's directory.
    pub out: PathBuf,
    /// How often a checkpoint is taken.
    pub interval: Duration,
    /// Rows per changelog file before it rolls (files also end at every checkpoint).
    pub roll_rows: u64,
    /// Timely worker threads.
    pub workers: usize,
    /// When the persisted state is compacted into a new base.
    pub state: state::StateOptions,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct FollowReport {
    /// Events the source emitted (after dropping what a restart re-read).
    pub events: u64,
    /// Events a restart re-read and dropped (committed before the crash).
    pub skipped: u64,
    /// Documents restored from the checkpoint at start.
    pub restored: usize,
    /// The checkpoint restarted from, if any.
    pub restored_frontier: Option<ClusterTime>,
    /// Checkpoints taken by this run.
    pub checkpoints: CheckpointStats,
    /// The persisted state's counters.
    pub state: state::StateStats,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// A flag that SIGTERM and SIGINT set, so they end the input gracefully (a final checkpoint,
/// exit 0).
fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&flag)) {
            eprintln!("warning: cannot handle signal {signal}: {e}");
        }
    }
    flag
}

/// Runs until the input ends (SIGTERM, Ctrl-C, `max_events`, an idle timeout) or fails.
pub fn run(options: &FollowOptions) -> Result<FollowReport, JobError> {
    let started = Instant::now();
    let mut live = options.live.clone();
    let status = live.status();
    let checkpoints = Checkpoints::open(&options.state_dir, options.interval, status.clone())?;
    match checkpoints.resume_point() {
        Some((frontier, token)) => live.resume_from_checkpoint(frontier, token),
        None if live.start == StartAt::Now && !live.takes_initial_snapshot() => {
            return Err(SinkError::Checkpoint {
                path: options.state_dir.clone(),
                reason: "a first start needs a definite start point (--start-at) or an initial \
                         snapshot (--initial-snapshot): a crash before the first checkpoint must \
                         restart from the same place"
                    .into(),
            }
            .into());
        }
        None => {}
    }
    let restored = state::load(&checkpoints)?;
    let restore_time = checkpoints
        .resume_point()
        .map(|(f, _)| ClusterTime::from_u64(f.as_u64().saturating_sub(1)));
    let mut restore_events = Vec::with_capacity(restored.len());
    if let Some(time) = restore_time {
        for (seq, (ns, doc)) in restored.iter().enumerate() {
            let event = synthetic::insert(ns, doc, time, synthetic::Origin::Restore, seq as u64)
                .map_err(|e| SinkError::Checkpoint {
                    path: state::state_dir(&checkpoints),
                    reason: e.to_string(),
                })?;
            restore_events.push(event);
        }
    }
    let restore_events: Arc<Vec<ChangeEvent>> = Arc::new(restore_events);
    let restored = Arc::new(restored);

    let stopper = live.stopper.clone();
    let signalled = stop_on_signals();
    let watcher_done = Arc::new(AtomicBool::new(false));
    {
        let (stopper, done) = (stopper.clone(), watcher_done.clone());
        let progress_status = status.clone();
        let mut progress_printed = Instant::now();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if signalled.load(Ordering::SeqCst) {
                    stopper.stop();
                    return;
                }
                // A long initial snapshot (or re-snapshot) says how far it got, once a second.
                if progress_printed.elapsed() >= Duration::from_secs(1) {
                    progress_printed = Instant::now();
                    if let Some(progress) = progress_status.snapshot_progress()
                        && !progress.done
                    {
                        eprintln!("{progress}");
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    let sink = ArrowSink::checkpointed(&checkpoints, "changelog");
    let parquet = ParquetOptions {
        roll: RollPolicy::rows(options.roll_rows.max(1)),
        ..ParquetOptions::default()
    };
    let state_stats = Arc::new(std::sync::Mutex::new(None));
    let worker_job = {
        let (status, checkpoints, sink, out, namespace) = (
            status.clone(),
            checkpoints.clone(),
            sink.clone(),
            options.out.clone(),
            options.namespace.clone(),
        );
        let (restore_events, restored, state_stats, state_options) = (
            restore_events.clone(),
            restored.clone(),
            state_stats.clone(),
            options.state,
        );
        move |worker: &mut timely::worker::Worker| -> Result<(), String> {
            let writer = ParquetWriter::new(&out, "changes", parquet).map_err(|e| e.to_string())?;
            let leader = worker.index() == 0;
            let live = live.clone();
            let built = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let events = watch(scope, live);
                let mine = if leader {
                    restore_events.as_ref().clone()
                } else {
                    Vec::new()
                };
                let events = events.concat(memory::from_events(scope, mine));
                let documents = document_state(events, DocumentStats::new());
                let stats =
                    state::attach(documents.clone(), &checkpoints, &restored, state_options)?;
                sink.attach_documents(
                    documents.clone(),
                    &namespace,
                    SchemaSource::inferred(),
                    writer,
                );
                let (probe, _) = documents.probe();
                Ok::<_, SinkError>((probe, stats))
            });
            let (probe, stats) = built.map_err(|e| e.to_string())?;
            if leader {
                if let Ok(mut slot) = state_stats.lock() {
                    *slot = Some(stats);
                }
                checkpoints.seal();
            }
            runtime::drive_until(worker, &probe, std::slice::from_ref(&status), || {
                checkpoints
                    .failed()
                    .then(|| "a checkpoint could not be written".to_string())
            })
        }
    };
    let result = super::run_to_end(options.workers, &status, worker_job);
    watcher_done.store(true, Ordering::SeqCst);
    checkpoints.stop();
    sink.result()?;
    checkpoints.result()?;
    result?;
    let state = state_stats
        .lock()
        .ok()
        .and_then(|s| s.as_ref().and_then(|s| s.lock().ok().map(|s| *s)))
        .unwrap_or_default();
    Ok(FollowReport {
        events: status.events(),
        skipped: status.skipped(),
        restored: restored.len(),
        restored_frontier: checkpoints.restored().map(|m| m.frontier),
        checkpoints: checkpoints.stats(),
        state,
        elapsed: started.elapsed(),
    })
}

/// Command-line arguments of `changeflow follow`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// MongoDB connection string (a replica set or mongos)
    #[arg(long)]
    pub uri: String,
    /// Database of the collection
    #[arg(long)]
    pub db: String,
    /// Collection to follow
    #[arg(long)]
    pub coll: String,
    /// State directory (manifest, persisted state); reused on restart
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Changelog directory [default: STATE_DIR/changelog]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// First start at this cluster time, `T` or `T.I` (ignored on a restart)
    #[arg(long, conflicts_with = "initial_snapshot")]
    pub start_at: Option<String>,
    /// First start with a consistent snapshot of the collection (read at one cluster time in
    /// parallel `_id` ranges), then the stream from that time (ignored on a restart)
    #[arg(long)]
    pub initial_snapshot: bool,
    /// `_id` ranges read at once by a snapshot
    #[arg(long, default_value_t = 4)]
    pub snapshot_parallelism: usize,
    /// On a server without snapshot reads: `majority` (reads reconciled with the stream) or `fail`
    #[arg(long, default_value = "majority")]
    pub snapshot_fallback: String,
    /// When the stream's history is gone (code 286): `fail` (the default) or `resnapshot` (read
    /// the collection again and emit the difference at one time)
    #[arg(long, default_value = "fail")]
    pub on_history_lost: String,
    /// Milliseconds between checkpoints
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_ms: u64,
    /// Rows per changelog file before it rolls
    #[arg(long, default_value_t = 100_000)]
    pub roll_rows: u64,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// End after this many seconds without an event
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Compact the persisted state into a new base once the segments since the last base
    /// exceed it and this many bytes
    #[arg(long, default_value_t = 16 << 20)]
    pub compact_bytes: u64,
}

fn parse_time(text: &str) -> Option<ClusterTime> {
    let (t, i) = text.split_once('.').unwrap_or((text, "0"));
    Some(ClusterTime::new(t.parse().ok()?, i.parse().ok()?))
}

/// Runs `changeflow follow`; prints a one-line report; exit code 1 on failure.
pub fn main_with(args: Args) -> std::process::ExitCode {
    crate::runtime::keep_freed_memory();
    let mut live = LiveOptions::new(&args.uri, WatchTarget::collection(&args.db, &args.coll));
    if let Some(text) = &args.start_at {
        match parse_time(text) {
            Some(time) => live.start = StartAt::OperationTime(time),
            None => {
                eprintln!("error: --start-at {text:?} is not a cluster time (T or T.I)");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if args.initial_snapshot {
        let fallback = match args.snapshot_fallback.as_str() {
            "majority" => SnapshotFallback::Majority,
            "fail" => SnapshotFallback::Fail,
            other => {
                eprintln!("error: --snapshot-fallback {other:?} is not majority or fail");
                return std::process::ExitCode::FAILURE;
            }
        };
        live.initial_snapshot = Some(SnapshotOptions {
            parallelism: args.snapshot_parallelism.max(1),
            fallback,
            ..SnapshotOptions::default()
        });
    }
    live.on_history_lost = match args.on_history_lost.as_str() {
        "fail" => HistoryLostPolicy::Fail,
        "resnapshot" => HistoryLostPolicy::Resnapshot,
        other => {
            eprintln!("error: --on-history-lost {other:?} is not fail or resnapshot");
            return std::process::ExitCode::FAILURE;
        }
    };
    live.idle_timeout = args.idle_timeout.map(Duration::from_secs_f64);
    live.max_await_time = Some(Duration::from_millis(200));
    let options = FollowOptions {
        live,
        namespace: format!("{}.{}", args.db, args.coll),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| args.state_dir.join("changelog")),
        state_dir: args.state_dir.clone(),
        interval: Duration::from_millis(args.checkpoint_ms.max(1)),
        roll_rows: args.roll_rows,
        workers: args.workers,
        state: state::StateOptions {
            compact_min_bytes: args.compact_bytes,
        },
    };
    match run(&options) {
        Ok(report) => {
            println!(
                "{} events ({} re-read and dropped), {} documents restored{}, {} checkpoints, \
                 state {} documents in {} bytes, {:.2} s",
                report.events,
                report.skipped,
                report.restored,
                report
                    .restored_frontier
                    .map(|f| format!(" at {f}"))
                    .unwrap_or_default(),
                report.checkpoints.committed,
                report.state.documents,
                report.state.bytes,
                report.elapsed.as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
