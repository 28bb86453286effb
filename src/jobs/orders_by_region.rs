//! The orders job: two group-by views over `shop.orders`, from a file of change events or a
//! live change stream.
//!
//! ```text
//!   replay(file) or live::watch(uri) ──▶ document_state ──▶ materialize ─┬─▶ V1: per region: orders = count, amount = sum(amount)
//!                                                                       └─▶ V2: per customer_id: orders = count
//!   V1, V2 ──▶ ViewHandle ──▶ table on stdout, v1.parquet, v2.parquet (and an optional changelog)
//! ```
//!
//! Update events may lack `fullDocument`: document state applies their `updateDescription`, so
//! the views are exact either way. A live stream started "now" knows only the documents it sees
//! inserted (or replaced, or updated with `fullDocument`); updates of older documents count as
//! unapplied until a consistent-start snapshot exists.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use changeflow_core::ClusterTime;
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_operators::handle::{ViewHandle, on_closed_times};
use changeflow_operators::value::{Value, ValueType};
use changeflow_operators::views::{GroupBy, Row, materialize};
use changeflow_sinks::arrow::{rows_to_batch, schema_of};
use changeflow_sinks::changelog::ChangelogWriter;
use changeflow_sinks::parquet::write_parquet;
use changeflow_sinks::{SinkError, table};
use changeflow_sources::SourceError;
use changeflow_sources::commit_time::GroupingCounts;
use changeflow_sources::live::{self, LiveOptions, WatchTarget};
use changeflow_sources::reader::{BadInputPolicy, ReaderOptions};
use changeflow_sources::replay::{ReplayOptions, replay};
use timely::dataflow::operators::{Concat, Probe};

use crate::runtime;

/// What to run.
#[derive(Clone, Debug)]
pub struct OrdersOptions {
    /// The change-event file (JSON lines, or BSON if it ends in `.bson`).
    pub input: PathBuf,
    /// Where `v1.parquet` and `v2.parquet` go (created if missing).
    pub out: PathBuf,
    /// Timely worker threads.
    pub workers: usize,
    /// Write bad lines here and carry on, instead of stopping at the first.
    pub dead_letter: Option<PathBuf>,
    /// Keep reading as the file grows.
    pub follow: bool,
    /// With `follow`: stop after this long without new events.
    pub idle_timeout: Option<Duration>,
    /// Also write V1's changes as JSON lines to this file.
    pub changelog: Option<PathBuf>,
    /// Read a live change stream instead of `input` (needs the `live` feature).
    pub live: Option<LiveOptions>,
}

impl OrdersOptions {
    /// Reads `input` once with one worker, writing into `out`.
    pub fn new(input: impl AsRef<Path>, out: impl AsRef<Path>) -> Self {
        OrdersOptions {
            input: input.as_ref().into(),
            out: out.as_ref().into(),
            workers: 1,
            dead_letter: None,
            follow: false,
            idle_timeout: None,
            changelog: None,
            live: None,
        }
    }

    /// Follows the change stream in `live` instead of a file.
    pub fn live(live: LiveOptions, out: impl AsRef<Path>) -> Self {
        let mut options = OrdersOptions::new("", out);
        options.input = PathBuf::from(live.describe());
        options.live = Some(live);
        options
    }
}

/// What the job did.
#[derive(Clone, Debug)]
pub struct OrdersReport {
    /// Change events read.
    pub events: u64,
    /// Bad lines sent to the dead-letter file.
    pub dead_lettered: u64,
    /// Updates that could not be applied (no previous version and no full document).
    pub unapplied: u64,
    /// Multi-document transactions in the stream, each applied whole at its commit time.
    pub transactions: GroupingCounts,
    /// Wall-clock time of the dataflow.
    pub elapsed: Duration,
    /// V1 rows: `[region, orders, amount]`, sorted by region.
    pub v1: Vec<Row>,
    /// V2 rows: `[customer_id, orders]`, sorted by customer.
    pub v2: Vec<Row>,
    /// The last closed time.
    pub last_time: Option<ClusterTime>,
    /// Where the Parquet files went.
    pub files: Vec<PathBuf>,
}

impl OrdersReport {
    /// Events per second over the dataflow's run time.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why the job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The source stopped on bad input or an unreadable file.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing output failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The dataflow itself failed (a worker panicked, bad worker configuration).
    #[error("dataflow failed: {0}")]
    Dataflow(String),
}

/// V1: per region, the number of live orders and the sum of their amounts.
pub fn v1_definition() -> GroupBy {
    GroupBy::new("shop.orders")
        .key("region", "region", ValueType::String)
        .count("orders")
        .sum("amount", "amount", ValueType::Double)
}

/// V2: per customer, the number of live orders.
pub fn v2_definition() -> GroupBy {
    GroupBy::new("shop.orders")
        .key("customer_id", "customer_id", ValueType::Int64)
        .count("orders")
}

/// Runs the job to the end of its input and writes its files.
pub fn run(options: &OrdersOptions) -> Result<OrdersReport, JobError> {
    let mut reader = ReaderOptions::new(&options.input);
    reader.follow = options.follow;
    if let Some(path) = &options.dead_letter {
        reader.bad_input = BadInputPolicy::DeadLetter(path.clone());
    }
    let mut replay_options = ReplayOptions::new(reader);
    replay_options.idle_timeout = options.idle_timeout;
    let live_options = options.live.clone();
    let status = match &live_options {
        Some(live) => live.status(),
        None => replay_options.status(),
    };
    let doc_stats = DocumentStats::new();
    let (v1, v2) = (v1_definition(), v2_definition());
    let (v1_handle, v2_handle) = (ViewHandle::<Row>::new(), ViewHandle::<Row>::new());
    let changelog = match &options.changelog {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| SinkError::Write {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let writer = ChangelogWriter::new(
                std::io::BufWriter::new(file),
                v1.columns().into_iter().map(|(n, _)| n).collect(),
            );
            // The writer, and the first write error (reported when the job ends).
            Some(Arc::new(Mutex::new((writer, None::<String>))))
        }
        None => None,
    };

    let started = Instant::now();
    let worker_job = {
        let (status, doc_stats, v1_handle, v2_handle, changelog) = (
            status.clone(),
            doc_stats.clone(),
            v1_handle.clone(),
            v2_handle.clone(),
            changelog.clone(),
        );
        move |worker: &mut timely::worker::Worker| {
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let events = match &live_options {
                    Some(live) => live::watch(scope, live.clone()),
                    None => replay(scope, replay_options.clone()),
                };
                let documents = document_state(events, doc_stats.clone());
                let done = match changelog.clone() {
                    // The views straight into their handles: their groups are read in place.
                    None => materialize(
                        documents,
                        &[
                            (v1.clone(), v1_handle.clone()),
                            (v2.clone(), v2_handle.clone()),
                        ],
                    ),
                    // V1's changes are also written out, so V1 is built as a collection.
                    Some(changelog) => {
                        let view1 = v1.build(documents.clone());
                        on_closed_times(
                            view1.clone(),
                            move |time, changes| {
                                if let Ok(mut sink) = changelog.lock() {
                                    let (writer, failed) = &mut *sink;
                                    if failed.is_none()
                                        && let Err(e) = writer.write_changes(time, changes)
                                    {
                                        *failed = Some(e.to_string());
                                    }
                                }
                            },
                            |_| {},
                        );
                        let done = v1_handle.attach(view1);
                        done.concat(materialize(documents, &[(v2.clone(), v2_handle.clone())]))
                    }
                };
                // Probing what the handles have applied, not the views, keeps each view at one
                // consumer (no copy of its changes for a probe).
                let (probe, _) = done.probe();
                probe
            });
            runtime::drive(worker, &probe, std::slice::from_ref(&status))
        }
    };
    super::run_to_end(options.workers, &status, worker_job)?;
    let elapsed = started.elapsed();
    if let Some(changelog) = changelog
        && let Ok(mut sink) = changelog.lock()
    {
        let (writer, failed) = &mut *sink;
        let flushed = writer.flush().map_err(|e| e.to_string());
        if let Some(reason) = failed.take().or(flushed.err()) {
            return Err(SinkError::Write {
                path: options.changelog.clone().unwrap_or_default(),
                reason,
            }
            .into());
        }
    }

    let (s1, s2) = (v1_handle.snapshot(), v2_handle.snapshot());
    let rows = |rows: Vec<(Row, isize)>| {
        rows.into_iter()
            .flat_map(|(row, n)| std::iter::repeat_n(row, n.max(0) as usize))
            .collect::<Vec<_>>()
    };
    let (v1_rows, v2_rows) = (rows(s1.rows), rows(s2.rows));
    std::fs::create_dir_all(&options.out).map_err(|e| SinkError::Write {
        path: options.out.clone(),
        reason: e.to_string(),
    })?;
    let mut files = Vec::new();
    for (name, definition, rows) in [
        ("v1.parquet", v1_definition(), &v1_rows),
        ("v2.parquet", v2_definition(), &v2_rows),
    ] {
        let path = options.out.join(name);
        let batch =
            rows_to_batch(&schema_of(&definition.columns()), rows).map_err(SinkError::from)?;
        write_parquet(&path, &batch, None)?;
        files.push(path);
    }
    Ok(OrdersReport {
        events: status.events(),
        dead_lettered: status.dead_lettered(),
        unapplied: doc_stats.unapplied(),
        transactions: status.transactions(),
        elapsed,
        v1: v1_rows,
        v2: v2_rows,
        last_time: s1.time.max(s2.time),
        files,
    })
}

/// V1 as a text table.
pub fn v1_table(report: &OrdersReport) -> String {
    table::format_table(&["region", "orders", "amount"], &report.v1)
}

/// Sums V1's order counts (a quick consistency figure for the summary line).
pub fn live_orders(report: &OrdersReport) -> i64 {
    report
        .v1
        .iter()
        .filter_map(|r| match r.get(1) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .sum()
}

/// The bundled sample: `data/orders.jsonl` in the source tree.
pub fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("orders.jsonl")
}

/// Command-line arguments of the job (shared by the example and the `changeflow` binary).
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Change-event file: Extended JSON lines, or BSON if it ends in `.bson` [default: the bundled sample]
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output directory for v1.parquet and v2.parquet [default: target/changeflow/orders_by_region]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Write malformed lines to this file and carry on (default: stop at the first)
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
    /// Keep reading as the input file grows
    #[arg(long)]
    pub follow: bool,
    /// With --follow or --uri: stop after this many seconds without new events
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Also write V1's changes as JSON lines (with _time and _diff) to this file
    #[arg(long)]
    pub changelog: Option<PathBuf>,
    /// Follow a live change stream at this MongoDB URI (a replica set) instead of a file; needs
    /// `--features live`
    #[arg(long)]
    pub uri: Option<String>,
    /// With --uri: the database to watch
    #[arg(long, default_value = "shop")]
    pub db: String,
    /// With --uri: the collection to watch
    #[arg(long, default_value = "orders")]
    pub coll: String,
    /// With --uri: stop after this many events (default: run until Ctrl-C or an invalidate)
    #[arg(long)]
    pub max_events: Option<u64>,
}

/// The live options the `--uri` arguments ask for, or an error message if this build has no live
/// source.
pub fn live_options(args: &Args) -> Result<Option<LiveOptions>, String> {
    let Some(uri) = &args.uri else {
        return Ok(None);
    };
    if !live::AVAILABLE {
        return Err(
            "--uri needs the live MongoDB source, which this build does not have: add `--features live`, e.g. `cargo run --release --features live --example orders_by_region -- --uri mongodb://…`"
                .into(),
        );
    }
    let mut live = LiveOptions::new(uri, WatchTarget::collection(&args.db, &args.coll));
    live.idle_timeout = args.idle_timeout.map(Duration::from_secs_f64);
    live.max_events = args.max_events;
    Ok(Some(live))
}

/// Runs the job from command-line arguments, printing V1 and a summary; the exit code is 1 on
/// failure, with the error on stderr.
pub fn main_with(args: Args) -> std::process::ExitCode {
    crate::runtime::keep_freed_memory();
    let live = match live_options(&args) {
        Ok(live) => live,
        Err(message) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let input = match &live {
        Some(live) => PathBuf::from(live.describe()),
        None => args.input.unwrap_or_else(bundled_sample),
    };
    let out = args.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("changeflow")
            .join("orders_by_region")
    });
    let mut options = OrdersOptions::new(&input, &out);
    options.workers = args.workers;
    options.dead_letter = args.dead_letter;
    options.follow = args.follow;
    options.idle_timeout = args.idle_timeout.map(Duration::from_secs_f64);
    options.changelog = args.changelog;
    options.live = live;
    match run(&options) {
        Ok(report) => {
            println!("V1: live orders per region ({})", input.display());
            print!("{}", v1_table(&report));
            println!();
            println!(
                "{} events in {:.2} s ({:.0} events/s, {} worker{}); {} live orders; V2: {} customers",
                report.events,
                report.elapsed.as_secs_f64(),
                report.events_per_second(),
                options.workers,
                if options.workers == 1 { "" } else { "s" },
                live_orders(&report),
                report.v2.len(),
            );
            let txns = &report.transactions;
            println!(
                "{} transactions ({} events, the largest {}), each applied whole at its commit time",
                txns.transactions, txns.transaction_events, txns.largest_transaction
            );
            if report.dead_lettered > 0 {
                println!(
                    "{} bad lines written to the dead-letter file",
                    report.dead_lettered
                );
            }
            if report.unapplied > 0 {
                println!(
                    "{} updates could not be applied (no previous version and no full document)",
                    report.unapplied
                );
            }
            if let Some(peak) = runtime::peak_rss_bytes() {
                println!("peak memory: {:.1} MiB", peak as f64 / (1024.0 * 1024.0));
            }
            for file in &report.files {
                println!("wrote {}", file.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
