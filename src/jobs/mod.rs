//! Complete pipelines. Each example job (`cargo run --example NAME`) is a thin command-line
//! wrapper around one of these, so tests and benchmarks run exactly what users run.

pub mod orders_by_region;
pub mod orders_to_parquet;
