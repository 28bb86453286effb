//! Live orders and revenue per region, and orders per customer, from a change stream.
//!
//! ```text
//! cargo run --release --example orders_by_region                  # the bundled sample
//! cargo run --release --example orders_by_region -- --input FILE  # any change-event file
//! ```
//!
//! See `changeflow::jobs::orders_by_region` for the pipeline.

changeflow::global_allocator!();

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Maintains V1 (orders and amount per region) and V2 (orders per customer) over shop.orders"
)]
struct Cli {
    #[command(flatten)]
    args: changeflow::jobs::orders_by_region::Args,
}

fn main() -> std::process::ExitCode {
    changeflow::jobs::orders_by_region::main_with(Cli::parse().args)
}
