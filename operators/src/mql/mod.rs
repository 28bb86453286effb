//! MongoDB's semantics for values, field paths, query predicates and expressions: the layer
//! aggregation pipelines are built on, shared by every view that reads documents the way
//! MongoDB does.
//!
//! * [`number`]: int32 / int64 / double / Decimal128 compared by value, arithmetic with
//!   MongoDB's promotion and overflow rules.
//! * [`compare`]: the cross-type comparison order (MinKey < null < numbers < strings < objects <
//!   arrays < binary < ObjectId < bool < date < timestamp < regex < MaxKey) and [`compare::Key`],
//!   a hashable, ordered form of a value for grouping and joining.
//! * [`path`]: dotted field paths, traversing arrays of documents (`items.sku`).
//! * [`expr`]: aggregation expressions (`$add`, `$cond`, `$concat`, …), evaluated per document.
//! * [`query`]: query predicates (`$match`), with MongoDB's implicit array matching.
//! * [`dates`] and [`tz`]: the date operators, in UTC, fixed offsets and Olson zones.
#![allow(clippy::module_name_repetitions)]

pub mod compare;
pub mod dates;
pub mod expr;
pub mod number;
pub mod path;
pub mod query;
pub mod tz;
