//! The changeflow book. Each chapter (in `book/src`, readable with mdBook) is included here as
//! the documentation of a module, so `cargo test --workspace` compiles and runs every code
//! sample in the book.
#![deny(missing_docs)]

#[doc = include_str!("introduction.md")]
pub mod introduction {}
#[doc = include_str!("getting-started.md")]
pub mod getting_started {}
#[doc = include_str!("cluster-time.md")]
pub mod cluster_time {}
#[doc = include_str!("frontiers.md")]
pub mod frontiers {}
#[doc = include_str!("document-state.md")]
pub mod document_state {}
#[doc = include_str!("transactions.md")]
pub mod transactions {}
#[doc = include_str!("replay.md")]
pub mod replay {}
#[doc = include_str!("live-source.md")]
pub mod live_source {}
#[doc = include_str!("views.md")]
pub mod views {}
#[doc = include_str!("pipelines.md")]
pub mod pipelines {}
#[doc = include_str!("output.md")]
pub mod output {}
#[doc = include_str!("arrow-output.md")]
pub mod arrow_output {}
#[doc = include_str!("restart.md")]
pub mod restart {}
