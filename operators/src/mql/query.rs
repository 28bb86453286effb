//! Query predicates (`$match`): parsed once ([`Query::parse`]), tested per document
//! ([`Query::matches`]).
//!
//! Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists $type $size $all $elemMatch $regex
//! $not $and $or $nor $expr`, and implicit equality (`{field: value}`).
//!
//! # MongoDB's implicit array matching
//!
//! A condition on a path matches when *any* value the path reaches satisfies it
//! ([`crate::mql::path::candidates`]): the field itself, each element when it is an array, and
//! values inside arrays of documents. So `{tags: "a"}` matches `{tags: ["a", "b"]}`, and
//! `{"items.qty": {$gt: 2}}` matches if any item's `qty` is above 2. The negations `$ne` and
//! `$nin` match when *no* value matches. Comparisons only match values of the same type class
//! (`{$gt: 1}` never matches a string), except that `null` equality also matches missing fields.
//!
//! ```
//! use bson::{bson, doc};
//! use changeflow_operators::mql::query::Query;
//! let q = Query::parse(&doc! { "status": {"$in": ["paid", "shipped"]}, "items.qty": {"$gte": 3} }).unwrap();
//! assert!(q.matches(&doc! { "status": "paid", "items": [{"qty": 1}, {"qty": 4}] }).unwrap());
//! assert!(!q.matches(&doc! { "status": "pending", "items": [{"qty": 5}] }).unwrap());
//! let err = Query::parse(&doc! { "a": {"$gte3": 1} }).unwrap_err();
//! assert!(err.to_string().contains("$gte3"));
//! ```

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::mql::compare::{compare, equal, type_rank};
use crate::mql::expr::{EvalError, Expr, ParseError, nearest, truthy, type_name};
use crate::mql::path::{candidates, exists};

/// The supported query operators, for suggestions.
pub const OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$type",
    "$size",
    "$all",
    "$elemMatch",
    "$regex",
    "$options",
    "$not",
    "$and",
    "$or",
    "$nor",
    "$expr",
];

/// A parsed predicate.
#[derive(Clone, Debug)]
pub enum Query {
    /// All must match.
    And(Vec<Query>),
    /// One must match.
    Or(Vec<Query>),
    /// None may match.
    Nor(Vec<Query>),
    /// An aggregation expression, true when truthy.
    Expr(Expr),
    /// A condition on a path.
    Path(String, Cond),
}

/// A condition on the values at a path.
#[derive(Clone, Debug)]
pub enum Cond {
    /// All must hold.
    All(Vec<Cond>),
    /// Equal to (with array and null rules).
    Eq(Bson),
    /// Not equal to any value at the path.
    Ne(Bson),
    /// Ordered comparison: `$gt $gte $lt $lte`.
    Cmp(String, Bson),
    /// Equal to one of.
    In(Vec<Bson>),
    /// Equal to none of.
    Nin(Vec<Bson>),
    /// The path exists (or not).
    Exists(bool),
    /// A value of one of these types (names or numbers, and `"number"`).
    Type(Vec<Bson>),
    /// An array of this length.
    Size(i64),
    /// An array containing all of these.
    AllOf(Vec<Bson>),
    /// An array element matching (a document query, or operators on the element).
    ElemMatch(Box<ElemMatch>),
    /// A string matching the pattern.
    Regex(regex_lite::Regex),
    /// The negation of a condition.
    Not(Box<Cond>),
}

/// What `$elemMatch` applies to each element.
#[derive(Clone, Debug)]
pub enum ElemMatch {
    /// A query on document elements.
    Query(Query),
    /// Operators on the element itself.
    Cond(Cond),
}

impl Query {
    /// Parses a `$match` document.
    pub fn parse(doc: &Document) -> Result<Query, ParseError> {
        let mut parts = Vec::new();
        for (key, value) in doc {
            parts.push(match key.as_str() {
                "$and" | "$or" | "$nor" => {
                    let items = value
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| bad(key, "expects a non-empty array of queries"))?;
                    let queries = items
                        .iter()
                        .map(|q| {
                            Query::parse(
                                q.as_document()
                                    .ok_or_else(|| bad(key, "expects documents"))?,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    match key.as_str() {
                        "$and" => Query::And(queries),
                        "$or" => Query::Or(queries),
                        _ => Query::Nor(queries),
                    }
                }
                "$expr" => Query::Expr(Expr::parse(value)?),
                k if k.starts_with('$') => {
                    return Err(ParseError::UnknownOperator {
                        name: k.into(),
                        nearest: nearest(k, &["$and", "$or", "$nor", "$expr"]),
                    });
                }
                path => Query::Path(path.into(), Cond::parse(value)?),
            });
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::And(parts)
        })
    }

    /// Whether `doc` satisfies the predicate; `$expr` errors are MongoDB's runtime errors.
    pub fn matches(&self, doc: &Document) -> Result<bool, EvalError> {
        Ok(match self {
            Query::And(qs) => {
                for q in qs {
                    if !q.matches(doc)? {
                        return Ok(false);
                    }
                }
                true
            }
            Query::Or(qs) => {
                for q in qs {
                    if q.matches(doc)? {
                        return Ok(true);
                    }
                }
                false
            }
            Query::Nor(qs) => {
                for q in qs {
                    if q.matches(doc)? {
                        return Ok(false);
                    }
                }
                true
            }
            Query::Expr(e) => truthy(&e.eval(doc)?),
            Query::Path(path, cond) => cond.matches_path(doc, path),
        })
    }
}

fn bad(operator: &str, reason: &str) -> ParseError {
    ParseError::BadArguments {
        operator: operator.into(),
        reason: reason.into(),
    }
}

impl Cond {
    fn parse(value: &Bson) -> Result<Cond, ParseError> {
        let Bson::Document(d) = value else {
            return Ok(match value {
                Bson::RegularExpression(r) => {
                    Cond::Regex(regex(r.pattern.as_str(), r.options.as_str())?)
                }
                other => Cond::Eq(other.clone()),
            });
        };
        if !d.keys().next().is_some_and(|k| k.starts_with('$')) {
            return Ok(Cond::Eq(value.clone()));
        }
        let mut conds = Vec::new();
        for (op, arg) in d {
            let list = |op: &str| -> Result<Vec<Bson>, ParseError> {
                arg.as_array()
                    .cloned()
                    .ok_or_else(|| bad(op, "expects an array"))
            };
            conds.push(match op.as_str() {
                "$eq" => Cond::Eq(arg.clone()),
                "$ne" => Cond::Ne(arg.clone()),
                "$gt" | "$gte" | "$lt" | "$lte" => Cond::Cmp(op.clone(), arg.clone()),
                "$in" => Cond::In(list(op)?),
                "$nin" => Cond::Nin(list(op)?),
                "$all" => Cond::AllOf(list(op)?),
                "$exists" => Cond::Exists(truthy(&Some(arg.clone()))),
                "$type" => Cond::Type(match arg {
                    Bson::Array(items) => items.clone(),
                    other => vec![other.clone()],
                }),
                "$size" => Cond::Size(
                    crate::mql::number::Num::of(arg)
                        .and_then(|n| n.to_dec())
                        .and_then(crate::mql::number::Dec::to_i64)
                        .ok_or_else(|| bad(op, "expects a whole number"))?,
                ),
                "$elemMatch" => {
                    let spec = arg
                        .as_document()
                        .ok_or_else(|| bad(op, "expects a document"))?;
                    let is_ops = spec.keys().next().is_some_and(|k| {
                        k.starts_with('$')
                            && !matches!(k.as_str(), "$and" | "$or" | "$nor" | "$expr")
                    });
                    Cond::ElemMatch(Box::new(if is_ops {
                        ElemMatch::Cond(Cond::parse(arg)?)
                    } else {
                        ElemMatch::Query(Query::parse(spec)?)
                    }))
                }
                "$regex" => {
                    let options = d.get_str("$options").unwrap_or("");
                    match arg {
                        Bson::String(p) => Cond::Regex(regex(p, options)?),
                        Bson::RegularExpression(r) => {
                            Cond::Regex(regex(r.pattern.as_str(), r.options.as_str())?)
                        }
                        _ => return Err(bad(op, "expects a string or regular expression")),
                    }
                }
                "$options" => continue,
                "$not" => Cond::Not(Box::new(match arg {
                    Bson::Document(_) | Bson::RegularExpression(_) => Cond::parse(arg)?,
                    _ => {
                        return Err(bad(
                            op,
                            "expects an operator document or a regular expression",
                        ));
                    }
                })),
                other => {
                    return Err(ParseError::UnknownOperator {
                        name: other.into(),
                        nearest: nearest(other, OPERATORS),
                    });
                }
            });
        }
        Ok(if conds.len() == 1 {
            conds.remove(0)
        } else {
            Cond::All(conds)
        })
    }

    fn matches_path(&self, doc: &Document, path: &str) -> bool {
        match self {
            Cond::All(cs) => cs.iter().all(|c| c.matches_path(doc, path)),
            Cond::Ne(v) => !Cond::Eq(v.clone()).matches_path(doc, path),
            Cond::Nin(vs) => !Cond::In(vs.clone()).matches_path(doc, path),
            Cond::Not(c) => !c.matches_path(doc, path),
            Cond::Exists(want) => exists(doc, path) == *want,
            Cond::Eq(Bson::Null) => {
                // Null matches null, undefined and missing (including a missing field inside
                // an array of documents).
                let values = candidates(doc, path);
                values.is_empty()
                    || values
                        .iter()
                        .any(|v| matches!(v, Bson::Null | Bson::Undefined))
                    || missing_somewhere(doc, path)
            }
            Cond::In(vs) if vs.iter().any(|v| matches!(v, Bson::Null)) => {
                Cond::Eq(Bson::Null).matches_path(doc, path)
                    || Cond::In(
                        vs.iter()
                            .filter(|v| !matches!(v, Bson::Null))
                            .cloned()
                            .collect(),
                    )
                    .matches_path(doc, path)
            }
            Cond::Size(_) | Cond::AllOf(_) | Cond::ElemMatch(_) => {
                // These apply to the arrays the path reaches, not to their elements.
                raw_values(doc, path).iter().any(|v| self.matches_value(v))
            }
            _ => candidates(doc, path).iter().any(|v| self.matches_value(v)),
        }
    }

    /// Whether one value satisfies the condition.
    fn matches_value(&self, v: &Bson) -> bool {
        match self {
            Cond::All(cs) => cs.iter().all(|c| c.matches_value(v)),
            Cond::Eq(x) => equal(v, x),
            Cond::Ne(x) => !equal(v, x),
            Cond::Cmp(op, x) => {
                // Only values of the same type class compare (MinKey/MaxKey aside).
                if type_rank(v) != type_rank(x) {
                    return false;
                }
                let order = compare(v, x);
                match op.as_str() {
                    "$gt" => order == Ordering::Greater,
                    "$gte" => order != Ordering::Less,
                    "$lt" => order == Ordering::Less,
                    _ => order != Ordering::Greater,
                }
            }
            Cond::In(xs) => xs.iter().any(|x| match x {
                Bson::RegularExpression(r) => regex(r.pattern.as_str(), r.options.as_str())
                    .is_ok_and(|re| Cond::Regex(re).matches_value(v)),
                x => equal(v, x),
            }),
            Cond::Nin(xs) => !Cond::In(xs.clone()).matches_value(v),
            Cond::Exists(want) => *want,
            Cond::Type(types) => types.iter().any(|t| type_matches(t, v)),
            Cond::Size(n) => matches!(v, Bson::Array(a) if a.len() as i64 == *n),
            Cond::AllOf(xs) => match v {
                Bson::Array(items) => {
                    !xs.is_empty()
                        && xs
                            .iter()
                            .all(|x| items.iter().any(|i| equal(i, x)) || equal(v, x))
                }
                other => xs.len() == 1 && equal(other, &xs[0]),
            },
            Cond::ElemMatch(m) => match v {
                Bson::Array(items) => items.iter().any(|item| match &**m {
                    ElemMatch::Query(q) => match item {
                        Bson::Document(d) => q.matches(d).unwrap_or(false),
                        _ => false,
                    },
                    ElemMatch::Cond(c) => c.matches_value(item),
                }),
                _ => false,
            },
            Cond::Regex(re) => match v {
                Bson::String(s) | Bson::Symbol(s) => re.is_match(s),
                _ => false,
            },
            Cond::Not(c) => !c.matches_value(v),
        }
    }
}

/// The values the path reaches, arrays not expanded at the end.
fn raw_values(doc: &Document, path: &str) -> Vec<Bson> {
    candidates(doc, path)
        .into_iter()
        .filter(|v| matches!(v, Bson::Array(_)))
        .collect::<Vec<_>>()
        .into_iter()
        .chain(
            candidates(doc, path)
                .into_iter()
                .filter(|v| !matches!(v, Bson::Array(_))),
        )
        .collect()
}

/// Whether a document inside an array along `path` lacks the rest of the path.
fn missing_somewhere(doc: &Document, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    fn walk(v: &Bson, rest: &[&str]) -> bool {
        let Some((head, tail)) = rest.split_first() else {
            return false;
        };
        match v {
            Bson::Document(d) => match d.get(*head) {
                None => true,
                Some(next) => walk(next, tail),
            },
            Bson::Array(items) => items
                .iter()
                .any(|i| matches!(i, Bson::Document(_)) && walk(i, rest)),
            _ => false,
        }
    }
    walk(&Bson::Document(doc.clone()), &parts)
}

fn type_matches(t: &Bson, v: &Bson) -> bool {
    let name = type_name(&Some(v.clone()));
    match t {
        Bson::String(s) if s == "number" => matches!(
            v,
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
        ),
        Bson::String(s) => s == name,
        other => {
            let code = crate::mql::number::Num::of(other)
                .and_then(|n| n.to_dec())
                .and_then(crate::mql::number::Dec::to_i64);
            let of_value = match v {
                Bson::Double(_) => 1,
                Bson::String(_) => 2,
                Bson::Document(_) => 3,
                Bson::Array(_) => 4,
                Bson::Binary(_) => 5,
                Bson::Undefined => 6,
                Bson::ObjectId(_) => 7,
                Bson::Boolean(_) => 8,
                Bson::DateTime(_) => 9,
                Bson::Null => 10,
                Bson::RegularExpression(_) => 11,
                Bson::DbPointer(_) => 12,
                Bson::JavaScriptCode(_) => 13,
                Bson::Symbol(_) => 14,
                Bson::JavaScriptCodeWithScope(_) => 15,
                Bson::Int32(_) => 16,
                Bson::Timestamp(_) => 17,
                Bson::Int64(_) => 18,
                Bson::Decimal128(_) => 19,
                Bson::MinKey => -1,
                Bson::MaxKey => 127,
            };
            code == Some(of_value)
        }
    }
}

fn regex(pattern: &str, options: &str) -> Result<regex_lite::Regex, ParseError> {
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => flags.push(c),
            'u' => {}
            other => return Err(bad("$regex", &format!("unsupported option '{other}'"))),
        }
    }
    let full = if flags.is_empty() {
        pattern.to_string()
    } else {
        format!("(?{flags}){pattern}")
    };
    regex_lite::Regex::new(&full).map_err(|e| bad("$regex", &e.to_string()))
}
