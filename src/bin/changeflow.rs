//! The `changeflow` command: run a job, or generate change-event files.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

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
        Command::OrdersToParquet(args) => changeflow::jobs::orders_to_parquet::main_with(args),
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
