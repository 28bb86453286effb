//! The `changeflow` command: run a job, or generate change-event files.

changeflow::global_allocator!();

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use changeflow::sources::live::record::RecordProgress;
use changeflow::sources::live::{LiveOptions, WatchTarget};
use changeflow_testkit::orders::{OrdersConfig, write_bson, write_json_lines};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "changeflow",
    about = "Reactive dataflow over MongoDB change streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Maintain orders per region and per customer over a change-event file
    OrdersByRegion(changeflow::jobs::orders_by_region::Args),
    /// Keep a MongoDB aggregation pipeline's result up to date over a change-event file
    View(changeflow::jobs::pipeline_view::Args),
    /// Capture a live change stream to Extended JSON lines that replay identically (needs
    /// `--features live`)
    Record {
        /// MongoDB connection string (a replica set or mongos)
        #[arg(long)]
        uri: String,
        /// Database to watch (default: the whole deployment)
        #[arg(long)]
        db: Option<String>,
        /// Collection to watch (needs --db)
        #[arg(long, requires = "db")]
        coll: Option<String>,
        /// Output file (canonical Extended JSON lines)
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many events (default: until Ctrl-C, an invalidate or --idle-timeout)
        #[arg(long)]
        max_events: Option<u64>,
        /// Stop after this many seconds without an event
        #[arg(long)]
        idle_timeout: Option<f64>,
    },
    /// Follow a live collection into an exactly-once Parquet changelog and a persisted state,
    /// restartable after any crash (needs `--features live`)
    Follow(changeflow::jobs::follow::Args),
    /// Write shop.orders (live and changelog) and V1's changelog as rolling Parquet files
    OrdersToParquet(changeflow::jobs::orders_to_parquet::Args),
    /// Write a seeded, realistic change stream of the `shop.orders` collection
    Generate {
        /// Number of change events
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Random seed (same seed, same file)
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of events inside multi-document transactions
        #[arg(long, default_value_t = 0.1)]
        txn_fraction: f64,
        /// Fraction of update events that carry fullDocument
        #[arg(long, default_value_t = 0.5)]
        full_document_on_update: f64,
        /// Canonical instead of relaxed Extended JSON
        #[arg(long)]
        canonical: bool,
        /// Write concatenated BSON instead of JSON lines
        #[arg(long)]
        bson: bool,
        /// Output file
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::OrdersByRegion(args) => changeflow::jobs::orders_by_region::main_with(args),
        Command::View(args) => changeflow::jobs::pipeline_view::main_with(args),
        Command::Record {
            uri,
            db,
            coll,
            out,
            max_events,
            idle_timeout,
        } => record(uri, db, coll, out, max_events, idle_timeout),
        Command::OrdersToParquet(args) => changeflow::jobs::orders_to_parquet::main_with(args),
        Command::Follow(args) => changeflow::jobs::follow::main_with(args),
        Command::Generate {
            events,
            seed,
            txn_fraction,
            full_document_on_update,
            canonical,
            bson,
            out,
        } => {
            let config = OrdersConfig {
                seed,
                events,
                txn_fraction,
                full_document_on_update,
                canonical,
                ..OrdersConfig::default()
            };
            let written = File::create(&out).and_then(|file| {
                let mut writer = BufWriter::new(file);
                if bson {
                    write_bson(config, &mut writer)
                } else {
                    write_json_lines(config, &mut writer)
                }
            });
            match written {
                Ok(n) => {
                    println!("wrote {n} events to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `changeflow record`: follows the stream, printing events, events/s and lag on one line.
fn record(
    uri: String,
    db: Option<String>,
    coll: Option<String>,
    out: PathBuf,
    max_events: Option<u64>,
    idle_timeout: Option<f64>,
) -> ExitCode {
    let target = match (db, coll) {
        (Some(db), Some(coll)) => WatchTarget::collection(&db, &coll),
        (Some(db), None) => WatchTarget::Database(db),
        _ => WatchTarget::Deployment,
    };
    let mut options = LiveOptions::new(&uri, target);
    options.max_events = max_events;
    options.idle_timeout = idle_timeout.map(std::time::Duration::from_secs_f64);
    let show = |p: &RecordProgress| {
        let lag = p
            .lag
            .map_or("?".to_string(), |l| format!("{:.1} s", l.as_secs_f64()));
        eprint!(
            "\r{} events, {:.0} events/s, lag {lag}        ",
            p.events,
            p.events_per_second()
        );
    };
    eprintln!("recording {} to {}", options.describe(), out.display());
    match changeflow::sources::live::record::record(&options, &out, show) {
        Ok(progress) => {
            eprintln!();
            println!(
                "wrote {} events to {} in {:.1} s",
                progress.events,
                out.display(),
                progress.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!();
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
