//! Parsing and checking a pipeline before anything runs.
//!
//! Every stage is parsed into a [`Stage`]; an unknown stage or operator is a
//! [`PipelineError`] naming the stage's position and suggesting the nearest supported name;
//! stages that make no sense on a change-fed view are refused with the reason.
//!
//! ```
//! use bson::doc;
//! use changeflow_operators::pipeline::parse::{parse_pipeline, PipelineError};
//! let ok = parse_pipeline(&[doc! { "$match": {"status": "paid"} }, doc! { "$group": {"_id": "$region", "n": {"$sum": 1}} }]);
//! assert_eq!(ok.unwrap().len(), 2);
//! let err = parse_pipeline(&[doc! { "$match": {} }, doc! { "$gruop": {"_id": null} }]).unwrap_err();
//! assert_eq!(err.to_string(), "stage 1: unknown stage $gruop (did you mean $group?)");
//! let err = parse_pipeline(&[doc! { "$out": "x" }]).unwrap_err();
//! assert!(err.to_string().contains("stage 0: $out is not supported on a view"));
//! ```

use bson::{Bson, Document};

use crate::mql::compare::Key;
use crate::mql::expr::{Expr, ParseError, nearest};
use crate::mql::query::Query;

/// Why a pipeline was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// A stage name that is not a stage.
    #[error("stage {position}: unknown stage {name}{}", hint(.nearest))]
    UnknownStage {
        /// Index of the stage in the pipeline.
        position: usize,
        /// The name as written.
        name: String,
        /// The nearest supported stage.
        nearest: Option<String>,
    },
    /// A real MongoDB stage that a change-fed view cannot or does not yet run.
    #[error("stage {position}: {name} is not supported on a view: {reason}")]
    Refused {
        /// Index of the stage.
        position: usize,
        /// The stage.
        name: String,
        /// Why.
        reason: String,
    },
    /// A stage whose arguments are wrong.
    #[error("stage {position} ({name}): {reason}")]
    BadStage {
        /// Index of the stage.
        position: usize,
        /// The stage.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An expression or query operator inside a stage that is wrong or unknown.
    #[error("stage {position} ({name}): {source}")]
    Operator {
        /// Index of the stage.
        position: usize,
        /// The stage.
        name: String,
        /// The operator error.
        source: ParseError,
    },
    /// The pipeline is not an array of one-field documents.
    #[error("the pipeline must be an array of stage documents with one field each: {0}")]
    Shape(String),
}

fn hint(nearest: &Option<String>) -> String {
    nearest
        .as_ref()
        .map_or(String::new(), |n| format!(" (did you mean {n}?)"))
}

/// The stages changeflow runs.
pub const STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$unwind",
    "$group",
    "$count",
    "$sortByCount",
    "$sort",
    "$limit",
    "$skip",
];

/// Stages that exist in MongoDB but are refused, with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("$out", "it writes a collection; use a sink"),
    ("$merge", "it writes a collection; use a sink"),
    (
        "$changeStream",
        "the view is already fed by a change stream",
    ),
    (
        "$sample",
        "a random sample is not a deterministic function of the collection",
    ),
    ("$geoNear", "it needs a geospatial index of the collection"),
    ("$search", "it needs an Atlas Search index"),
    ("$searchMeta", "it needs an Atlas Search index"),
    ("$vectorSearch", "it needs an Atlas Vector Search index"),
    ("$indexStats", "it reads server metadata, not documents"),
    ("$collStats", "it reads server metadata, not documents"),
    ("$currentOp", "it reads server metadata, not documents"),
    ("$listSessions", "it reads server metadata, not documents"),
    ("$planCacheStats", "it reads server metadata, not documents"),
    ("$lookup", "not yet implemented in changeflow"),
    ("$facet", "not yet implemented in changeflow"),
    ("$bucket", "not yet implemented in changeflow"),
    ("$bucketAuto", "not yet implemented in changeflow"),
    ("$graphLookup", "not yet implemented in changeflow"),
    ("$unionWith", "not yet implemented in changeflow"),
    ("$setWindowFields", "not yet implemented in changeflow"),
    ("$densify", "not yet implemented in changeflow"),
    ("$fill", "not yet implemented in changeflow"),
    ("$redact", "not yet implemented in changeflow"),
];

/// One field of a projection tree.
#[derive(Clone, Debug)]
pub enum Projection {
    /// Keep the field.
    Include,
    /// Drop the field.
    Exclude,
    /// Set the field to an expression's value.
    Computed(Expr),
    /// Apply a nested projection to the field (a document, or each document of an array).
    Nested(Vec<(String, Projection)>),
}

/// One accumulator of a `$group`.
#[derive(Clone, Debug)]
pub struct Accumulator {
    /// Output field.
    pub name: String,
    /// `$sum`, `$avg`, `$min`, `$max`, `$count`, `$push`, `$addToSet`, `$first`, `$last`,
    /// `$top`, `$bottom`, `$topN`, `$bottomN`.
    pub op: String,
    /// Its argument (the `output` of `$top` / `$bottom` / `$topN` / `$bottomN`).
    pub arg: Expr,
    /// The `sortBy` of `$top` / `$bottom` / `$topN` / `$bottomN` (empty for the others).
    pub sort_by: Vec<SortField>,
    /// The `n` of `$topN` / `$bottomN`.
    pub n: Option<u64>,
}

impl Accumulator {
    /// A plain accumulator (no `sortBy`, no `n`).
    pub fn plain(name: &str, op: &str, arg: Expr) -> Self {
        Accumulator {
            name: name.into(),
            op: op.into(),
            arg,
            sort_by: Vec::new(),
            n: None,
        }
    }

    /// Whether the accumulator ranks its inputs by `sortBy` (`$top`, `$bottom`, `$topN`,
    /// `$bottomN`).
    pub fn is_ranked(&self) -> bool {
        matches!(self.op.as_str(), "$top" | "$bottom" | "$topN" | "$bottomN")
    }
}

/// The accumulators changeflow supports.
pub const ACCUMULATORS: &[&str] = &[
    "$sum",
    "$avg",
    "$min",
    "$max",
    "$count",
    "$push",
    "$addToSet",
    "$first",
    "$last",
    "$top",
    "$bottom",
    "$topN",
    "$bottomN",
];

/// One direction of a sort.
#[derive(Clone, Debug)]
pub struct SortField {
    /// The path sorted on.
    pub path: String,
    /// Descending.
    pub descending: bool,
}

/// A parsed stage.
#[derive(Clone, Debug)]
pub enum Stage {
    /// `$match`.
    Match(Query),
    /// `$project` (and `$unset` as an exclusion): the tree, and whether it includes.
    Project {
        /// The fields.
        fields: Vec<(String, Projection)>,
        /// Inclusion (true) or exclusion (false) mode.
        inclusion: bool,
    },
    /// `$addFields` / `$set`: paths and expressions.
    AddFields(Vec<(String, Expr)>),
    /// `$replaceRoot` / `$replaceWith`.
    ReplaceRoot(Expr),
    /// `$unwind`.
    Unwind {
        /// The array's path (without `$`).
        path: String,
        /// Where to write the index.
        index_field: Option<String>,
        /// Keep documents whose array is missing, null or empty.
        preserve: bool,
    },
    /// `$group`.
    Group {
        /// The `_id` expression.
        id: Expr,
        /// The accumulators.
        accumulators: Vec<Accumulator>,
    },
    /// `$count`: the output field.
    Count(String),
    /// `$sort`.
    Sort(Vec<SortField>),
    /// `$limit`.
    Limit(u64),
    /// `$skip`.
    Skip(u64),
}

impl Stage {
    /// Whether the stage acts on each document alone (a map), not on the whole collection.
    pub fn is_per_document(&self) -> bool {
        matches!(
            self,
            Stage::Match(_)
                | Stage::Project { .. }
                | Stage::AddFields(_)
                | Stage::ReplaceRoot(_)
                | Stage::Unwind { .. }
        )
    }
}

/// Parses a pipeline given as Extended JSON text (an array of stages).
///
/// ```
/// use changeflow_operators::pipeline::parse::parse_json_pipeline;
/// let stages = parse_json_pipeline(r#"[{"$match": {"n": {"$gt": 1}}}, {"$count": "n"}]"#).unwrap();
/// assert_eq!(stages.len(), 2);
/// ```
pub fn parse_json_pipeline(text: &str) -> Result<Vec<Located>, PipelineError> {
    // Our Extended JSON transcoder reads documents: wrap the array in one.
    let wrapped = format!("{{\"p\": {text}}}");
    let mut bytes = Vec::new();
    changeflow_core::extjson::transcode(wrapped.as_bytes(), &mut bytes)
        .map_err(|e| PipelineError::Shape(e.to_string()))?;
    let doc = Document::from_reader(&bytes[..]).map_err(|e| PipelineError::Shape(e.to_string()))?;
    let Some(Bson::Array(items)) = doc.get("p").cloned() else {
        return Err(PipelineError::Shape("not an array".into()));
    };
    let docs = items
        .into_iter()
        .map(|s| match s {
            Bson::Document(d) => Ok(d),
            other => Err(PipelineError::Shape(format!(
                "{other} is not a stage document"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    parse_pipeline(&docs)
}

/// A parsed stage with where it came from, for error messages.
#[derive(Clone, Debug)]
pub struct Located {
    /// Index of the stage in the pipeline as written.
    pub position: usize,
    /// The stage's name as written (`$sortByCount` becomes a group and a sort, both named so).
    pub name: String,
    /// The stage.
    pub stage: Stage,
}

/// Parses and checks every stage (see the module docs).
pub fn parse_pipeline(stages: &[Document]) -> Result<Vec<Located>, PipelineError> {
    let mut out: Vec<Located> = Vec::new();
    for (position, stage) in stages.iter().enumerate() {
        let Some((name, spec)) = stage.iter().next().filter(|_| stage.len() == 1) else {
            return Err(PipelineError::Shape(format!(
                "stage {position} has {} fields",
                stage.len()
            )));
        };
        let bad = |reason: &str| PipelineError::BadStage {
            position,
            name: name.clone(),
            reason: reason.into(),
        };
        let op = |source: ParseError| PipelineError::Operator {
            position,
            name: name.clone(),
            source,
        };
        if let Some((_, reason)) = REFUSED.iter().find(|(n, _)| n == name) {
            return Err(PipelineError::Refused {
                position,
                name: name.clone(),
                reason: (*reason).into(),
            });
        }
        let parsed: Vec<Stage> = match name.as_str() {
            "$match" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a query document"))?;
                vec![Stage::Match(Query::parse(d).map_err(op)?)]
            }
            "$project" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a document"))?;
                vec![parse_project(d).map_err(|e| match e {
                    Ok(reason) => bad(&reason),
                    Err(source) => op(source),
                })?]
            }
            "$unset" => {
                let paths: Vec<String> = match spec {
                    Bson::String(s) => vec![s.clone()],
                    Bson::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| bad("expects field names"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(bad("expects a field name or an array of them")),
                };
                let mut tree = Vec::new();
                for p in paths {
                    insert_path(&mut tree, &p, Projection::Exclude).map_err(|r| bad(&r))?;
                }
                vec![Stage::Project {
                    fields: tree,
                    inclusion: false,
                }]
            }
            "$addFields" | "$set" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a document"))?;
                let mut fields = Vec::new();
                flatten_add_fields(d, "", &mut fields).map_err(op)?;
                vec![Stage::AddFields(fields)]
            }
            "$replaceRoot" => {
                let root = spec
                    .as_document()
                    .and_then(|d| d.get("newRoot"))
                    .ok_or_else(|| bad("expects {newRoot: expression}"))?;
                vec![Stage::ReplaceRoot(Expr::parse(root).map_err(op)?)]
            }
            "$replaceWith" => vec![Stage::ReplaceRoot(Expr::parse(spec).map_err(op)?)],
            "$unwind" => {
                let (path, index_field, preserve) = match spec {
                    Bson::String(s) => (s.clone(), None, false),
                    Bson::Document(d) => (
                        d.get_str("path")
                            .map_err(|_| bad("expects path"))?
                            .to_string(),
                        d.get_str("includeArrayIndex").ok().map(str::to_string),
                        d.get_bool("preserveNullAndEmptyArrays").unwrap_or(false),
                    ),
                    _ => return Err(bad("expects a path or a document")),
                };
                let path = path
                    .strip_prefix('$')
                    .ok_or_else(|| bad("the path must start with $"))?
                    .to_string();
                vec![Stage::Unwind {
                    path,
                    index_field,
                    preserve,
                }]
            }
            "$group" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a document"))?;
                let id = d.get("_id").ok_or_else(|| bad("a group needs an _id"))?;
                let mut accumulators = Vec::new();
                for (field, acc) in d.iter().filter(|(k, _)| k.as_str() != "_id") {
                    let acc = acc.as_document().filter(|a| a.len() == 1).ok_or_else(|| {
                        bad(&format!("{field} must be {{accumulator: expression}}"))
                    })?;
                    let (acc_name, arg) =
                        acc.iter().next().ok_or_else(|| bad("empty accumulator"))?;
                    if !ACCUMULATORS.contains(&acc_name.as_str()) {
                        return Err(op(ParseError::UnknownOperator {
                            name: acc_name.clone(),
                            nearest: nearest(acc_name, ACCUMULATORS),
                        }));
                    }
                    accumulators.push(
                        if matches!(acc_name.as_str(), "$top" | "$bottom" | "$topN" | "$bottomN") {
                            parse_ranked(field, acc_name, arg).map_err(|e| match e {
                                Ok(reason) => bad(&reason),
                                Err(source) => op(source),
                            })?
                        } else {
                            Accumulator::plain(field, acc_name, Expr::parse(arg).map_err(op)?)
                        },
                    );
                }
                vec![Stage::Group {
                    id: Expr::parse(id).map_err(op)?,
                    accumulators,
                }]
            }
            "$count" => {
                let field = spec
                    .as_str()
                    .filter(|s| !s.is_empty() && !s.starts_with('$') && !s.contains('.'));
                vec![Stage::Count(
                    field
                        .ok_or_else(|| bad("expects a field name"))?
                        .to_string(),
                )]
            }
            "$sortByCount" => vec![
                Stage::Group {
                    id: Expr::parse(spec).map_err(op)?,
                    accumulators: vec![Accumulator::plain(
                        "count",
                        "$sum",
                        Expr::Literal(Bson::Int32(1)),
                    )],
                },
                Stage::Sort(vec![SortField {
                    path: "count".into(),
                    descending: true,
                }]),
            ],
            "$sort" => {
                let d = spec
                    .as_document()
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| bad("expects {field: 1 or -1}"))?;
                vec![Stage::Sort(
                    parse_sort(d).ok_or_else(|| bad("directions are 1 or -1"))?,
                )]
            }
            "$limit" | "$skip" => {
                let n = crate::mql::number::Num::of(spec)
                    .and_then(|n| n.to_dec())
                    .and_then(crate::mql::number::Dec::to_i64)
                    .filter(|n| *n >= 0 && (*n > 0 || name == "$skip"))
                    .ok_or_else(|| bad("expects a positive integer"))?;
                vec![if name == "$limit" {
                    Stage::Limit(n as u64)
                } else {
                    Stage::Skip(n as u64)
                }]
            }
            other => {
                return Err(PipelineError::UnknownStage {
                    position,
                    name: other.into(),
                    nearest: nearest(other, STAGES),
                });
            }
        };
        out.extend(parsed.into_iter().map(|stage| Located {
            position,
            name: name.clone(),
            stage,
        }));
    }
    Ok(out)
}

/// A sort specification `{path: 1 or -1, ...}`; `None` if a direction is neither.
fn parse_sort(d: &Document) -> Option<Vec<SortField>> {
    d.iter()
        .map(|(path, dir)| match Key::new(dir.clone()) {
            k if k == Key::new(Bson::Int32(1)) => Some(SortField {
                path: path.clone(),
                descending: false,
            }),
            k if k == Key::new(Bson::Int32(-1)) => Some(SortField {
                path: path.clone(),
                descending: true,
            }),
            _ => None,
        })
        .collect()
}

/// `{$top | $bottom: {sortBy, output}}`, `{$topN | $bottomN: {n, sortBy, output}}`:
/// `Err(Ok(reason))` for a bad specification, `Err(Err(e))` for a bad expression.
fn parse_ranked(
    field: &str,
    op: &str,
    spec: &Bson,
) -> Result<Accumulator, Result<String, ParseError>> {
    let with_n = op.ends_with('N');
    let d = spec
        .as_document()
        .ok_or_else(|| Ok(format!("{op} expects a document")))?;
    let allowed: &[&str] = if with_n {
        &["n", "sortBy", "output"]
    } else {
        &["sortBy", "output"]
    };
    if let Some(k) = d.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Ok(format!("{op}: unknown option {k}")));
    }
    let sort_by = d
        .get_document("sortBy")
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(parse_sort)
        .ok_or_else(|| Ok(format!("{op} needs sortBy: {{field: 1 or -1}}")))?;
    let output = d
        .get("output")
        .ok_or_else(|| Ok(format!("{op} needs an output")))?;
    let n = if with_n {
        let n = d
            .get("n")
            .and_then(crate::mql::number::Num::of)
            .and_then(|n| n.to_dec())
            .and_then(crate::mql::number::Dec::to_i64)
            .filter(|n| *n > 0)
            .ok_or_else(|| Ok(format!("{op}: n must be a positive integer constant")))?;
        Some(n as u64)
    } else {
        None
    };
    Ok(Accumulator {
        name: field.into(),
        op: op.into(),
        arg: Expr::parse(output).map_err(Err)?,
        sort_by,
        n,
    })
}

/// `Err(Ok(reason))` for a bad projection, `Err(Err(e))` for a bad expression.
fn parse_project(d: &Document) -> Result<Stage, Result<String, ParseError>> {
    let mut tree = Vec::new();
    let mut inclusion: Option<bool> = None;
    let mut exclude_id = false;
    fn walk(
        d: &Document,
        prefix: &str,
        tree: &mut Vec<(String, Projection)>,
        inclusion: &mut Option<bool>,
        exclude_id: &mut bool,
    ) -> Result<(), Result<String, ParseError>> {
        for (k, v) in d {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let node = match v {
                Bson::Boolean(b) => Some(*b),
                v if crate::mql::number::Num::of(v).is_some() => {
                    Some(crate::mql::expr::truthy(&Some(v.clone())))
                }
                _ => None,
            };
            match node {
                Some(false) if path == "_id" => *exclude_id = true,
                Some(include) => {
                    if path != "_id" {
                        if inclusion.is_some_and(|m| m != include) {
                            return Err(Ok(format!(
                                "cannot mix inclusion and exclusion (at {path})"
                            )));
                        }
                        *inclusion = Some(include);
                    }
                    let p = if include {
                        Projection::Include
                    } else {
                        Projection::Exclude
                    };
                    insert_path(tree, &path, p).map_err(Ok)?;
                }
                None => match v {
                    Bson::Document(sub)
                        if !sub.keys().next().is_some_and(|k| k.starts_with('$')) =>
                    {
                        walk(sub, &path, tree, inclusion, exclude_id)?
                    }
                    other => {
                        if *inclusion == Some(false) {
                            return Err(Ok(format!(
                                "cannot compute {path} in an exclusion projection"
                            )));
                        }
                        *inclusion = Some(true);
                        let e = Expr::parse(other).map_err(Err)?;
                        insert_path(tree, &path, Projection::Computed(e)).map_err(Ok)?;
                    }
                },
            }
        }
        Ok(())
    }
    walk(d, "", &mut tree, &mut inclusion, &mut exclude_id)?;
    let inclusion = inclusion.unwrap_or(false);
    if inclusion {
        if exclude_id {
            tree.retain(|(k, _)| k != "_id");
        } else if !tree.iter().any(|(k, _)| k == "_id") {
            tree.insert(0, ("_id".into(), Projection::Include));
        }
    } else if exclude_id {
        tree.retain(|(k, _)| k != "_id");
        tree.push(("_id".into(), Projection::Exclude));
    }
    Ok(Stage::Project {
        fields: tree,
        inclusion,
    })
}

fn insert_path(
    tree: &mut Vec<(String, Projection)>,
    path: &str,
    node: Projection,
) -> Result<(), String> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    match rest {
        None => {
            if tree.iter().any(|(k, _)| k == head) {
                return Err(format!("path collision at {path}"));
            }
            tree.push((head.into(), node));
        }
        Some(rest) => match tree.iter_mut().find(|(k, _)| k == head) {
            Some((_, Projection::Nested(children))) => insert_path(children, rest, node)?,
            Some(_) => return Err(format!("path collision at {path}")),
            None => {
                let mut children = Vec::new();
                insert_path(&mut children, rest, node)?;
                tree.push((head.into(), Projection::Nested(children)));
            }
        },
    }
    Ok(())
}

/// `$addFields: {a: {b: expr}}` sets `a.b`, merging into an embedded document.
fn flatten_add_fields(
    d: &Document,
    prefix: &str,
    out: &mut Vec<(String, Expr)>,
) -> Result<(), ParseError> {
    for (k, v) in d {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Bson::Document(sub)
                if !sub.is_empty() && !sub.keys().next().is_some_and(|k| k.starts_with('$')) =>
            {
                flatten_add_fields(sub, &path, out)?
            }
            other => out.push((path, Expr::parse(other)?)),
        }
    }
    Ok(())
}
