//! Bank transfers: per-account balances and the grand total over a stream of transactions,
//! with the invariant (the total never changes) checked at every closed time.
//!
//! ```text
//! cargo run --release --example bank_transfers                       # 200 000 generated events
//! cargo run --release --example bank_transfers -- --events 1000000 -w 2
//! ```
//!
//! See `changeflow::jobs::bank_transfers` for the pipeline.

changeflow::global_allocator!();

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Maintains account balances and the grand total over transfer transactions, checking that no partial transaction is ever visible"
)]
struct Cli {
    #[command(flatten)]
    args: changeflow::jobs::bank_transfers::Args,
}

fn main() -> std::process::ExitCode {
    changeflow::jobs::bank_transfers::main_with(Cli::parse().args)
}
