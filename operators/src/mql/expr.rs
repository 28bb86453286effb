//! Aggregation expressions: parsed once from BSON ([`Expr::parse`]), evaluated per document
//! ([`Expr::eval`]).
//!
//! Supported operators (everything else is a parse error naming the operator and suggesting the
//! nearest supported name):
//!
//! | kind | operators |
//! |---|---|
//! | values | `"$path"`, `"$$ROOT"`, `"$$CURRENT"`, `"$$var"`, `$literal`, `$let`, documents and arrays of expressions |
//! | arithmetic | `$add $subtract $multiply $divide $mod $abs $round $trunc $floor $ceil` |
//! | comparison | `$eq $ne $gt $gte $lt $lte $cmp` |
//! | boolean | `$and $or $not` |
//! | conditional | `$cond $ifNull $switch` |
//! | strings | `$concat $toLower $toUpper $strLenCP $substrCP $split $trim` |
//! | arrays | `$size $arrayElemAt $in $first $last $slice $concatArrays $isArray`, and `$sum $avg $min $max` over arrays |
//! | objects | `$mergeObjects $getField` |
//! | types | `$type $toString $toInt $toLong $toDouble $toDecimal $toBool` |
//!
//! Missing and null follow MongoDB: a missing field evaluates to *missing* (`None`), which
//! `$project` omits and most operators treat as null; arithmetic on null or missing gives null.
//! Runtime errors MongoDB raises (dividing by zero, `$toInt` of a non-number string, `$add` of a
//! string) are [`EvalError`]s naming the operator.
//!
//! ```
//! use bson::{bson, doc};
//! use changeflow_operators::mql::expr::Expr;
//! let e = Expr::parse(&bson!({"$multiply": ["$qty", {"$add": ["$price", 1]}]})).unwrap();
//! let doc = doc! { "qty": 2, "price": 1.5 };
//! assert_eq!(e.eval(&doc).unwrap(), Some(bson!(5.0)));
//! let err = Expr::parse(&bson!({"$multipy": [1, 2]})).unwrap_err();
//! assert!(err.to_string().contains("did you mean $multiply"));
//! ```

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::mql::compare::{compare, equal};
use crate::mql::number::{self, Dec, Num};
use crate::mql::path::resolve_in;

/// Why an expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An operator changeflow does not support (or that does not exist).
    #[error("unknown expression operator {name}{}", suggestion(.nearest))]
    UnknownOperator {
        /// The operator as written.
        name: String,
        /// The nearest supported operator.
        nearest: Option<String>,
    },
    /// An operator with the wrong arguments.
    #[error("{operator}: {reason}")]
    BadArguments {
        /// The operator.
        operator: String,
        /// What is wrong.
        reason: String,
    },
}

fn suggestion(nearest: &Option<String>) -> String {
    nearest
        .as_ref()
        .map_or(String::new(), |n| format!(" (did you mean {n}?)"))
}

/// An error MongoDB would raise while evaluating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operator}: {reason}")]
pub struct EvalError {
    /// The operator that failed.
    pub operator: String,
    /// Why.
    pub reason: String,
}

fn fail<T>(operator: &str, reason: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        operator: operator.into(),
        reason: reason.into(),
    })
}

/// The supported operators, for suggestions.
pub const OPERATORS: &[&str] = &[
    "$literal",
    "$let",
    "$add",
    "$subtract",
    "$multiply",
    "$divide",
    "$mod",
    "$abs",
    "$round",
    "$trunc",
    "$floor",
    "$ceil",
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$cmp",
    "$and",
    "$or",
    "$not",
    "$cond",
    "$ifNull",
    "$switch",
    "$concat",
    "$toLower",
    "$toUpper",
    "$strLenCP",
    "$substrCP",
    "$split",
    "$trim",
    "$size",
    "$arrayElemAt",
    "$in",
    "$first",
    "$last",
    "$slice",
    "$concatArrays",
    "$isArray",
    "$sum",
    "$avg",
    "$min",
    "$max",
    "$mergeObjects",
    "$getField",
    "$type",
    "$toString",
    "$toInt",
    "$toLong",
    "$toDouble",
    "$toDecimal",
    "$toBool",
    "$filter",
    "$map",
    "$reduce",
    "$regexMatch",
    "$objectToArray",
    "$arrayToObject",
    "$year",
    "$month",
    "$dayOfMonth",
    "$dayOfWeek",
    "$dayOfYear",
    "$hour",
    "$minute",
    "$second",
    "$millisecond",
    "$dateToString",
    "$dateTrunc",
    "$dateFromString",
    "$toDate",
    "$convert",
    "$toObjectId",
];

/// The entry of `candidates` nearest to `name` by edit distance, if close enough.
pub fn nearest(name: &str, candidates: &[&str]) -> Option<String> {
    let distance = |a: &str, b: &str| {
        let (a, b): (Vec<char>, Vec<char>) = (
            a.to_lowercase().chars().collect(),
            b.to_lowercase().chars().collect(),
        );
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut prev = row[0];
            row[0] = i;
            for j in 1..=b.len() {
                let cur = row[j];
                row[j] = (row[j] + 1)
                    .min(row[j - 1] + 1)
                    .min(prev + usize::from(a[i - 1] != b[j - 1]));
                prev = cur;
            }
        }
        row[b.len()]
    };
    candidates
        .iter()
        .map(|c| (distance(name, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .map(|(_, c)| c.to_string())
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Bson),
    /// `"$a.b"`: a path below `$$CURRENT`.
    Field(Vec<String>),
    /// `"$$name.a.b"`: a variable and a path below it.
    Variable(String, Vec<String>),
    /// A document whose values are expressions.
    Object(Vec<(String, Expr)>),
    /// An array of expressions.
    Array(Vec<Expr>),
    /// `{$let: {vars, in}}`.
    Let(Vec<(String, Expr)>, Box<Expr>),
    /// An operator applied to arguments.
    Op(String, Vec<Expr>),
    /// `{$switch: {branches: [{case, then}], default}}`.
    Switch(Vec<(Expr, Expr)>, Option<Box<Expr>>),
    /// `$filter` (`Some(limit)`) or `$map` (`None`): input, variable name, body.
    Each {
        /// `$filter` or `$map`.
        op: String,
        /// The array.
        input: Box<Expr>,
        /// The element's variable name (`this` by default).
        var: String,
        /// The condition (`$filter`) or the new element (`$map`).
        body: Box<Expr>,
        /// `$filter`'s `limit`.
        limit: Option<Box<Expr>>,
    },
    /// `$reduce`: input, initial value, body over `$$value` and `$$this`.
    Reduce(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Variables in scope while evaluating.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    values: BTreeMap<String, Option<Bson>>,
}

impl Expr {
    /// Parses an expression.
    pub fn parse(value: &Bson) -> Result<Expr, ParseError> {
        match value {
            Bson::String(s) if s.starts_with("$$") => {
                let mut parts = s[2..].split('.').map(str::to_string);
                let name = parts.next().unwrap_or_default();
                Ok(Expr::Variable(name, parts.collect()))
            }
            Bson::String(s) if s.starts_with('$') => {
                Ok(Expr::Field(s[1..].split('.').map(str::to_string).collect()))
            }
            Bson::Array(items) => Ok(Expr::Array(
                items.iter().map(Expr::parse).collect::<Result<_, _>>()?,
            )),
            Bson::Document(d) => {
                let operator = d.keys().next().filter(|k| k.starts_with('$'));
                match operator {
                    Some(op) if d.len() == 1 => Expr::parse_operator(op, &d[op.as_str()]),
                    Some(op) => Err(ParseError::BadArguments {
                        operator: op.clone(),
                        reason: "an expression object with an operator must have exactly one field"
                            .into(),
                    }),
                    None => Ok(Expr::Object(
                        d.iter()
                            .map(|(k, v)| Ok((k.clone(), Expr::parse(v)?)))
                            .collect::<Result<_, ParseError>>()?,
                    )),
                }
            }
            other => Ok(Expr::Literal(other.clone())),
        }
    }

    fn parse_operator(op: &str, args: &Bson) -> Result<Expr, ParseError> {
        let bad = |reason: &str| ParseError::BadArguments {
            operator: op.into(),
            reason: reason.into(),
        };
        match op {
            "$literal" => Ok(Expr::Literal(args.clone())),
            "$let" => {
                let spec = args
                    .as_document()
                    .ok_or_else(|| bad("expects {vars, in}"))?;
                let vars = spec
                    .get_document("vars")
                    .map_err(|_| bad("expects vars: {name: expression}"))?
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Expr::parse(v)?)))
                    .collect::<Result<_, ParseError>>()?;
                let body = spec.get("in").ok_or_else(|| bad("expects in"))?;
                Ok(Expr::Let(vars, Box::new(Expr::parse(body)?)))
            }
            "$switch" => {
                let spec = args
                    .as_document()
                    .ok_or_else(|| bad("expects {branches, default}"))?;
                let branches = spec
                    .get_array("branches")
                    .map_err(|_| bad("expects branches: [{case, then}]"))?
                    .iter()
                    .map(|b| {
                        let b = b
                            .as_document()
                            .ok_or_else(|| bad("a branch is {case, then}"))?;
                        let case = b.get("case").ok_or_else(|| bad("a branch needs case"))?;
                        let then = b.get("then").ok_or_else(|| bad("a branch needs then"))?;
                        Ok((Expr::parse(case)?, Expr::parse(then)?))
                    })
                    .collect::<Result<_, ParseError>>()?;
                let default = spec
                    .get("default")
                    .map(Expr::parse)
                    .transpose()?
                    .map(Box::new);
                Ok(Expr::Switch(branches, default))
            }
            "$cond" => match args {
                Bson::Document(d) => {
                    let part = |k: &str| {
                        d.get(k)
                            .ok_or_else(|| bad("expects {if, then, else}"))
                            .and_then(Expr::parse)
                    };
                    Ok(Expr::Op(
                        op.into(),
                        vec![part("if")?, part("then")?, part("else")?],
                    ))
                }
                _ => Expr::op_with(op, args, Some(3)),
            },
            "$getField" => match args {
                Bson::Document(d) => {
                    let field = d.get("field").ok_or_else(|| bad("expects field"))?;
                    let input = d
                        .get("input")
                        .map_or(Ok(Expr::Variable("CURRENT".into(), vec![])), Expr::parse)?;
                    Ok(Expr::Op(op.into(), vec![Expr::parse(field)?, input]))
                }
                other => Ok(Expr::Op(
                    op.into(),
                    vec![
                        Expr::parse(other)?,
                        Expr::Variable("CURRENT".into(), vec![]),
                    ],
                )),
            },
            "$trim" => {
                let d = args
                    .as_document()
                    .ok_or_else(|| bad("expects {input, chars}"))?;
                let input = d.get("input").ok_or_else(|| bad("expects input"))?;
                let mut parts = vec![Expr::parse(input)?];
                if let Some(chars) = d.get("chars") {
                    parts.push(Expr::parse(chars)?);
                }
                Ok(Expr::Op(op.into(), parts))
            }
            "$filter" | "$map" => {
                let d = args
                    .as_document()
                    .ok_or_else(|| bad("expects {input, as, cond / in}"))?;
                let input = d.get("input").ok_or_else(|| bad("expects input"))?;
                let body_key = if op == "$filter" { "cond" } else { "in" };
                let body = d
                    .get(body_key)
                    .ok_or_else(|| bad(&format!("expects {body_key}")))?;
                Ok(Expr::Each {
                    op: op.into(),
                    input: Box::new(Expr::parse(input)?),
                    var: d.get_str("as").unwrap_or("this").to_string(),
                    body: Box::new(Expr::parse(body)?),
                    limit: d.get("limit").map(Expr::parse).transpose()?.map(Box::new),
                })
            }
            "$reduce" => {
                let d = args
                    .as_document()
                    .ok_or_else(|| bad("expects {input, initialValue, in}"))?;
                let part = |k: &str| {
                    d.get(k)
                        .ok_or_else(|| bad("expects {input, initialValue, in}"))
                        .and_then(Expr::parse)
                        .map(Box::new)
                };
                Ok(Expr::Reduce(
                    part("input")?,
                    part("initialValue")?,
                    part("in")?,
                ))
            }
            "$regexMatch" | "$dateToString" | "$dateTrunc" | "$dateFromString" | "$convert" => {
                let d = args
                    .as_document()
                    .ok_or_else(|| bad("expects a document of named arguments"))?;
                let names: &[&str] = match op {
                    "$regexMatch" => &["input", "regex", "options"],
                    "$dateToString" => &["date", "format", "timezone", "onNull"],
                    "$dateTrunc" => &["date", "unit", "binSize", "timezone"],
                    "$convert" => &["input", "to", "onError", "onNull"],
                    _ => &["dateString", "format", "timezone", "onError", "onNull"],
                };
                if let Some(unknown) = d.keys().find(|k| !names.contains(&k.as_str())) {
                    return Err(bad(&format!("unknown argument {unknown}")));
                }
                let parts = names
                    .iter()
                    .map(|n| {
                        d.get(*n)
                            .map_or(Ok(Expr::Variable("REMOVE".into(), vec![])), Expr::parse)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Expr::Op(op.into(), parts))
            }
            "$year" | "$month" | "$dayOfMonth" | "$dayOfWeek" | "$dayOfYear" | "$hour"
            | "$minute" | "$second" | "$millisecond" => match args {
                Bson::Document(d) if d.contains_key("date") => {
                    let date = Expr::parse(&d["date"])?;
                    let tz = d
                        .get("timezone")
                        .map_or(Ok(Expr::Variable("REMOVE".into(), vec![])), Expr::parse)?;
                    Ok(Expr::Op(op.into(), vec![date, tz]))
                }
                other => {
                    let mut e = Expr::op_with(op, other, None)?;
                    if let Expr::Op(_, a) = &mut e {
                        a.truncate(1);
                        a.push(Expr::Variable("REMOVE".into(), vec![]));
                    }
                    Ok(e)
                }
            },
            "$round" | "$trunc" => Expr::op_with(op, args, None),
            _ if OPERATORS.contains(&op) => Expr::op_with(op, args, None),
            _ => Err(ParseError::UnknownOperator {
                name: op.into(),
                nearest: nearest(op, OPERATORS),
            }),
        }
    }

    fn op_with(op: &str, args: &Bson, arity: Option<usize>) -> Result<Expr, ParseError> {
        let parsed: Vec<Expr> = match args {
            Bson::Array(items) => items.iter().map(Expr::parse).collect::<Result<_, _>>()?,
            other => vec![Expr::parse(other)?],
        };
        if arity.is_some_and(|n| n != parsed.len()) {
            return Err(ParseError::BadArguments {
                operator: op.into(),
                reason: format!(
                    "expects {} arguments, got {}",
                    arity.unwrap_or(0),
                    parsed.len()
                ),
            });
        }
        Ok(Expr::Op(op.into(), parsed))
    }

    /// Evaluates against `doc` (`$$ROOT` and `$$CURRENT`); `Ok(None)` is *missing*.
    pub fn eval(&self, doc: &Document) -> Result<Option<Bson>, EvalError> {
        let root = Bson::Document(doc.clone());
        let mut vars = Vars::default();
        vars.values.insert("ROOT".into(), Some(root.clone()));
        vars.values.insert("CURRENT".into(), Some(root));
        self.eval_in(&vars)
    }

    /// Evaluates with the given variables in scope.
    pub fn eval_in(&self, vars: &Vars) -> Result<Option<Bson>, EvalError> {
        match self {
            Expr::Literal(v) => Ok(Some(v.clone())),
            Expr::Field(path) => Ok(lookup(vars.values.get("CURRENT").cloned().flatten(), path)),
            Expr::Variable(name, path) => match vars.values.get(name.as_str()) {
                Some(value) => Ok(lookup(value.clone(), path)),
                None if name == "REMOVE" => Ok(None),
                None => fail(&format!("$${name}"), "undefined variable"),
            },
            Expr::Object(fields) => {
                let mut out = Document::new();
                for (k, e) in fields {
                    if let Some(v) = e.eval_in(vars)? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Some(Bson::Document(out)))
            }
            Expr::Array(items) => Ok(Some(Bson::Array(
                items
                    .iter()
                    .map(|e| Ok(e.eval_in(vars)?.unwrap_or(Bson::Null)))
                    .collect::<Result<_, EvalError>>()?,
            ))),
            Expr::Let(bindings, body) => {
                let mut inner = vars.clone();
                for (name, e) in bindings {
                    inner.values.insert(name.clone(), e.eval_in(vars)?);
                }
                body.eval_in(&inner)
            }
            Expr::Switch(branches, default) => {
                for (case, then) in branches {
                    if truthy(&case.eval_in(vars)?) {
                        return then.eval_in(vars);
                    }
                }
                match default {
                    Some(d) => d.eval_in(vars),
                    None => fail("$switch", "no branch matched and there is no default"),
                }
            }
            Expr::Each {
                op,
                input,
                var,
                body,
                limit,
            } => {
                let items = match input.eval_in(vars)? {
                    None | Some(Bson::Null | Bson::Undefined) => return Ok(Some(Bson::Null)),
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return fail(
                            op,
                            format!("input must be an array, not {}", type_name(&Some(other))),
                        );
                    }
                };
                let limit = match limit {
                    Some(l) => match l
                        .eval_in(vars)?
                        .as_ref()
                        .and_then(Num::of)
                        .and_then(|n| n.to_dec())
                        .and_then(Dec::to_i64)
                    {
                        Some(n) if n > 0 => Some(n as usize),
                        _ => return fail(op, "limit must be a positive integer"),
                    },
                    None => None,
                };
                let mut out = Vec::new();
                let mut inner = vars.clone();
                for item in items {
                    inner.values.insert(var.clone(), Some(item.clone()));
                    let v = body.eval_in(&inner)?;
                    if op == "$map" {
                        out.push(v.unwrap_or(Bson::Null));
                    } else if truthy(&v) {
                        out.push(item);
                        if limit.is_some_and(|l| out.len() >= l) {
                            break;
                        }
                    }
                }
                Ok(Some(Bson::Array(out)))
            }
            Expr::Reduce(input, init, body) => {
                let items = match input.eval_in(vars)? {
                    None | Some(Bson::Null | Bson::Undefined) => return Ok(Some(Bson::Null)),
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return fail(
                            "$reduce",
                            format!("input must be an array, not {}", type_name(&Some(other))),
                        );
                    }
                };
                let mut value = init.eval_in(vars)?;
                let mut inner = vars.clone();
                for item in items {
                    inner.values.insert("value".into(), value);
                    inner.values.insert("this".into(), Some(item));
                    value = body.eval_in(&inner)?;
                }
                Ok(value)
            }
            Expr::Op(op, args) => eval_op(op, args, vars),
        }
    }
}

fn lookup(value: Option<Bson>, path: &[String]) -> Option<Bson> {
    let value = value?;
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    resolve_in(&value, &parts)
}

/// MongoDB's truthiness: false, null, missing, undefined and numeric zero are false.
pub fn truthy(value: &Option<Bson>) -> bool {
    match value {
        None | Some(Bson::Null | Bson::Undefined | Bson::Boolean(false)) => false,
        Some(v) => Num::of(v).is_none_or(|n| number::cmp_num(n, Num::Int(0)) != Ordering::Equal),
    }
}

fn nullish(v: &Option<Bson>) -> bool {
    matches!(v, None | Some(Bson::Null | Bson::Undefined))
}

/// The BSON type name `$type` returns.
pub fn type_name(v: &Option<Bson>) -> &'static str {
    match v {
        None => "missing",
        Some(v) => match v {
            Bson::Double(_) => "double",
            Bson::String(_) => "string",
            Bson::Document(_) => "object",
            Bson::Array(_) => "array",
            Bson::Binary(_) => "binData",
            Bson::Undefined => "undefined",
            Bson::ObjectId(_) => "objectId",
            Bson::Boolean(_) => "bool",
            Bson::DateTime(_) => "date",
            Bson::Null => "null",
            Bson::RegularExpression(_) => "regex",
            Bson::DbPointer(_) => "dbPointer",
            Bson::JavaScriptCode(_) => "javascript",
            Bson::Symbol(_) => "symbol",
            Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
            Bson::Int32(_) => "int",
            Bson::Timestamp(_) => "timestamp",
            Bson::Int64(_) => "long",
            Bson::Decimal128(_) => "decimal",
            Bson::MinKey => "minKey",
            Bson::MaxKey => "maxKey",
        },
    }
}

fn eval_op(op: &str, args: &[Expr], vars: &Vars) -> Result<Option<Bson>, EvalError> {
    let values = || -> Result<Vec<Option<Bson>>, EvalError> {
        args.iter().map(|a| a.eval_in(vars)).collect()
    };
    let arity = |n: usize| -> Result<(), EvalError> {
        if args.len() == n {
            Ok(())
        } else {
            fail(op, format!("expects {n} arguments, got {}", args.len()))
        }
    };
    let some = |b: Bson| Ok(Some(b));
    match op {
        "$add" | "$multiply" => {
            let vs = values()?;
            if vs.iter().any(nullish) {
                return some(Bson::Null);
            }
            let mut acc: Option<Num> = None;
            let mut date: Option<i64> = None;
            for v in vs.iter().flatten() {
                match (v, Num::of(v)) {
                    (Bson::DateTime(d), _) if op == "$add" && date.is_none() => {
                        date = Some(d.timestamp_millis())
                    }
                    (_, Some(n)) => {
                        acc = Some(match acc {
                            None => n,
                            Some(a) if op == "$add" => number::add(&a, &n),
                            Some(a) => number::multiply(&a, &n),
                        })
                    }
                    _ => {
                        return fail(
                            op,
                            format!(
                                "only numbers are supported, not {}",
                                type_name(&Some(v.clone()))
                            ),
                        );
                    }
                }
            }
            match date {
                Some(ms) => {
                    let add = acc.map_or(0.0, Num::to_f64);
                    some(Bson::DateTime(bson::DateTime::from_millis(
                        ms + add.round() as i64,
                    )))
                }
                None => some(
                    acc.unwrap_or(if op == "$add" {
                        Num::Int(0)
                    } else {
                        Num::Int(1)
                    })
                    .to_bson(),
                ),
            }
        }
        "$subtract" | "$divide" | "$mod" => {
            arity(2)?;
            let vs = values()?;
            if vs.iter().any(nullish) {
                return some(Bson::Null);
            }
            let (a, b) = (
                vs[0].clone().unwrap_or(Bson::Null),
                vs[1].clone().unwrap_or(Bson::Null),
            );
            if let (Bson::DateTime(x), "$subtract") = (&a, op) {
                return match (&b, Num::of(&b)) {
                    (Bson::DateTime(y), _) => {
                        some(Bson::Int64(x.timestamp_millis() - y.timestamp_millis()))
                    }
                    (_, Some(n)) => some(Bson::DateTime(bson::DateTime::from_millis(
                        x.timestamp_millis() - n.to_f64().round() as i64,
                    ))),
                    _ => fail(op, "cannot subtract that from a date"),
                };
            }
            let (Some(x), Some(y)) = (Num::of(&a), Num::of(&b)) else {
                return fail(op, "only numbers are supported");
            };
            match op {
                "$subtract" => some(number::subtract(&x, &y).to_bson()),
                "$divide" => match number::divide(&x, &y) {
                    Some(q) => some(q.to_bson()),
                    None => fail(op, "can't divide by zero"),
                },
                _ => modulo(x, y),
            }
        }
        "$abs" | "$floor" | "$ceil" => {
            arity(1)?;
            let v = values()?.remove(0);
            if nullish(&v) {
                return some(Bson::Null);
            }
            let Some(n) = v.as_ref().and_then(Num::of) else {
                return fail(op, "only numbers are supported");
            };
            some(match (op, n) {
                ("$abs", Num::Int(i)) => i
                    .checked_abs()
                    .map_or(Bson::Int64(-(i as i64)), Bson::Int32),
                ("$abs", Num::Long(i)) => match i.checked_abs() {
                    Some(a) => Bson::Int64(a),
                    None => {
                        return fail(
                            op,
                            "can't take the absolute value of the most negative long",
                        );
                    }
                },
                ("$abs", Num::Double(x)) => Bson::Double(x.abs()),
                ("$abs", Num::Decimal(Dec::Finite { coef, exp, .. })) => {
                    Num::Decimal(Dec::Finite {
                        neg: false,
                        coef,
                        exp,
                    })
                    .to_bson()
                }
                ("$abs", Num::Decimal(Dec::Inf(_))) => Num::Decimal(Dec::Inf(false)).to_bson(),
                ("$abs", Num::Decimal(Dec::NaN)) => n.to_bson(),
                (_, Num::Int(_) | Num::Long(_)) => n.to_bson(),
                ("$floor", Num::Double(x)) => Bson::Double(x.floor()),
                ("$ceil", Num::Double(x)) => Bson::Double(x.ceil()),
                (_, Num::Decimal(d)) => Num::Decimal(round_dec(d, 0, op)).to_bson(),
                _ => Bson::Null,
            })
        }
        "$round" | "$trunc" => {
            let vs = values()?;
            if vs.is_empty() || vs.len() > 2 {
                return fail(op, "expects 1 or 2 arguments");
            }
            if vs.iter().any(nullish) {
                return some(Bson::Null);
            }
            let places = match vs.get(1).cloned().flatten() {
                Some(p) => match Num::of(&p).and_then(|n| n.to_dec()).and_then(Dec::to_i64) {
                    Some(p) if (-20..=100).contains(&p) => p as i32,
                    _ => return fail(op, "place must be an integer between -20 and 100"),
                },
                None => 0,
            };
            let Some(n) = vs[0].as_ref().and_then(Num::of) else {
                return fail(op, "only numbers are supported");
            };
            some(match n {
                Num::Decimal(d) => Num::Decimal(round_dec(d, places, op)).to_bson(),
                Num::Double(x) => {
                    let d = Dec::from_f64(x).map(|d| round_dec(d, places, op).to_f64());
                    Bson::Double(d.unwrap_or_else(|| {
                        let f = 10f64.powi(places);
                        if op == "$trunc" {
                            (x * f).trunc() / f
                        } else {
                            (x * f).round() / f
                        }
                    }))
                }
                Num::Int(_) | Num::Long(_) if places >= 0 => n.to_bson(),
                Num::Int(_) | Num::Long(_) => {
                    let r = round_dec(n.to_dec().unwrap_or(Dec::NaN), places, op);
                    match (n, r.to_i64()) {
                        (Num::Int(_), Some(v)) => {
                            i32::try_from(v).map_or(Bson::Int64(v), Bson::Int32)
                        }
                        (_, Some(v)) => Bson::Int64(v),
                        _ => Bson::Null,
                    }
                }
            })
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            arity(2)?;
            let vs = values()?;
            let (a, b) = (
                vs[0].clone().unwrap_or(Bson::Null),
                vs[1].clone().unwrap_or(Bson::Null),
            );
            let order = compare(&a, &b);
            some(match op {
                "$eq" => Bson::Boolean(order == Ordering::Equal),
                "$ne" => Bson::Boolean(order != Ordering::Equal),
                "$gt" => Bson::Boolean(order == Ordering::Greater),
                "$gte" => Bson::Boolean(order != Ordering::Less),
                "$lt" => Bson::Boolean(order == Ordering::Less),
                "$lte" => Bson::Boolean(order != Ordering::Greater),
                _ => Bson::Int32(order as i32),
            })
        }
        "$and" => {
            for a in args {
                if !truthy(&a.eval_in(vars)?) {
                    return some(Bson::Boolean(false));
                }
            }
            some(Bson::Boolean(true))
        }
        "$or" => {
            for a in args {
                if truthy(&a.eval_in(vars)?) {
                    return some(Bson::Boolean(true));
                }
            }
            some(Bson::Boolean(false))
        }
        "$not" => {
            arity(1)?;
            some(Bson::Boolean(!truthy(&args[0].eval_in(vars)?)))
        }
        "$cond" => {
            arity(3)?;
            if truthy(&args[0].eval_in(vars)?) {
                args[1].eval_in(vars)
            } else {
                args[2].eval_in(vars)
            }
        }
        "$ifNull" => {
            if args.len() < 2 {
                return fail(op, "expects at least 2 arguments");
            }
            let (last, rest) = args.split_last().unwrap_or((&args[0], &[]));
            for a in rest {
                let v = a.eval_in(vars)?;
                if !nullish(&v) {
                    return Ok(v);
                }
            }
            last.eval_in(vars)
        }
        "$concat" => {
            let mut out = String::new();
            for v in values()? {
                match v {
                    None | Some(Bson::Null | Bson::Undefined) => return some(Bson::Null),
                    Some(Bson::String(s)) => out.push_str(&s),
                    Some(other) => {
                        return fail(
                            op,
                            format!(
                                "only strings are supported, not {}",
                                type_name(&Some(other))
                            ),
                        );
                    }
                }
            }
            some(Bson::String(out))
        }
        "$toLower" | "$toUpper" | "$strLenCP" => {
            arity(1)?;
            let v = values()?.remove(0);
            let s = match v {
                None | Some(Bson::Null | Bson::Undefined) if op != "$strLenCP" => String::new(),
                Some(Bson::String(s)) => s,
                Some(
                    other @ (Bson::Int32(_)
                    | Bson::Int64(_)
                    | Bson::Double(_)
                    | Bson::Decimal128(_)),
                ) if op != "$strLenCP" => to_string(&other),
                other => return fail(op, format!("requires a string, not {}", type_name(&other))),
            };
            some(match op {
                "$toLower" => Bson::String(s.to_lowercase()),
                "$toUpper" => Bson::String(s.to_uppercase()),
                _ => Bson::Int32(s.chars().count() as i32),
            })
        }
        "$substrCP" => {
            arity(3)?;
            let vs = values()?;
            let s = match &vs[0] {
                Some(Bson::String(s)) => s.clone(),
                None | Some(Bson::Null) => String::new(),
                other => return fail(op, format!("requires a string, not {}", type_name(other))),
            };
            let int = |v: &Option<Bson>| {
                v.as_ref()
                    .and_then(Num::of)
                    .and_then(|n| n.to_dec())
                    .and_then(Dec::to_i64)
            };
            let (Some(start), Some(len)) = (int(&vs[1]), int(&vs[2])) else {
                return fail(op, "start and length must be integers");
            };
            if start < 0 || len < 0 {
                return fail(op, "start and length must be non-negative");
            }
            some(Bson::String(
                s.chars().skip(start as usize).take(len as usize).collect(),
            ))
        }
        "$split" => {
            arity(2)?;
            let vs = values()?;
            if nullish(&vs[0]) {
                return some(Bson::Null);
            }
            match (&vs[0], &vs[1]) {
                (Some(Bson::String(s)), Some(Bson::String(sep))) if !sep.is_empty() => {
                    some(Bson::Array(
                        s.split(sep.as_str())
                            .map(|p| Bson::String(p.into()))
                            .collect(),
                    ))
                }
                _ => fail(op, "requires a string and a non-empty string delimiter"),
            }
        }
        "$trim" => {
            let vs = values()?;
            match (vs.first().cloned().flatten(), vs.get(1).cloned().flatten()) {
                (None | Some(Bson::Null), _) => some(Bson::Null),
                (Some(Bson::String(s)), None) => some(Bson::String(
                    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                        .to_string(),
                )),
                (Some(Bson::String(s)), Some(Bson::String(chars))) => some(Bson::String(
                    s.trim_matches(|c: char| chars.contains(c)).to_string(),
                )),
                _ => fail(op, "requires a string input"),
            }
        }
        "$size" => {
            arity(1)?;
            match values()?.remove(0) {
                Some(Bson::Array(a)) => some(Bson::Int32(a.len() as i32)),
                other => fail(
                    op,
                    format!("the argument must be an array, not {}", type_name(&other)),
                ),
            }
        }
        "$isArray" => {
            arity(1)?;
            some(Bson::Boolean(matches!(
                values()?.remove(0),
                Some(Bson::Array(_))
            )))
        }
        "$arrayElemAt" => {
            arity(2)?;
            let vs = values()?;
            if nullish(&vs[0]) || nullish(&vs[1]) {
                return some(Bson::Null);
            }
            let Some(Bson::Array(items)) = &vs[0] else {
                return fail(op, "the first argument must be an array");
            };
            let Some(i) = vs[1]
                .as_ref()
                .and_then(Num::of)
                .and_then(|n| n.to_dec())
                .and_then(Dec::to_i64)
            else {
                return fail(op, "the index must be an integer");
            };
            let index = if i < 0 { items.len() as i64 + i } else { i };
            Ok(usize::try_from(index)
                .ok()
                .and_then(|i| items.get(i))
                .cloned())
        }
        "$first" | "$last" => {
            arity(1)?;
            match values()?.remove(0) {
                None | Some(Bson::Null | Bson::Undefined) => some(Bson::Null),
                Some(Bson::Array(items)) => Ok(if op == "$first" {
                    items.first()
                } else {
                    items.last()
                }
                .cloned()),
                other => fail(
                    op,
                    format!("the argument must be an array, not {}", type_name(&other)),
                ),
            }
        }
        "$slice" => {
            let vs = values()?;
            if !(2..=3).contains(&vs.len()) {
                return fail(op, "expects 2 or 3 arguments");
            }
            if vs.iter().any(nullish) {
                return some(Bson::Null);
            }
            let Some(Bson::Array(items)) = &vs[0] else {
                return fail(op, "the first argument must be an array");
            };
            let int = |v: &Option<Bson>| {
                v.as_ref()
                    .and_then(Num::of)
                    .and_then(|n| n.to_dec())
                    .and_then(Dec::to_i64)
            };
            let len = items.len() as i64;
            let (start, count) = if vs.len() == 2 {
                let n = int(&vs[1]).ok_or_else(|| EvalError {
                    operator: op.into(),
                    reason: "n must be an integer".into(),
                })?;
                if n >= 0 {
                    (0, n)
                } else {
                    ((len + n).max(0), -n)
                }
            } else {
                let p = int(&vs[1]).ok_or_else(|| EvalError {
                    operator: op.into(),
                    reason: "position must be an integer".into(),
                })?;
                let n = int(&vs[2]).filter(|n| *n > 0).ok_or_else(|| EvalError {
                    operator: op.into(),
                    reason: "n must be a positive integer".into(),
                })?;
                (if p < 0 { (len + p).max(0) } else { p.min(len) }, n)
            };
            some(Bson::Array(
                items
                    .iter()
                    .skip(start as usize)
                    .take(count as usize)
                    .cloned()
                    .collect(),
            ))
        }
        "$concatArrays" => {
            let mut out = Vec::new();
            for v in values()? {
                match v {
                    None | Some(Bson::Null | Bson::Undefined) => return some(Bson::Null),
                    Some(Bson::Array(items)) => out.extend(items),
                    other => {
                        return fail(
                            op,
                            format!("only arrays are supported, not {}", type_name(&other)),
                        );
                    }
                }
            }
            some(Bson::Array(out))
        }
        "$in" => {
            arity(2)?;
            let vs = values()?;
            let needle = vs[0].clone().unwrap_or(Bson::Null);
            match &vs[1] {
                Some(Bson::Array(items)) => {
                    some(Bson::Boolean(items.iter().any(|i| equal(i, &needle))))
                }
                other => fail(
                    op,
                    format!(
                        "the second argument must be an array, not {}",
                        type_name(other)
                    ),
                ),
            }
        }
        "$sum" | "$avg" | "$min" | "$max" => {
            let vs = values()?;
            let items: Vec<Bson> = if vs.len() == 1 {
                match vs.into_iter().next().flatten() {
                    Some(Bson::Array(items)) => items,
                    Some(v) => vec![v],
                    None => vec![],
                }
            } else {
                vs.into_iter().flatten().collect()
            };
            some(array_accumulate(op, &items))
        }
        "$mergeObjects" => {
            let mut out = Document::new();
            for v in values()? {
                match v {
                    None | Some(Bson::Null | Bson::Undefined) => {}
                    Some(Bson::Document(d)) => {
                        for (k, v) in d {
                            out.insert(k, v);
                        }
                    }
                    other => {
                        return fail(op, format!("requires objects, not {}", type_name(&other)));
                    }
                }
            }
            some(Bson::Document(out))
        }
        "$getField" => {
            let vs = values()?;
            let Some(Bson::String(field)) = vs[0].clone() else {
                return fail(op, "field must be a string");
            };
            match vs.get(1).cloned().flatten() {
                Some(Bson::Document(d)) => Ok(d.get(&field).cloned()),
                None | Some(Bson::Null) => some(Bson::Null),
                Some(other) => fail(
                    op,
                    format!("input must be an object, not {}", type_name(&Some(other))),
                ),
            }
        }
        "$type" => {
            arity(1)?;
            some(Bson::String(type_name(&values()?.remove(0)).into()))
        }
        "$convert" => {
            let vs = values()?;
            let target = match &vs[1] {
                Some(Bson::String(t)) => t.clone(),
                Some(code) => match Num::of(code).and_then(|n| n.to_dec()).and_then(Dec::to_i64) {
                    Some(1) => "double".into(),
                    Some(2) => "string".into(),
                    Some(7) => "objectId".into(),
                    Some(8) => "bool".into(),
                    Some(9) => "date".into(),
                    Some(16) => "int".into(),
                    Some(18) => "long".into(),
                    Some(19) => "decimal".into(),
                    _ => return fail(op, format!("unsupported target type {code}")),
                },
                None => return fail(op, "'to' is required"),
            };
            let to = match target.as_str() {
                "double" => "$toDouble",
                "string" => "$toString",
                "objectId" => "$toObjectId",
                "bool" => "$toBool",
                "date" => "$toDate",
                "int" => "$toInt",
                "long" => "$toLong",
                "decimal" => "$toDecimal",
                other => return fail(op, format!("unsupported target type '{other}'")),
            };
            if nullish(&vs[0]) {
                return Ok(Some(vs[3].clone().unwrap_or(Bson::Null)));
            }
            let converted = eval_op(
                to,
                &[Expr::Literal(vs[0].clone().unwrap_or(Bson::Null))],
                vars,
            );
            match (converted, &vs[2]) {
                (Ok(v), _) => Ok(v),
                (Err(_), Some(on_error)) => Ok(Some(on_error.clone())),
                (Err(e), None) => fail(op, e.reason),
            }
        }
        "$toObjectId" => {
            arity(1)?;
            match values()?.remove(0) {
                None | Some(Bson::Null | Bson::Undefined) => some(Bson::Null),
                Some(Bson::ObjectId(o)) => some(Bson::ObjectId(o)),
                Some(Bson::String(s)) => match bson::oid::ObjectId::parse_str(&s) {
                    Ok(o) => some(Bson::ObjectId(o)),
                    Err(_) => fail(
                        op,
                        format!("failed to parse objectId '{s}' in $convert with no onError value"),
                    ),
                },
                other => fail(
                    op,
                    format!(
                        "unsupported conversion from {} to objectId",
                        type_name(&other)
                    ),
                ),
            }
        }
        "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDecimal" | "$toBool" => {
            arity(1)?;
            let v = values()?.remove(0);
            if nullish(&v) {
                return some(Bson::Null);
            }
            convert(op, v.unwrap_or(Bson::Null)).map(Some)
        }
        "$regexMatch" => {
            let vs = values()?;
            let input = match &vs[0] {
                None | Some(Bson::Null) => return some(Bson::Boolean(false)),
                Some(Bson::String(s)) => s.clone(),
                other => {
                    return fail(
                        op,
                        format!("input must be a string, not {}", type_name(other)),
                    );
                }
            };
            let (pattern, mut options) = match &vs[1] {
                Some(Bson::String(p)) => (p.clone(), String::new()),
                Some(Bson::RegularExpression(r)) => (r.pattern.to_string(), r.options.to_string()),
                None | Some(Bson::Null) => return some(Bson::Boolean(false)),
                other => {
                    return fail(
                        op,
                        format!(
                            "regex must be a string or a regular expression, not {}",
                            type_name(other)
                        ),
                    );
                }
            };
            if let Some(Bson::String(o)) = &vs[2] {
                options.push_str(o);
            }
            let flags: String = options
                .chars()
                .filter(|c| matches!(c, 'i' | 'm' | 's' | 'x'))
                .collect();
            let full = if flags.is_empty() {
                pattern
            } else {
                format!("(?{flags}){pattern}")
            };
            match regex_lite::Regex::new(&full) {
                Ok(re) => some(Bson::Boolean(re.is_match(&input))),
                Err(e) => fail(op, e.to_string()),
            }
        }
        "$objectToArray" => {
            arity(1)?;
            match values()?.remove(0) {
                None | Some(Bson::Null) => some(Bson::Null),
                Some(Bson::Document(d)) => some(Bson::Array(
                    d.into_iter()
                        .map(|(k, v)| Bson::Document(bson::doc! { "k": k, "v": v }))
                        .collect(),
                )),
                other => fail(op, format!("requires an object, not {}", type_name(&other))),
            }
        }
        "$arrayToObject" => {
            arity(1)?;
            let items = match values()?.remove(0) {
                None | Some(Bson::Null) => return some(Bson::Null),
                Some(Bson::Array(items)) => items,
                other => return fail(op, format!("requires an array, not {}", type_name(&other))),
            };
            let mut out = Document::new();
            for item in items {
                match item {
                    Bson::Document(d) => match (d.get("k"), d.get("v")) {
                        (Some(Bson::String(k)), Some(v)) if d.len() == 2 => {
                            out.insert(k.clone(), v.clone());
                        }
                        _ => return fail(op, "documents must be {k: string, v: value}"),
                    },
                    Bson::Array(pair) if pair.len() == 2 => match &pair[0] {
                        Bson::String(k) => {
                            out.insert(k.clone(), pair[1].clone());
                        }
                        _ => return fail(op, "pairs must start with a string key"),
                    },
                    _ => {
                        return fail(
                            op,
                            "elements must be {k, v} documents or [key, value] pairs",
                        );
                    }
                }
            }
            some(Bson::Document(out))
        }
        "$toDate" => {
            arity(1)?;
            match values()?.remove(0) {
                None | Some(Bson::Null | Bson::Undefined) => some(Bson::Null),
                Some(Bson::DateTime(d)) => some(Bson::DateTime(d)),
                Some(Bson::ObjectId(o)) => some(Bson::DateTime(bson::DateTime::from_millis(
                    i64::from(u32::from_be_bytes([
                        o.bytes()[0],
                        o.bytes()[1],
                        o.bytes()[2],
                        o.bytes()[3],
                    ])) * 1000,
                ))),
                Some(Bson::String(s)) => match crate::mql::dates::parse_date(&s, None, 0) {
                    Some(ms) => some(Bson::DateTime(bson::DateTime::from_millis(ms))),
                    None => fail(op, format!("cannot parse date '{s}'")),
                },
                Some(v) => match Num::of(&v) {
                    Some(n @ (Num::Long(_) | Num::Double(_) | Num::Decimal(_))) => some(
                        Bson::DateTime(bson::DateTime::from_millis(n.to_f64() as i64)),
                    ),
                    _ => fail(
                        op,
                        format!(
                            "unsupported conversion from {} to date",
                            type_name(&Some(v))
                        ),
                    ),
                },
            }
        }
        "$year" | "$month" | "$dayOfMonth" | "$dayOfWeek" | "$dayOfYear" | "$hour" | "$minute"
        | "$second" | "$millisecond" | "$dateToString" | "$dateTrunc" | "$dateFromString" => {
            crate::mql::dates::eval_date_op(op, values()?)
        }
        _ => fail(op, "not supported"),
    }
}

fn modulo(x: Num, y: Num) -> Result<Option<Bson>, EvalError> {
    use Num::*;
    if number::cmp_num(y, Int(0)) == Ordering::Equal {
        return fail("$mod", "can't mod by zero");
    }
    Ok(Some(match (x, y) {
        (Int(a), Int(b)) => Bson::Int32(a.wrapping_rem(b)),
        (Int(_) | Long(_), Int(_) | Long(_)) => {
            let (a, b) = (
                x.to_dec().and_then(Dec::to_i64).unwrap_or(0),
                y.to_dec().and_then(Dec::to_i64).unwrap_or(1),
            );
            Bson::Int64(a.wrapping_rem(b))
        }
        (Decimal(_), _) | (_, Decimal(_)) => {
            let q = x.to_f64() % y.to_f64();
            Num::Decimal(Dec::from_f64(q).unwrap_or(Dec::NaN)).to_bson()
        }
        _ => Bson::Double(x.to_f64() % y.to_f64()),
    }))
}

/// Rounds (`$round`, half to even) or truncates a decimal to `places` digits after the point.
fn round_dec(d: Dec, places: i32, op: &str) -> Dec {
    let Dec::Finite { neg, coef, exp } = d else {
        return d;
    };
    if exp >= -places {
        return d;
    }
    let drop = (-places - exp) as u32;
    if drop > 38 {
        return Dec::Finite {
            neg,
            coef: 0,
            exp: -places,
        };
    }
    let p = 10u128.pow(drop);
    let (q, r) = (coef / p, coef % p);
    let q = match op {
        "$floor" if neg && r != 0 => q + 1,
        "$ceil" if !neg && r != 0 => q + 1,
        "$round" => {
            let half = p / 2;
            if r > half || (r == half && q % 2 == 1) {
                q + 1
            } else {
                q
            }
        }
        _ => q,
    };
    Dec::Finite {
        neg,
        coef: q,
        exp: -places,
    }
}

/// `$sum` / `$avg` / `$min` / `$max` over values: sums and averages ignore non-numbers; min and
/// max ignore null and missing.
pub fn array_accumulate(op: &str, items: &[Bson]) -> Bson {
    match op {
        "$sum" | "$avg" => {
            let numbers: Vec<Num> = items.iter().filter_map(Num::of).collect();
            if op == "$avg" && numbers.is_empty() {
                return Bson::Null;
            }
            let sum = numbers.iter().fold(Num::Int(0), |a, n| number::add(&a, n));
            if op == "$sum" {
                return sum.to_bson();
            }
            let count = Num::Long(numbers.len() as i64);
            match sum {
                Num::Decimal(_) => number::divide(&sum, &count).map_or(Bson::Null, Num::to_bson),
                _ => Bson::Double(sum.to_f64() / numbers.len() as f64),
            }
        }
        _ => {
            let present = items
                .iter()
                .filter(|v| !matches!(v, Bson::Null | Bson::Undefined));
            let best = if op == "$min" {
                present.min_by(|a, b| compare(a, b))
            } else {
                present.max_by(|a, b| compare(a, b))
            };
            best.cloned().unwrap_or(Bson::Null)
        }
    }
}

fn to_string(v: &Bson) -> String {
    match v {
        Bson::String(s) => s.clone(),
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(x) => {
            if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{x:.0}")
            } else {
                x.to_string()
            }
        }
        Bson::Decimal128(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::ObjectId(o) => o.to_hex(),
        Bson::DateTime(d) => d.try_to_rfc3339_string().unwrap_or_default(),
        other => other.to_string(),
    }
}

fn convert(op: &str, v: Bson) -> Result<Bson, EvalError> {
    let target = &op[3..];
    let parse_num = |s: &str| -> Option<Num> {
        if let Ok(i) = s.parse::<i64>() {
            return Some(Num::Long(i));
        }
        if target == "Decimal" {
            return s
                .parse::<bson::Decimal128>()
                .ok()
                .map(|d| Num::Decimal(Dec::from_decimal128(&d)));
        }
        s.parse::<f64>().ok().map(Num::Double)
    };
    let number = match &v {
        Bson::String(s) if target != "String" && target != "Bool" => match parse_num(s.trim()) {
            Some(n) => n,
            None => return fail(op, format!("failed to parse number '{s}'")),
        },
        Bson::Boolean(b) if target != "String" && target != "Bool" => Num::Int(i32::from(*b)),
        Bson::DateTime(d) if target != "String" && target != "Bool" => {
            Num::Long(d.timestamp_millis())
        }
        other => match Num::of(other) {
            Some(n) => n,
            None if target == "String" => return Ok(Bson::String(to_string(other))),
            None if target == "Bool" => return Ok(Bson::Boolean(truthy(&Some(other.clone())))),
            None => {
                return fail(
                    op,
                    format!(
                        "unsupported conversion from {} to {}",
                        type_name(&Some(other.clone())),
                        target.to_lowercase()
                    ),
                );
            }
        },
    };
    let integral = |n: Num| -> Result<i64, EvalError> {
        let x = match n {
            Num::Double(x) if x.is_finite() => x.trunc(),
            Num::Decimal(d) => {
                return round_dec(d, 0, "$trunc").to_i64().ok_or_else(|| EvalError {
                    operator: op.into(),
                    reason: "conversion would overflow".into(),
                });
            }
            Num::Double(_) => return fail(op, "can't convert NaN or infinity to an integer"),
            other => return Ok(other.to_dec().and_then(Dec::to_i64).unwrap_or(0)),
        };
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x) {
            Ok(x as i64)
        } else {
            fail(op, "conversion would overflow")
        }
    };
    Ok(match target {
        "String" => Bson::String(to_string(&number.to_bson())),
        "Bool" => Bson::Boolean(truthy(&Some(number.to_bson()))),
        "Int" => {
            let i = integral(number)?;
            Bson::Int32(i32::try_from(i).map_err(|_| EvalError {
                operator: op.into(),
                reason: "conversion would overflow an int".into(),
            })?)
        }
        "Long" => Bson::Int64(integral(number)?),
        "Double" => Bson::Double(number.to_f64()),
        _ => Num::Decimal(number.to_dec().unwrap_or_else(|| {
            // A double with more than 34 digits: its 34-digit rounding.
            format!("{:.33e}", number.to_f64())
                .parse::<bson::Decimal128>()
                .map_or(Dec::NaN, |d| Dec::from_decimal128(&d))
        }))
        .to_bson(),
    })
}

#[cfg(test)]
mod tests {
    use bson::{Bson, bson, doc};

    use super::*;

    fn eval(e: Bson, d: bson::Document) -> Option<Bson> {
        Expr::parse(&e).unwrap().eval(&d).unwrap()
    }

    /// Cases where an evaluator deviates from the manual (see the pipeline corpus test).
    #[test]
    fn manual_decided_cases() {
        // $round rounds once, half to even.
        assert_eq!(
            eval(bson!({"$round": ["$a", 0]}), doc! {"a": 31.47}),
            Some(bson!(31.0))
        );
        assert_eq!(
            eval(bson!({"$round": ["$a", 0]}), doc! {"a": 2.5}),
            Some(bson!(2.0))
        );
        assert_eq!(
            eval(bson!({"$round": ["$a", 1]}), doc! {"a": 0.25}),
            Some(bson!(0.2))
        );
        assert_eq!(
            eval(bson!({"$trunc": ["$a", 0]}), doc! {"a": -2.7}),
            Some(bson!(-2.0))
        );
        // $type tells int, long, double and decimal apart.
        let d: bson::Decimal128 = "2.0".parse().unwrap();
        assert_eq!(
            eval(bson!({"$type": "$a"}), doc! {"a": d}),
            Some(bson!("decimal"))
        );
        assert_eq!(
            eval(bson!({"$type": "$a"}), doc! {"a": 2_i64}),
            Some(bson!("long"))
        );
        assert_eq!(
            eval(bson!({"$type": "$a"}), doc! {}),
            Some(bson!("missing"))
        );
    }

    #[test]
    fn runtime_errors_are_typed() {
        let e = Expr::parse(&bson!({"$divide": ["$a", 0]})).unwrap();
        assert_eq!(e.eval(&doc! {"a": 1}).unwrap_err().operator, "$divide");
        let e = Expr::parse(&bson!({"$toInt": "$a"})).unwrap();
        assert!(e.eval(&doc! {"a": "x1"}).unwrap_err().reason.contains("x1"));
        assert_eq!(eval(bson!({"$add": ["$a", 1]}), doc! {}), Some(Bson::Null));
    }
}

#[cfg(test)]
mod manual_examples {
    use bson::{bson, doc};

    use super::Expr;

    /// The manual's own example for `$arrayToObject` (mingo deviates; see the corpus test).
    #[test]
    fn array_to_object_takes_every_pair() {
        let e =
            Expr::parse(&bson!({"$arrayToObject": [[["item", "abc123"], ["qty", 25]]]})).unwrap();
        assert_eq!(
            e.eval(&doc! {}).unwrap(),
            Some(bson!({"item": "abc123", "qty": 25}))
        );
    }
}
