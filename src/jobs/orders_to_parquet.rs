//! The orders stream as rolling Parquet files: the live `orders` collection, its changelog, and
//! the changelog of V1.
//!
//! ```text
//!   replay(file) ──▶ document_state ──┬──▶ shop.orders changes ──ArrowSink──▶ orders_changelog/orders-NNNNNN.parquet
//!                                     ├──▶ shop.orders live ──ViewHandle──▶ (at the end) orders/orders-NNNNNN.parquet
//!                                     └──▶ V1 (per region) ──ArrowSink──▶ v1_changelog/v1-NNNNNN.parquet
//! ```
//!
//! Documents are written as they are (schema inferred from the first documents and widened as
//! fields appear; every BSON type mapped as in `changeflow_sinks::arrow::mapping`). Changelog
//! files roll every `roll_rows` rows at a closed frontier, which each file records in its
//! key-value metadata; summing `_diff` per row over all of a changelog's files gives the final
//! collection or view.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use changeflow_core::{ClusterTime, Document};
use changeflow_operators::documents::{DocKey, DocumentStats, document_state};
use changeflow_operators::handle::ViewHandle;
use changeflow_operators::views::Row;
use changeflow_sinks::SinkError;
use changeflow_sinks::arrow::changelog_batches::document_snapshot;
use changeflow_sinks::arrow::documents::{BatchStats, DocumentBatcher};
use changeflow_sinks::arrow::schema::SchemaSource;
use changeflow_sinks::dataflow::ArrowSink;
use changeflow_sinks::parquet::{ParquetCompression, ParquetOptions, ParquetWriter};
use changeflow_sinks::writer::{BatchWriter, RollPolicy};
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};

use super::orders_by_region::{JobError, bundled_sample, v1_definition};
use crate::runtime;

/// The namespace written out.
pub const NAMESPACE: &str = "shop.orders";

/// What to run.
#[derive(Clone, Debug)]
pub struct ParquetJobOptions {
    /// The change-event file (JSON lines, or BSON if it ends in `.bson`).
    pub input: PathBuf,
    /// The output directory. The job replaces its `orders/`, `orders_changelog/` and
    /// `v1_changelog/` folders (files of an earlier run would mix with the new series).
    pub out: PathBuf,
    /// Timely worker threads.
    pub workers: usize,
    /// Rows per file before a file rolls (at the next closed frontier).
    pub roll_rows: u64,
    /// Parquet compression.
    pub compression: ParquetCompression,
    /// Events the replay source reads per step (`None`: its default); smaller steps close times,
    /// and so commit files, more often.
    pub batch: Option<usize>,
}

impl ParquetJobOptions {
    /// Reads `input` with one worker into `out`, rolling every 2000 rows, Snappy.
    pub fn new(input: impl AsRef<Path>, out: impl AsRef<Path>) -> Self {
        ParquetJobOptions {
            input: input.as_ref().into(),
            out: out.as_ref().into(),
            workers: 1,
            roll_rows: 2000,
            compression: ParquetCompression::Snappy,
            batch: None,
        }
    }

    fn parquet(&self) -> ParquetOptions {
        ParquetOptions {
            compression: self.compression,
            roll: RollPolicy::rows(self.roll_rows.max(1)),
            ..ParquetOptions::default()
        }
    }
}

/// What the job wrote.
#[derive(Clone, Debug)]
pub struct ParquetJobReport {
    /// Change events read.
    pub events: u64,
    /// Wall-clock time of the dataflow.
    pub elapsed: Duration,
    /// V1 at the end: `[region, orders, amount]` with multiplicities, sorted.
    pub v1: Vec<(Row, isize)>,
    /// Live orders at the end.
    pub live_orders: usize,
    /// The live collection's files.
    pub orders_files: Vec<PathBuf>,
    /// The collection changelog's files.
    pub orders_changelog_files: Vec<PathBuf>,
    /// V1's changelog files.
    pub v1_changelog_files: Vec<PathBuf>,
    /// Conversion counts of the changelog of orders (fallback values, schema changes).
    pub changelog_stats: BatchStats,
    /// Conversion counts of the live collection's snapshot.
    pub snapshot_stats: BatchStats,
    /// The last closed time.
    pub last_time: Option<ClusterTime>,
}

/// Runs the job to the end of its input and writes its files.
pub fn run(options: &ParquetJobOptions) -> Result<ParquetJobReport, JobError> {
    let parquet = options.parquet();
    // Fails early on a compression this build does not have.
    ParquetWriter::new(&options.out, "check", parquet)?;
    let mut replay_options = ReplayOptions::new(ReaderOptions::new(&options.input));
    if let Some(batch) = options.batch {
        replay_options.batch = batch.max(1);
    }
    let status = replay_options.status();
    let v1 = v1_definition();
    let (v1_sink, orders_sink) = (ArrowSink::new(), ArrowSink::new());
    let v1_handle = ViewHandle::<Row>::new();
    let orders_handle = ViewHandle::<(DocKey, Document)>::new();
    let (v1_dir, changelog_dir, orders_dir) = (
        options.out.join("v1_changelog"),
        options.out.join("orders_changelog"),
        options.out.join("orders"),
    );
    for dir in [&v1_dir, &changelog_dir, &orders_dir] {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SinkError::Write {
                    path: dir.clone(),
                    reason: e.to_string(),
                }
                .into());
            }
            _ => {}
        }
    }

    let started = Instant::now();
    let worker_job = {
        let (status, v1_sink, orders_sink, v1_handle, orders_handle) = (
            status.clone(),
            v1_sink.clone(),
            orders_sink.clone(),
            v1_handle.clone(),
            orders_handle.clone(),
        );
        move |worker: &mut timely::worker::Worker| -> Result<(), String> {
            let v1_writer =
                ParquetWriter::new(&v1_dir, "v1", parquet).map_err(|e| e.to_string())?;
            let orders_writer =
                ParquetWriter::new(&changelog_dir, "orders", parquet).map_err(|e| e.to_string())?;
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let events = replay(scope, replay_options.clone());
                let documents = document_state(events, DocumentStats::new());
                let view1 = v1.build(documents.clone());
                v1_sink.attach_view(view1.clone(), &v1.columns(), v1_writer);
                orders_sink.attach_documents(
                    documents.clone(),
                    NAMESPACE,
                    SchemaSource::inferred(),
                    orders_writer,
                );
                let orders = documents.filter(|(key, _)| key.ns() == NAMESPACE);
                orders_handle.attach(orders.clone());
                v1_handle.attach(view1.clone());
                let (probe, _) = view1.probe();
                orders.probe_with(&probe);
                probe
            });
            runtime::drive(worker, &probe, std::slice::from_ref(&status))
        }
    };
    super::run_to_end(options.workers, &status, worker_job)?;
    let elapsed = started.elapsed();
    v1_sink.result()?;
    orders_sink.result()?;

    let orders = orders_handle.snapshot();
    let mut batcher = DocumentBatcher::new(SchemaSource::inferred());
    let mut writer = ParquetWriter::new(&orders_dir, "orders", parquet)?;
    // The snapshot reflects every time up to the last closed one; files roll between chunks.
    let frontier = orders.time.and_then(ClusterTime::successor);
    let chunk = usize::try_from(options.roll_rows.max(1)).unwrap_or(usize::MAX);
    for rows in orders.rows.chunks(chunk) {
        for batch in document_snapshot(&mut batcher, rows)? {
            writer.write(&batch)?;
        }
        writer.commit(frontier)?;
    }
    writer.commit(None)?;
    let v1_snapshot = v1_handle.snapshot();
    Ok(ParquetJobReport {
        events: status.events(),
        elapsed,
        v1: v1_snapshot.rows,
        live_orders: orders.rows.len(),
        orders_files: writer.files(),
        orders_changelog_files: orders_sink.files(),
        v1_changelog_files: v1_sink.files(),
        changelog_stats: orders_sink.stats(),
        snapshot_stats: batcher.stats(),
        last_time: v1_snapshot.time.max(orders.time),
    })
}

/// Command-line arguments of the job.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Change-event file: Extended JSON lines, or BSON if it ends in `.bson` [default: the bundled sample]
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output directory [default: target/changeflow/orders_to_parquet]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Rows per Parquet file before it rolls
    #[arg(long, default_value_t = 2000)]
    pub roll_rows: u64,
    /// Compression: snappy, lz4 or none (zstd and gzip are not compiled into this build)
    #[arg(long, default_value = "snappy")]
    pub compression: String,
}

/// Runs the job from command-line arguments and prints where the files are and how to query
/// them with DuckDB; the exit code is 1 on failure, with the error on stderr.
pub fn main_with(args: Args) -> std::process::ExitCode {
    crate::runtime::keep_freed_memory();
    let input = args.input.unwrap_or_else(bundled_sample);
    let out = args.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("changeflow")
            .join("orders_to_parquet")
    });
    let compression = match args.compression.as_str() {
        "snappy" => ParquetCompression::Snappy,
        "lz4" => ParquetCompression::Lz4,
        "none" => ParquetCompression::Uncompressed,
        "zstd" => ParquetCompression::Zstd(3),
        "gzip" => ParquetCompression::Gzip,
        other => {
            eprintln!("error: unknown compression {other:?} (snappy, lz4, none; zstd, gzip)");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut options = ParquetJobOptions::new(&input, &out);
    options.workers = args.workers;
    options.roll_rows = args.roll_rows;
    options.compression = compression;
    match run(&options) {
        Ok(report) => {
            println!(
                "{} events in {:.2} s; {} live orders; V1 has {} regions",
                report.events,
                report.elapsed.as_secs_f64(),
                report.live_orders,
                report.v1.len()
            );
            for (what, files) in [
                ("live orders", &report.orders_files),
                ("orders changelog", &report.orders_changelog_files),
                ("V1 changelog", &report.v1_changelog_files),
            ] {
                println!("{what}: {} file(s)", files.len());
                for file in files {
                    println!("  {}", file.display());
                }
            }
            let stats = report.changelog_stats;
            println!(
                "orders changelog: {} rows, {} values in _fallback, {} schema changes",
                stats.rows, stats.fallback_values, stats.schema_changes
            );
            let dir = out.display();
            println!();
            println!("Open them in DuckDB (https://duckdb.org), e.g.:");
            println!(
                "  duckdb -c \"SELECT region, status, count(*) FROM read_parquet('{dir}/orders/*.parquet', union_by_name=true) GROUP BY ALL ORDER BY ALL\""
            );
            println!(
                "  duckdb -c \"SELECT region, orders, amount FROM read_parquet('{dir}/v1_changelog/*.parquet') GROUP BY ALL HAVING sum(_diff) > 0 ORDER BY region\""
            );
            println!(
                "  duckdb -c \"SELECT _time >> 32 AS t, _time & 4294967295 AS i, _diff, region, orders FROM read_parquet('{dir}/v1_changelog/*.parquet') ORDER BY _time LIMIT 10\""
            );
            println!(
                "  duckdb -c \"SELECT file_name, decode(key) AS key, decode(value) AS value FROM parquet_kv_metadata('{dir}/v1_changelog/*.parquet') WHERE decode(key) LIKE 'changeflow.%'\""
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
