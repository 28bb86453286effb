//! The live `orders` collection, its changelog and V1's changelog as rolling Parquet files.
//!
//! ```text
//! cargo run --example orders_to_parquet                         # the bundled sample
//! cargo run --example orders_to_parquet -- --input FILE --roll-rows 10000 --compression lz4
//! ```
//!
//! See `changeflow::jobs::orders_to_parquet` for the pipeline; it prints DuckDB queries over the
//! files it wrote.

changeflow::global_allocator!();

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Writes shop.orders (live and changelog) and V1's changelog as rolling Parquet files"
)]
struct Cli {
    #[command(flatten)]
    args: changeflow::jobs::orders_to_parquet::Args,
}

fn main() -> std::process::ExitCode {
    changeflow::jobs::orders_to_parquet::main_with(Cli::parse().args)
}
