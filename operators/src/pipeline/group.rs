//! `$group` accumulators, computed from a group's inputs in order.
//!
//! Incrementally, a group is recomputed from its current inputs whenever one of them changes
//! (differential's `reduce` hands over the whole group, in order), so every accumulator — even
//! `$min`, `$max`, `$push` and `$first` — retracts exactly: a deleted document's contribution is
//! simply no longer there. The cost is proportional to the changed group's size.
//!
//! # Order
//!
//! Order-dependent accumulators (`$push`, `$addToSet`, `$first`, `$last`) see the inputs in
//! the order of a preceding `$sort` if there is one, otherwise in `_id` order of the source
//! documents (then array order for unwound elements).
//!
//! ```
//! use bson::{bson, Bson};
//! use changeflow_operators::pipeline::group::accumulate;
//! let values = [Some(bson!(3)), None, Some(bson!(1.5)), Some(Bson::Null)];
//! assert_eq!(accumulate("$sum", values.iter()), bson!(4.5));
//! assert_eq!(accumulate("$min", values.iter()), bson!(1.5));
//! assert_eq!(accumulate("$push", values.iter()), bson!([3, 1.5, null]));
//! assert_eq!(accumulate("$first", values.iter()), bson!(3));
//! ```

use bson::Bson;

use crate::mql::compare::{compare, equal};
use crate::mql::expr::array_accumulate;

/// Accumulates `values` (each `None` when the argument was missing) in order.
pub fn accumulate<'a>(op: &str, values: impl Iterator<Item = &'a Option<Bson>>) -> Bson {
    match op {
        "$sum" | "$avg" => {
            let present: Vec<Bson> = values.flatten().cloned().collect();
            array_accumulate(op, &present)
        }
        "$count" => {
            let n = values.count() as i64;
            i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32)
        }
        "$min" | "$max" => {
            let mut best: Option<&Bson> = None;
            for v in values.flatten() {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                let better = best.is_none_or(|b| {
                    let order = compare(v, b);
                    if op == "$min" {
                        order.is_lt()
                    } else {
                        order.is_gt()
                    }
                });
                if better {
                    best = Some(v);
                }
            }
            best.cloned().unwrap_or(Bson::Null)
        }
        "$push" => Bson::Array(values.flatten().cloned().collect()),
        "$addToSet" => {
            let mut set: Vec<Bson> = Vec::new();
            for v in values.flatten() {
                if !set.iter().any(|s| equal(s, v)) {
                    set.push(v.clone());
                }
            }
            Bson::Array(set)
        }
        "$first" => values
            .into_iter()
            .next()
            .cloned()
            .flatten()
            .unwrap_or(Bson::Null),
        "$last" => values.last().cloned().flatten().unwrap_or(Bson::Null),
        _ => Bson::Null,
    }
}
