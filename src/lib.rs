//! # changeflow: reactive dataflow over MongoDB change streams
//!
//! changeflow turns a MongoDB change stream into timestamped updates in timely / differential
//! dataflow and keeps materialized views of it exact and up to date, then writes them as Arrow
//! and Parquet. A source's resume token is its frontier.
//!
//! The workspace, one concern per crate, re-exported here:
//!
//! | crate | module here | holds |
//! |---|---|---|
//! | `changeflow-core` | [`core`] | `ChangeEvent`, `ClusterTime`, `ResumeToken`, Extended JSON / BSON decoding |
//! | `changeflow-sources` | [`sources`] | file replay with the frontier rule, dead letters |
//! | `changeflow-operators` | [`operators`] | document state, typed fields, group-by views, view handles |
//! | `changeflow-sinks` | [`sinks`] | Arrow batches, Parquet files, tables, JSON-lines changelogs |
//!
//! [`jobs`] holds complete pipelines (the example jobs are thin wrappers around them) and
//! [`runtime`] the small helpers that run a dataflow to completion.
//!
//! ```no_run
//! use changeflow::jobs::orders_by_region::{self, OrdersOptions};
//! let report = orders_by_region::run(&OrdersOptions::new("data/orders.jsonl", "target/out")).unwrap();
//! println!("{} events, {} regions", report.events, report.v1.len());
//! ```
#![deny(missing_docs)]

pub use changeflow_core as core;
pub use changeflow_operators as operators;
pub use changeflow_sinks as sinks;
pub use changeflow_sources as sources;

pub mod jobs;
pub mod runtime;

/// Runs the README's code blocks as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
