//! The `view` job: a MongoDB aggregation pipeline kept up to date over a change stream.
//!
//! ```text
//!   replay(file) or live::watch(uri) ──▶ document_state ──▶ PipelineView(ns, pipeline) ──┬──▶ each closed time: changes
//!   replay(--lookup-input NS=FILE)   ──▶ document_state ──▶ ($lookup's foreign side) ─┘    as JSON lines (_time, _diff)
//!                                                                                      ├──▶ --out / --ipc: the changelog
//!                                                                                      │    through the Arrow sink
//!                                                                                      └──▶ at the end (--final): the
//!                                                                                           result, one document a line
//! ```
//!
//! The pipeline is parsed and checked before the input is opened: an unsupported stage or an
//! unknown operator is reported with its position. A runtime expression error (say `$divide`
//! by zero) is a [`StageError`] naming the document's `_id` and the stage's position. The
//! [`ErrorPolicy`] decides: fail fast (the default: the job stops at the first one), send each
//! failing document to a dead-letter file (`--dead-letter FILE`: one JSON line per failure with
//! the document's `_id`, the stage and the error), or skip it (`--skip-errors`, counted). The
//! view never shows a wrong row.
//!
//! `$lookup` reads its foreign collections from the main input (when the file or the live
//! stream carries them) or from `--lookup-input NS=FILE` files, each replayed into its own
//! document state. `--out DIR/NAME.parquet` writes the changelog as `DIR/NAME-NNNNNN.parquet`
//! (a new file when the inferred schema changes), `--ipc DIR/NAME.arrow` as Arrow IPC files
//! the same way. `--uri` follows a live change stream (the database when the pipeline has a
//! `$lookup`, else the collection); without the `live` feature it fails with
//! [`SourceError::LiveNotBuilt`] before anything runs.
//!
//! ```no_run
//! use changeflow::jobs::pipeline_view::{run, ViewOptions};
//! let mut options = ViewOptions::new("data/orders.jsonl", "shop.orders",
//!     r#"[{"$group": {"_id": "$region", "n": {"$sum": 1}}}]"#);
//! options.print_changes = false;
//! let report = run(&options, &mut std::io::stdout()).unwrap();
//! println!("{} result documents", report.result.len());
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use changeflow_core::{ClusterTime, Document};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_operators::handle::{ViewHandle, on_closed_times};
use changeflow_operators::pipeline::compile::{PipelineView, Pos, StageError};
use changeflow_operators::pipeline::parse::PipelineError;
use changeflow_sinks::arrow::schema::SchemaSource;
use changeflow_sinks::dataflow::ArrowSink;
use changeflow_sinks::ipc::{IpcFormat, IpcWriter};
use changeflow_sinks::parquet::{ParquetOptions, ParquetWriter};
use changeflow_sinks::writer::RollPolicy;
use changeflow_sources::error::SourceError;
use changeflow_sources::live::snapshot::SnapshotOptions;
use changeflow_sources::live::{self, LiveOptions, WatchTarget};
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};
use changeflow_sources::status::SourceStatus;

use crate::jobs::orders_by_region::JobError;
use crate::runtime;

/// What to run.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The change-event file.
    pub input: PathBuf,
    /// Keep reading as the file grows.
    pub follow: bool,
    /// The namespace viewed, `db.coll`.
    pub namespace: String,
    /// The pipeline, an Extended JSON array.
    pub pipeline: String,
    /// Print each closed time's changes.
    pub print_changes: bool,
    /// What a runtime expression error does.
    pub errors: ErrorPolicy,
    /// Timely worker threads.
    pub workers: usize,
    /// Other namespaces' change-event files (`$lookup`'s foreign collections).
    pub lookup_inputs: Vec<(String, PathBuf)>,
    /// Follow this live deployment instead of `input` (needs the `live` feature).
    pub uri: Option<String>,
    /// With `uri`: stop after this many events.
    pub max_events: Option<u64>,
    /// With `uri` or `follow`: stop after this long without events.
    pub idle_timeout: Option<std::time::Duration>,
    /// Write the changelog as Parquet: `DIR/NAME.parquet` gives `DIR/NAME-NNNNNN.parquet`.
    pub parquet: Option<PathBuf>,
    /// Write the changelog as Arrow IPC files: `DIR/NAME.arrow` gives `DIR/NAME-NNNNNN.arrow`.
    pub ipc: Option<PathBuf>,
}

/// What a runtime expression error (a [`StageError`]) does to the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Stop at the first one with [`ViewError::Evaluation`].
    FailFast,
    /// Leave the document out and write `{"_id", "stage", "position", "error"}` to this file
    /// (JSON lines, appended as errors happen).
    DeadLetter(PathBuf),
    /// Leave the document out, counted in [`ViewReport::skipped`].
    Skip,
}

impl ViewOptions {
    /// Reads `input` once, printing changes, failing on runtime errors.
    pub fn new(input: impl AsRef<Path>, namespace: &str, pipeline: &str) -> Self {
        ViewOptions {
            input: input.as_ref().into(),
            follow: false,
            namespace: namespace.into(),
            pipeline: pipeline.into(),
            print_changes: true,
            errors: ErrorPolicy::FailFast,
            workers: 1,
            lookup_inputs: Vec::new(),
            uri: None,
            max_events: None,
            idle_timeout: None,
            parquet: None,
            ipc: None,
        }
    }
}

/// Why the view job failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The pipeline was refused before any input was read.
    #[error("invalid pipeline: {0}")]
    Pipeline(#[from] PipelineError),
    /// A stage failed on a document (MongoDB would have failed the aggregation).
    #[error(transparent)]
    Evaluation(Box<StageError>),
    /// A `--lookup-input` that is not `DB.COLL=FILE`.
    #[error("--lookup-input {0:?}: expected DB.COLL=FILE")]
    LookupInput(String),
    /// The source or the dataflow failed.
    #[error(transparent)]
    Job(#[from] JobError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(String),
}

/// What the job produced.
#[derive(Clone, Debug)]
pub struct ViewReport {
    /// Events read.
    pub events: u64,
    /// The final result, in MongoDB's output order.
    pub result: Vec<Document>,
    /// Documents left out because a stage failed on them (dead-lettered or skipped).
    pub skipped: u64,
    /// Files written by `--out` / `--ipc`.
    pub files: Vec<PathBuf>,
    /// The last closed time.
    pub last_time: Option<ClusterTime>,
}

fn json(doc: &Document) -> String {
    let mut out = String::new();
    match bson::RawDocument::from_bytes(doc.as_bytes()) {
        Ok(raw) if changeflow_core::extjson::write_document(raw, false, &mut out).is_ok() => out,
        _ => "{}".into(),
    }
}

/// `DB.COLL=FILE` of `--lookup-input`.
///
/// ```
/// use changeflow::jobs::pipeline_view::parse_lookup_input;
/// let (ns, file) = parse_lookup_input("shop.customers=data/customers.jsonl").unwrap();
/// assert_eq!((ns.as_str(), file.to_str()), ("shop.customers", Some("data/customers.jsonl")));
/// assert!(parse_lookup_input("customers").is_err());
/// ```
pub fn parse_lookup_input(text: &str) -> Result<(String, PathBuf), ViewError> {
    match text.split_once('=') {
        Some((ns, file)) if ns.contains('.') && !file.is_empty() => Ok((ns.into(), file.into())),
        _ => Err(ViewError::LookupInput(text.into())),
    }
}

/// A file writer for `--out` / `--ipc`: the directory and the stem of `DIR/NAME.EXT`.
fn dir_and_stem(path: &Path) -> (PathBuf, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let stem = path
        .file_stem()
        .map_or_else(|| "view".to_string(), |s| s.to_string_lossy().into_owned());
    (dir, stem)
}

fn dead_letter_line(error: &StageError) -> String {
    let mut doc = bson::Document::new();
    doc.insert("_id", error.id.clone());
    doc.insert(
        "position",
        i32::try_from(error.position).unwrap_or(i32::MAX),
    );
    doc.insert("stage", error.stage.clone());
    doc.insert("operator", error.error.operator.clone());
    doc.insert("error", error.error.reason.clone());
    let mut out = String::new();
    match doc
        .to_vec()
        .ok()
        .and_then(|b| bson::RawDocumentBuf::from_bytes(b).ok())
    {
        Some(raw) if changeflow_core::extjson::write_document(&raw, false, &mut out).is_ok() => out,
        _ => format!("{{\"error\": {:?}}}", error.to_string()),
    }
}

/// Runs the view to the end of the input, writing changes (if asked) to `out`.
pub fn run(options: &ViewOptions, out: &mut (dyn Write + Send)) -> Result<ViewReport, ViewError> {
    let view = PipelineView::from_json(&options.namespace, &options.pipeline)?;
    if options.uri.is_some() && !live::AVAILABLE {
        return Err(JobError::Source(SourceError::LiveNotBuilt).into());
    }
    let live_options = options.uri.as_ref().map(|uri| {
        let (db, coll) = options
            .namespace
            .split_once('.')
            .unwrap_or((options.namespace.as_str(), ""));
        // A $lookup's foreign collections come from the same database's stream.
        let target = if view.lookup_namespaces().is_empty() {
            WatchTarget::collection(db, coll)
        } else {
            WatchTarget::Database(db.into())
        };
        let snapshot = matches!(target, WatchTarget::Collection { .. });
        let mut live = LiveOptions::new(uri, target);
        // The view starts from the collection as it is (a consistent snapshot), then follows.
        if snapshot {
            live.initial_snapshot = Some(SnapshotOptions::default());
        }
        live.max_events = options.max_events;
        live.idle_timeout = options.idle_timeout;
        live
    });
    let mut reader = ReaderOptions::new(&options.input);
    reader.follow = options.follow;
    let mut replay_options = ReplayOptions::new(reader);
    replay_options.idle_timeout = options.idle_timeout;
    let lookups: Vec<(String, ReplayOptions)> = options
        .lookup_inputs
        .iter()
        .map(|(ns, file)| (ns.clone(), ReplayOptions::new(ReaderOptions::new(file))))
        .collect();
    let mut statuses: Vec<Arc<SourceStatus>> = vec![match &live_options {
        Some(live) => live.status(),
        None => replay_options.status(),
    }];
    statuses.extend(lookups.iter().map(|(_, r)| r.status()));
    let handle: ViewHandle<(Pos, Document)> = ViewHandle::new();
    let changes: Arc<Mutex<Vec<String>>> = Arc::default();
    let stats = view.stats();
    let dead_letter = match &options.errors {
        ErrorPolicy::DeadLetter(path) => {
            stats.collect_errors(true);
            Some(
                std::fs::File::create(path)
                    .map_err(|e| ViewError::Output(format!("{}: {e}", path.display())))?,
            )
        }
        _ => None,
    };
    let fail_fast = options.errors == ErrorPolicy::FailFast;
    let (parquet_sink, ipc_sink) = (ArrowSink::new(), ArrowSink::new());
    let parquet_target = options.parquet.as_deref().map(dir_and_stem);
    let ipc_target = options.ipc.as_deref().map(dir_and_stem);
    if let Some((dir, stem)) = &parquet_target {
        // Fails early on an unusable directory.
        ParquetWriter::new(dir, stem, ParquetOptions::default())
            .map_err(|e| ViewError::Output(e.to_string()))?;
    }

    let worker_job = {
        let (statuses, handle, changes, view) = (
            statuses.clone(),
            handle.clone(),
            changes.clone(),
            view.clone(),
        );
        let (parquet_sink, ipc_sink) = (parquet_sink.clone(), ipc_sink.clone());
        let (parquet_target, ipc_target) = (parquet_target.clone(), ipc_target.clone());
        let print = options.print_changes;
        let stats = stats.clone();
        move |worker: &mut timely::worker::Worker| {
            let parquet_writer = match &parquet_target {
                Some((dir, stem)) => Some(
                    ParquetWriter::new(dir, stem, ParquetOptions::default())
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let events = match &live_options {
                    Some(live) => live::watch(scope, live.clone()),
                    None => replay(scope, replay_options.clone()),
                };
                let foreign = lookups
                    .iter()
                    .map(|(ns, r)| {
                        let events = replay(scope, r.clone());
                        (ns.clone(), document_state(events, DocumentStats::new()))
                    })
                    .collect();
                let result =
                    view.build_with_foreign(document_state(events, DocumentStats::new()), foreign);
                if print {
                    let changes = changes.clone();
                    on_closed_times(
                        result.clone(),
                        move |time, rows| {
                            if let Ok(mut lines) = changes.lock() {
                                for ((_, doc), diff) in rows {
                                    let body = json(doc);
                                    let body = body.strip_suffix('}').unwrap_or(&body);
                                    let sep = if body.len() > 1 { "," } else { "" };
                                    lines.push(format!(
                                        r#"{body}{sep}"_time":{{"t":{},"i":{}}},"_diff":{diff}}}"#,
                                        time.seconds(),
                                        time.increment()
                                    ));
                                }
                            }
                        },
                        |_| {},
                    );
                }
                if let Some(writer) = parquet_writer {
                    parquet_sink.attach_pipeline(result.clone(), SchemaSource::inferred(), writer);
                }
                if let Some((dir, stem)) = &ipc_target {
                    let writer = IpcWriter::new(dir, stem, IpcFormat::File, RollPolicy::never());
                    ipc_sink.attach_pipeline(result.clone(), SchemaSource::inferred(), writer);
                }
                handle.attach(result.clone());
                result.probe().0
            });
            // Changes are printed by the output thread as times close.
            let stats = stats.clone();
            runtime::drive_until(worker, &probe, &statuses, move || {
                (fail_fast && stats.errors() > 0).then(|| stats.first_error().unwrap_or_default())
            })
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = std::thread::scope(|s| {
        let changes = changes.clone();
        let printer_stop = stop.clone();
        let stats = stats.clone();
        let mut dead_letter = dead_letter;
        let writer = s.spawn(move || -> Result<(), String> {
            loop {
                let finished = printer_stop.load(std::sync::atomic::Ordering::Acquire);
                let lines = changes
                    .lock()
                    .map(|mut l| std::mem::take(&mut *l))
                    .unwrap_or_default();
                for line in lines {
                    writeln!(out, "{line}").map_err(|e| e.to_string())?;
                }
                if let Some(file) = dead_letter.as_mut() {
                    for error in stats.take_errors() {
                        writeln!(file, "{}", dead_letter_line(&error))
                            .map_err(|e| format!("dead-letter file: {e}"))?;
                    }
                }
                if finished {
                    if let Some(file) = dead_letter.as_mut() {
                        file.flush().map_err(|e| e.to_string())?;
                    }
                    return out.flush().map_err(|e| e.to_string());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let results = super::run_to_end_all(options.workers, &statuses, worker_job);
        stop.store(true, std::sync::atomic::Ordering::Release);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the output thread panicked".into()));
        (results, written)
    });
    let (results, written) = results;
    written.map_err(ViewError::Output)?;
    // Under fail-fast the dataflow was stopped at the first error: report it as such.
    if fail_fast && let Some(first) = stats.first() {
        return Err(ViewError::Evaluation(Box::new(first)));
    }
    results?;
    parquet_sink
        .result()
        .map_err(|e| ViewError::Job(JobError::Sink(e)))?;
    ipc_sink
        .result()
        .map_err(|e| ViewError::Job(JobError::Sink(e)))?;
    let snapshot = handle.snapshot();
    let result = snapshot
        .rows
        .into_iter()
        .flat_map(|((_, doc), n)| std::iter::repeat_n(doc, n.max(0) as usize))
        .collect();
    let mut files = parquet_sink.files();
    files.extend(ipc_sink.files());
    Ok(ViewReport {
        events: statuses[0].events(),
        result,
        skipped: stats.errors(),
        last_time: snapshot.time,
        files,
    })
}

/// Command-line arguments of `changeflow view`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The namespace, db.coll
    #[arg(long)]
    pub ns: String,
    /// The pipeline: a JSON array of stages (MongoDB Extended JSON)
    #[arg(long)]
    pub pipeline: String,
    /// Change-event file (Extended JSON lines, or BSON if it ends in .bson)
    #[arg(long, required_unless_present = "uri")]
    pub input: Option<PathBuf>,
    /// Follow a live change stream at this MongoDB URI instead of a file; needs `--features live`
    #[arg(long, conflicts_with = "input")]
    pub uri: Option<String>,
    /// With --uri: stop after this many events
    #[arg(long)]
    pub max_events: Option<u64>,
    /// With --follow or --uri: stop after this many seconds without new events
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Another namespace's change-event file for $lookup, as DB.COLL=FILE (repeatable)
    #[arg(long = "lookup-input", value_name = "NS=FILE")]
    pub lookup_input: Vec<String>,
    /// Write the changelog (with _time, _diff) as Parquet: DIR/NAME.parquet gives DIR/NAME-NNNNNN.parquet
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the changelog as Arrow IPC files: DIR/NAME.arrow gives DIR/NAME-NNNNNN.arrow
    #[arg(long)]
    pub ipc: Option<PathBuf>,
    /// Send documents a stage fails on to this file (JSON lines: _id, stage, error) and carry on
    #[arg(long, conflicts_with = "skip_errors")]
    pub dead_letter: Option<PathBuf>,
    /// Keep reading as the input file grows
    #[arg(long)]
    pub follow: bool,
    /// Print only the final result, one document per line (relaxed Extended JSON)
    #[arg(long = "final")]
    pub final_only: bool,
    /// Leave out documents a stage fails on (counted) instead of failing
    #[arg(long)]
    pub skip_errors: bool,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
}

/// Runs `changeflow view`: exit code 2 for an invalid pipeline, 1 for other failures.
pub fn main_with(args: Args) -> std::process::ExitCode {
    crate::runtime::keep_freed_memory();
    let input = args.input.clone().unwrap_or_default();
    let mut options = ViewOptions::new(&input, &args.ns, &args.pipeline);
    options.follow = args.follow;
    options.print_changes = !args.final_only;
    options.errors = match (&args.dead_letter, args.skip_errors) {
        (Some(path), _) => ErrorPolicy::DeadLetter(path.clone()),
        (None, true) => ErrorPolicy::Skip,
        (None, false) => ErrorPolicy::FailFast,
    };
    options.workers = args.workers;
    options.uri = args.uri.clone();
    options.max_events = args.max_events;
    options.idle_timeout = args.idle_timeout.map(std::time::Duration::from_secs_f64);
    options.parquet = args.out.clone();
    options.ipc = args.ipc.clone();
    for spec in &args.lookup_input {
        match parse_lookup_input(spec) {
            Ok(pair) => options.lookup_inputs.push(pair),
            Err(error) => {
                eprintln!("error: {error}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut stdout = std::io::stdout();
    match run(&options, &mut stdout) {
        Ok(report) => {
            if args.final_only {
                for doc in &report.result {
                    println!("{}", json(doc));
                }
            }
            if report.skipped > 0 {
                eprintln!("{} documents left out after stage errors", report.skipped);
            }
            for file in &report.files {
                eprintln!("wrote {}", file.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error @ ViewError::Pipeline(_)) => {
            eprintln!("error: {error}");
            std::process::ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
