//! # changeflow-operators: from change events to exact, incremental views
//!
//! The data walk is event → document state → view:
//!
//! * [`documents::document_state`]: the live version of every document, per namespace and
//!   `_id`, as a differential collection. Updates are applied from their `updateDescription`
//!   ([`update::apply_update`]), so versions are exact even without `fullDocument`.
//! * [`value`]: typed fields read from documents by dotted path.
//! * [`views::GroupBy`]: count / sum / min / max / avg per key, maintained incrementally;
//!   [`views::materialize`] keeps several of them straight in their handles.
//! * [`handle::ViewHandle`]: a view's contents readable from any thread at closed times, and
//!   [`handle::on_closed_times`] for sinks that consume a view's changes time by time.
//!
//! Every operator stashes its input by time and acts when the input frontier passes a time, so
//! all events of one time (a transaction) are seen together and applied in resume-token order.
#![deny(missing_docs)]

pub mod documents;
pub mod handle;
pub mod mql;
pub mod pipeline;
pub mod transactions;
pub mod update;
pub mod value;
pub mod views;

pub mod fxhash;
mod stash;
