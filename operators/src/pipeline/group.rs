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
//!
//! `$top` / `$bottom` / `$topN` / `$bottomN` keep every input ranked by `sortBy` (ties in input
//! order), so removing the current top exposes the next one exactly:
//!
//! ```
//! use bson::{bson, doc, Bson};
//! use changeflow_operators::mql::compare::Key;
//! use changeflow_operators::pipeline::compile::Pos;
//! use changeflow_operators::pipeline::group::AccState;
//! use changeflow_operators::pipeline::parse::{parse_pipeline, Stage};
//! let stages = parse_pipeline(&[doc! { "$group": { "_id": null,
//!     "t": { "$top": { "sortBy": { "amount": -1 }, "output": "$_id" } } } }]).unwrap();
//! let Stage::Group { accumulators, .. } = &stages[0].stage else { unreachable!() };
//! let mut top = AccState::for_accumulator(&accumulators[0]);
//! let pos = |id: i32| Pos { sort: vec![], id: Key::new(bson!(id)), index: vec![] };
//! // The group hands each input over as [[sort values], output].
//! let input = |amount: f64, id: i32| Some(Key::new(bson!([[amount], id])));
//! top.update(&pos(1), &input(10.0, 1), 1);
//! top.update(&pos(2), &input(30.0, 2), 1);
//! top.update(&pos(3), &input(20.0, 3), 1);
//! assert_eq!(top.value("$top"), bson!(2));
//! top.update(&pos(2), &input(30.0, 2), -1); // the top document is deleted
//! assert_eq!(top.value("$top"), bson!(3));
//! assert_eq!(AccState::for_accumulator(&accumulators[0]).value("$top"), Bson::Null);
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

/// The running state of one accumulator in one group, updated by each input's change (a
/// document entering with `+n` or leaving with `-n`), so a change costs `O(log group size)`
/// (plus the size of the output for `$push` / `$addToSet`) instead of a recomputation.
#[derive(Clone, Debug)]
pub enum AccState {
    /// `$sum` / `$avg`: exact integer sum, double-double sum of doubles, exact decimal sum, and
    /// how many values of each type are in.
    Sum {
        /// Sum of int32 / int64 values.
        ints: i128,
        /// int64 values in the sum (the result is a long if any).
        longs: i64,
        /// Double-double sum of doubles.
        hi: f64,
        /// Its low part.
        lo: f64,
        /// Doubles in the sum.
        doubles: i64,
        /// Exact sum of decimals.
        decimal: crate::mql::number::Dec,
        /// Decimals in the sum.
        decimals: i64,
        /// NaNs / infinities among the doubles (they do not cancel arithmetically).
        specials: BTreeMap<u64, i64>,
        /// Numeric values in the sum (for `$avg`).
        numeric: i64,
    },
    /// `$count`.
    Count(i64),
    /// `$min` / `$max`: the multiset of non-null values.
    Extremes(BTreeMap<Key, i64>),
    /// `$push` / `$addToSet` / `$first` / `$last`: values in input order (`None`: missing).
    Ordered(BTreeMap<Pos, (Option<Key>, i64)>),
    /// `$top` / `$bottom` / `$topN` / `$bottomN`: every input's output value ordered by its
    /// `sortBy` values (ties in input order), so removing the current top exposes the next.
    Ranked {
        /// The `sortBy` directions (descending?).
        descending: Vec<bool>,
        /// `n` (1 for `$top` / `$bottom`).
        n: u64,
        /// Outputs by (sort values, input position), with multiplicities.
        values: BTreeMap<(Vec<SortPart>, Pos), (Bson, i64)>,
    },
}

use std::collections::BTreeMap;

use crate::mql::compare::Key;
use crate::mql::number::{self, Dec, Num};
use crate::pipeline::compile::{Pos, SortPart};
use crate::pipeline::parse::Accumulator;

impl AccState {
    /// The empty state for an accumulator.
    pub fn for_accumulator(acc: &Accumulator) -> AccState {
        if acc.is_ranked() {
            AccState::Ranked {
                descending: acc.sort_by.iter().map(|f| f.descending).collect(),
                n: acc.n.unwrap_or(1),
                values: BTreeMap::new(),
            }
        } else {
            AccState::new(&acc.op)
        }
    }

    /// The empty state for accumulator `op`.
    pub fn new(op: &str) -> AccState {
        match op {
            "$sum" | "$avg" => AccState::Sum {
                ints: 0,
                longs: 0,
                hi: 0.0,
                lo: 0.0,
                doubles: 0,
                decimal: Dec::Finite {
                    neg: false,
                    coef: 0,
                    exp: 0,
                },
                decimals: 0,
                specials: BTreeMap::new(),
                numeric: 0,
            },
            "$count" => AccState::Count(0),
            "$min" | "$max" => AccState::Extremes(BTreeMap::new()),
            _ => AccState::Ordered(BTreeMap::new()),
        }
    }

    /// Adds (`diff > 0`) or removes (`diff < 0`) one input's value.
    pub fn update(&mut self, pos: &Pos, value: &Option<Key>, diff: i64) {
        match self {
            AccState::Sum {
                ints,
                longs,
                hi,
                lo,
                doubles,
                decimal,
                decimals,
                specials,
                numeric,
            } => match value.as_ref().and_then(|k| Num::of(&k.0)) {
                Some(Num::Int(v)) => {
                    *ints += i128::from(v) * i128::from(diff);
                    *numeric += diff;
                }
                Some(Num::Long(v)) => {
                    *ints += i128::from(v) * i128::from(diff);
                    *longs += diff;
                    *numeric += diff;
                }
                Some(Num::Double(x)) if !x.is_finite() => {
                    *doubles += diff;
                    *numeric += diff;
                    let n = specials.entry(x.to_bits()).or_insert(0);
                    *n += diff;
                    if *n == 0 {
                        specials.remove(&x.to_bits());
                    }
                }
                Some(Num::Double(x)) => {
                    *doubles += diff;
                    *numeric += diff;
                    two_sum(hi, lo, x * diff as f64);
                }
                Some(n @ Num::Decimal(_)) => {
                    *decimals += diff;
                    *numeric += diff;
                    let d = number::multiply(&n, &Num::Long(diff));
                    if let Num::Decimal(d) = number::add(&Num::Decimal(*decimal), &d) {
                        *decimal = d;
                    }
                }
                None => {}
            },
            AccState::Count(n) => *n += diff,
            AccState::Extremes(values) => {
                if let Some(k) = value
                    .as_ref()
                    .filter(|k| !matches!(k.0, Bson::Null | Bson::Undefined))
                {
                    let n = values.entry(k.clone()).or_insert(0);
                    *n += diff;
                    if *n == 0 {
                        values.remove(k);
                    }
                }
            }
            AccState::Ordered(values) => {
                let entry = values.entry(pos.clone()).or_insert((value.clone(), 0));
                entry.1 += diff;
                if entry.1 == 0 {
                    values.remove(pos);
                }
            }
            AccState::Ranked {
                descending, values, ..
            } => {
                // The group hands ranked inputs over as [[sort values...], output].
                let Some(Bson::Array(pair)) = value.as_ref().map(|k| &k.0) else {
                    return;
                };
                let (Some(Bson::Array(sort)), Some(output)) = (pair.first(), pair.get(1)) else {
                    return;
                };
                let sort: Vec<SortPart> = sort
                    .iter()
                    .zip(descending.iter())
                    .map(|(v, d)| SortPart {
                        value: Key::new(v.clone()),
                        descending: *d,
                    })
                    .collect();
                let slot = (sort, pos.clone());
                let entry = values.entry(slot.clone()).or_insert((output.clone(), 0));
                entry.1 += diff;
                if entry.1 == 0 {
                    values.remove(&slot);
                }
            }
        }
    }

    /// The accumulator's value for `op`.
    pub fn value(&self, op: &str) -> Bson {
        match self {
            AccState::Sum {
                ints,
                longs,
                hi,
                lo,
                doubles,
                decimal,
                decimals,
                specials,
                numeric,
            } => {
                // NaN and infinities are summed apart: they would not cancel on removal.
                let special = specials
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(b, _)| f64::from_bits(*b))
                    .fold(0.0, |a, b| a + b);
                let float = *hi + *lo + special;
                let sum = if *decimals > 0 {
                    let ints = Num::Decimal(Dec::Finite {
                        neg: *ints < 0,
                        coef: ints.unsigned_abs(),
                        exp: 0,
                    });
                    let with_ints = number::add(&Num::Decimal(*decimal), &ints);
                    if *doubles > 0 {
                        number::add(&with_ints, &Num::Double(float))
                    } else {
                        with_ints
                    }
                } else if *doubles > 0 {
                    Num::Double(*ints as f64 + float)
                } else if let (Ok(v), 0) = (i32::try_from(*ints), *longs) {
                    Num::Int(v)
                } else if let Ok(v) = i64::try_from(*ints) {
                    Num::Long(v)
                } else {
                    Num::Double(*ints as f64)
                };
                match op {
                    "$sum" => sum.to_bson(),
                    _ if *numeric <= 0 => Bson::Null,
                    _ => match sum {
                        Num::Decimal(_) => number::divide(&sum, &Num::Long(*numeric))
                            .map_or(Bson::Null, Num::to_bson),
                        other => Bson::Double(other.to_f64() / *numeric as f64),
                    },
                }
            }
            AccState::Count(n) => i32::try_from(*n).map_or(Bson::Int64(*n), Bson::Int32),
            AccState::Extremes(values) => {
                let best = if op == "$min" {
                    values.keys().next()
                } else {
                    values.keys().next_back()
                };
                best.map_or(Bson::Null, |k| k.0.clone())
            }
            AccState::Ordered(values) => {
                let expanded = values
                    .values()
                    .flat_map(|(v, n)| std::iter::repeat_n(v, (*n).max(0) as usize))
                    .map(|v| v.as_ref().map(|k| k.0.clone()));
                let collected: Vec<Option<Bson>> = expanded.collect();
                accumulate(op, collected.iter())
            }
            AccState::Ranked { n, values, .. } => {
                // Only the first (or last) n entries are visited: O(n log group size).
                let n = usize::try_from(*n).unwrap_or(usize::MAX);
                let repeat =
                    |(v, k): &(Bson, i64)| std::iter::repeat_n(v.clone(), (*k).max(0) as usize);
                match op {
                    "$top" => values
                        .values()
                        .flat_map(repeat)
                        .next()
                        .unwrap_or(Bson::Null),
                    "$bottom" => values
                        .values()
                        .rev()
                        .flat_map(repeat)
                        .next()
                        .unwrap_or(Bson::Null),
                    "$topN" => Bson::Array(values.values().flat_map(repeat).take(n).collect()),
                    _ => {
                        let mut last: Vec<Bson> =
                            values.values().rev().flat_map(repeat).take(n).collect();
                        last.reverse();
                        Bson::Array(last)
                    }
                }
            }
        }
    }
}

fn two_sum(hi: &mut f64, lo: &mut f64, x: f64) {
    let s = *hi + x;
    let bp = s - *hi;
    let err = (*hi - (s - bp)) + (x - bp);
    *hi = s;
    *lo += err;
    let t = *hi + *lo;
    *lo -= t - *hi;
    *hi = t;
}
