//! The `view` job: a MongoDB aggregation pipeline kept up to date over a change stream.
//!
//! ```text
//!   replay(file) ──▶ document_state ──▶ PipelineView(ns, pipeline) ──▶ each closed time: changes
//!                                                                     as JSON lines (_time, _diff)
//!                                                                └──▶ at the end (--final): the
//!                                                                     result, one document a line
//! ```
//!
//! The pipeline is parsed and checked before the input is opened: an unsupported stage or an
//! unknown operator is reported with its position. A runtime expression error (say `$divide`
//! by zero) names the document's `_id` and the stage; by default it fails the job, with
//! `--skip-errors` the document is left out of the view and counted.
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
use changeflow_operators::pipeline::compile::{PipelineView, Pos};
use changeflow_operators::pipeline::parse::PipelineError;
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};

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
    /// Leave documents a stage fails on out of the view (counted) instead of failing.
    pub skip_errors: bool,
    /// Timely worker threads.
    pub workers: usize,
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
            skip_errors: false,
            workers: 1,
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
    #[error("{0}")]
    Evaluation(String),
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
    /// Documents left out because a stage failed on them (with `skip_errors`).
    pub skipped: u64,
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

/// Runs the view to the end of the input, writing changes (if asked) to `out`.
pub fn run(options: &ViewOptions, out: &mut (dyn Write + Send)) -> Result<ViewReport, ViewError> {
    let view = PipelineView::from_json(&options.namespace, &options.pipeline)?;
    let mut reader = ReaderOptions::new(&options.input);
    reader.follow = options.follow;
    let replay_options = ReplayOptions::new(reader);
    let status = replay_options.status();
    let handle: ViewHandle<(Pos, Document)> = ViewHandle::new();
    let changes: Arc<Mutex<Vec<String>>> = Arc::default();
    let stats = view.stats();

    let worker_job = {
        let (status, handle, changes, view) = (
            status.clone(),
            handle.clone(),
            changes.clone(),
            view.clone(),
        );
        let print = options.print_changes;
        move |worker: &mut timely::worker::Worker| {
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let events = replay(scope, replay_options.clone());
                let result = view.build(document_state(events, DocumentStats::new()));
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
                handle.attach(result.clone());
                result.probe().0
            });
            // Changes are printed by the output thread as times close.
            runtime::drive(worker, &probe, std::slice::from_ref(&status))
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = std::thread::scope(|s| {
        let changes = changes.clone();
        let printer_stop = stop.clone();
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
                if finished {
                    return out.flush().map_err(|e| e.to_string());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let results = super::run_to_end(options.workers, &status, worker_job);
        stop.store(true, std::sync::atomic::Ordering::Release);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the output thread panicked".into()));
        (results, written)
    });
    let (results, written) = results;
    written.map_err(ViewError::Output)?;
    results?;
    if stats.errors() > 0 && !options.skip_errors {
        return Err(ViewError::Evaluation(
            stats.first_error().unwrap_or_default(),
        ));
    }
    let snapshot = handle.snapshot();
    let result = snapshot
        .rows
        .into_iter()
        .flat_map(|((_, doc), n)| std::iter::repeat_n(doc, n.max(0) as usize))
        .collect();
    Ok(ViewReport {
        events: status.events(),
        result,
        skipped: stats.errors(),
        last_time: snapshot.time,
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
    #[arg(long)]
    pub input: PathBuf,
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
    let mut options = ViewOptions::new(&args.input, &args.ns, &args.pipeline);
    options.follow = args.follow;
    options.print_changes = !args.final_only;
    options.skip_errors = args.skip_errors;
    options.workers = args.workers;
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
