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
    "$bucket",
    "$lookup",
    "$facet",
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
    /// `$lookup`: an incremental join with another namespace's documents.
    Lookup(Box<Lookup>),
    /// `$facet`: named sub-pipelines over the same input, one output document.
    Facet(Vec<(String, Vec<Located>)>),
}

/// How a `$lookup` matches a local document with foreign documents.
#[derive(Clone, Debug)]
pub enum LookupKey {
    /// `localField` / `foreignField`: query equality, so an array on either side matches by any
    /// element, and a missing or null local value matches foreign documents whose field is null
    /// or missing.
    Fields {
        /// `localField`.
        local: String,
        /// `foreignField`.
        foreign: String,
    },
    /// `let` + `pipeline: [{$match: {$expr: {$eq: ["$$var", "$field"]}}}, ...]`: aggregation
    /// equality of the variable's value and the foreign field's (whole values; missing equals
    /// only missing).
    Expr {
        /// The variable's expression, evaluated on the local document.
        local: Expr,
        /// The foreign field's path.
        foreign: String,
    },
}

/// A parsed `$lookup`.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The foreign collection (same database as the view's namespace).
    pub from: String,
    /// The output array field (a dotted path sets a nested field).
    pub as_field: String,
    /// How documents are matched.
    pub key: LookupKey,
    /// Per-document stages applied to each matched foreign document (the rest of the inner
    /// pipeline after its equality `$match`).
    pub inner: Vec<Located>,
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

/// The foreign collections a pipeline's `$lookup` stages read (including inside `$facet`).
pub fn lookup_collections(stages: &[Located]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for located in stages {
        match &located.stage {
            Stage::Lookup(lookup) => out.push(lookup.from.clone()),
            Stage::Facet(facets) => {
                for (_, sub) in facets {
                    out.extend(lookup_collections(sub));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
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
                let accumulators =
                    parse_accumulators(d.iter().filter(|(k, _)| k.as_str() != "_id"), &bad, &op)?;
                vec![Stage::Group {
                    id: Expr::parse(id).map_err(op)?,
                    accumulators,
                }]
            }
            "$bucket" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a document"))?;
                parse_bucket(d, &bad, &op)?
            }
            "$lookup" => {
                let d = spec
                    .as_document()
                    .ok_or_else(|| bad("expects a document"))?;
                vec![Stage::Lookup(Box::new(parse_lookup(d, &bad)?))]
            }
            "$facet" => {
                let d = spec
                    .as_document()
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| bad("expects {name: [stages...]}"))?;
                let mut facets = Vec::new();
                for (facet, sub) in d {
                    if facet.is_empty() || facet.starts_with('$') || facet.contains('.') {
                        return Err(bad(&format!("{facet:?} is not a valid output field name")));
                    }
                    let sub = sub_pipeline(sub).ok_or_else(|| {
                        bad(&format!("{facet} must be an array of stage documents"))
                    })?;
                    let parsed =
                        parse_pipeline(&sub).map_err(|e| nested(position, name, facet, e))?;
                    if let Some(inner) = parsed.iter().find(|l| matches!(l.stage, Stage::Facet(_)))
                    {
                        return Err(bad(&format!(
                            "{facet}: stage {} ($facet) cannot be used inside $facet",
                            inner.position
                        )));
                    }
                    facets.push((facet.clone(), parsed));
                }
                vec![Stage::Facet(facets)]
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

/// An inner pipeline as stage documents.
fn sub_pipeline(value: &Bson) -> Option<Vec<Document>> {
    value
        .as_array()?
        .iter()
        .map(|s| s.as_document().cloned())
        .collect()
}

/// An error of an inner pipeline, reported at the outer stage's position.
fn nested(position: usize, name: &str, part: &str, error: PipelineError) -> PipelineError {
    PipelineError::BadStage {
        position,
        name: name.into(),
        reason: format!("{part}: {error}"),
    }
}

/// Whether `value` mentions `$$var` (or `$$var.path`) for one of `vars`.
fn mentions_variable(value: &Bson, vars: &[&str]) -> Option<String> {
    match value {
        Bson::String(s) => s.strip_prefix("$$").and_then(|rest| {
            let name = rest.split('.').next().unwrap_or(rest);
            vars.contains(&name).then(|| name.to_string())
        }),
        Bson::Document(d) => d.values().find_map(|v| mentions_variable(v, vars)),
        Bson::Array(items) => items.iter().find_map(|v| mentions_variable(v, vars)),
        _ => None,
    }
}

/// `$lookup`: the `localField` / `foreignField` form (optionally with a per-document
/// `pipeline`), or the `let` / `pipeline` form whose first stage is
/// `{$match: {$expr: {$eq: ["$$var", "$field"]}}}`.
fn parse_lookup(
    d: &Document,
    bad: &dyn Fn(&str) -> PipelineError,
) -> Result<Lookup, PipelineError> {
    if let Some(k) = d.keys().find(|k| {
        ![
            "from",
            "localField",
            "foreignField",
            "let",
            "pipeline",
            "as",
        ]
        .contains(&k.as_str())
    }) {
        return Err(bad(&format!("unknown option {k}")));
    }
    let from = match d.get("from") {
        Some(Bson::String(s)) if !s.is_empty() => s.clone(),
        Some(Bson::Document(_)) => {
            return Err(bad(
                "from: {db, coll} (another database) is not supported; name a collection of the view's database",
            ));
        }
        _ => return Err(bad("needs from: a collection name")),
    };
    let as_field = d
        .get_str("as")
        .ok()
        .filter(|a| !a.is_empty() && !a.starts_with('$'))
        .ok_or_else(|| bad("needs as: an output field name"))?
        .to_string();
    let vars: Vec<(String, Bson)> = match d.get("let") {
        None => Vec::new(),
        Some(Bson::Document(l)) => l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => return Err(bad("let must be a document")),
    };
    let var_names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    let pipeline = match d.get("pipeline") {
        None => Vec::new(),
        Some(p) => {
            sub_pipeline(p).ok_or_else(|| bad("pipeline must be an array of stage documents"))?
        }
    };
    let inner_stages = |docs: &[Document], offset: usize| -> Result<Vec<Located>, PipelineError> {
        if let Some(var) = docs
            .iter()
            .find_map(|s| mentions_variable(&Bson::Document(s.clone()), &var_names))
        {
            return Err(bad(&format!(
                "pipeline: $${var} may only be used in the first stage's $expr equality (joined documents are transformed independently of the local document)"
            )));
        }
        let parsed = parse_pipeline(docs).map_err(|e| bad(&format!("pipeline: {e}")))?;
        if let Some(s) = parsed.iter().find(|l| !l.stage.is_per_document()) {
            return Err(bad(&format!(
                "pipeline: stage {} ({}) is not supported after the join; only per-document stages ($match $project $addFields $set $unset $replaceRoot $replaceWith $unwind) are",
                s.position + offset,
                s.name
            )));
        }
        Ok(parsed
            .into_iter()
            .map(|l| Located {
                position: l.position + offset,
                ..l
            })
            .collect())
    };
    let key = match (d.get_str("localField"), d.get_str("foreignField")) {
        (Ok(local), Ok(foreign)) => {
            let inner = inner_stages(&pipeline, 0)?;
            return Ok(Lookup {
                from,
                as_field,
                key: LookupKey::Fields {
                    local: local.into(),
                    foreign: foreign.into(),
                },
                inner,
            });
        }
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
            return Err(bad("localField and foreignField go together"));
        }
        (Err(_), Err(_)) => {
            let refusal = "the pipeline form needs let and a first stage {$match: {$expr: {$eq: [\"$$var\", \"$foreignField\"]}}} (an uncorrelated or non-equality $lookup is not supported)";
            let first = pipeline.first().ok_or_else(|| bad(refusal))?;
            let eq = first
                .get_document("$match")
                .ok()
                .filter(|m| m.len() == 1)
                .and_then(|m| m.get_document("$expr").ok())
                .filter(|e| e.len() == 1)
                .and_then(|e| e.get_array("$eq").ok())
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad(refusal))?;
            let (var, field) = match (&eq[0], &eq[1]) {
                (Bson::String(a), Bson::String(b))
                    if a.starts_with("$$") && b.starts_with('$') && !b.starts_with("$$") =>
                {
                    (a, b)
                }
                (Bson::String(b), Bson::String(a))
                    if a.starts_with("$$") && b.starts_with('$') && !b.starts_with("$$") =>
                {
                    (a, b)
                }
                _ => return Err(bad(refusal)),
            };
            let var = &var[2..];
            let (var_name, var_path) = match var.split_once('.') {
                Some((n, p)) => (n, Some(p)),
                None => (var, None),
            };
            let value = vars
                .iter()
                .find(|(k, _)| k == var_name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| bad(&format!("pipeline: $${var_name} is not defined in let")))?;
            let mut local =
                Expr::parse(&value).map_err(|e| bad(&format!("let {var_name}: {e}")))?;
            if let Some(path) = var_path {
                // "$$v.a.b": the variable's value, then the path.
                local = Expr::parse(&bson::bson!({ "$let": { "vars": { "cfLookupValue": value.clone() }, "in": format!("$$cfLookupValue.{path}") } }))
                    .map_err(|e| bad(&format!("let {var_name}: {e}")))?;
            }
            LookupKey::Expr {
                local,
                foreign: field[1..].to_string(),
            }
        }
    };
    let inner = inner_stages(&pipeline[1..], 1)?;
    Ok(Lookup {
        from,
        as_field,
        key,
        inner,
    })
}

/// The accumulators of a `$group` (or a `$bucket`'s `output`).
fn parse_accumulators<'a>(
    fields: impl Iterator<Item = (&'a String, &'a Bson)>,
    bad: &dyn Fn(&str) -> PipelineError,
    op: &dyn Fn(ParseError) -> PipelineError,
) -> Result<Vec<Accumulator>, PipelineError> {
    let mut accumulators = Vec::new();
    for (field, acc) in fields {
        let acc = acc
            .as_document()
            .filter(|a| a.len() == 1)
            .ok_or_else(|| bad(&format!("{field} must be {{accumulator: expression}}")))?;
        let (acc_name, arg) = acc.iter().next().ok_or_else(|| bad("empty accumulator"))?;
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
    Ok(accumulators)
}

/// The variable a `$bucket`'s key expression binds its `groupBy` value to.
const BUCKET_VALUE: &str = "cfBucketValue";

/// `$bucket` is MongoDB's own rewrite: a `$group` whose `_id` is the lower boundary of the
/// value's bucket (a `$switch` over the boundaries, `default` otherwise), then a `$sort` on
/// `_id`. A value in no bucket without `default` fails the `$switch` at run time.
fn parse_bucket(
    d: &Document,
    bad: &dyn Fn(&str) -> PipelineError,
    op: &dyn Fn(ParseError) -> PipelineError,
) -> Result<Vec<Stage>, PipelineError> {
    if let Some(k) = d
        .keys()
        .find(|k| !["groupBy", "boundaries", "default", "output"].contains(&k.as_str()))
    {
        return Err(bad(&format!("unknown option {k}")));
    }
    let group_by = d.get("groupBy").ok_or_else(|| bad("needs groupBy"))?;
    if !matches!(group_by, Bson::String(s) if s.starts_with('$'))
        && !matches!(group_by, Bson::Document(g) if g.keys().next().is_some_and(|k| k.starts_with('$')))
    {
        return Err(bad(
            "groupBy must be a $-prefixed path or an expression object",
        ));
    }
    let boundaries = d
        .get_array("boundaries")
        .map_err(|_| bad("needs boundaries: an array"))?;
    if boundaries.len() < 2 {
        return Err(bad("boundaries needs at least two values"));
    }
    let rank = |v: &Bson| crate::mql::compare::type_rank(v);
    if boundaries.iter().any(|b| rank(b) != rank(&boundaries[0])) {
        return Err(bad("all boundaries must be of the same type"));
    }
    if boundaries
        .windows(2)
        .any(|w| crate::mql::compare::compare(&w[0], &w[1]).is_ge())
    {
        return Err(bad(
            "boundaries must be sorted in ascending order, without duplicates",
        ));
    }
    let default = d.get("default");
    if let Some(default) = default
        && rank(default) == rank(&boundaries[0])
        && crate::mql::compare::compare(default, &boundaries[0]).is_ge()
        && crate::mql::compare::compare(default, &boundaries[boundaries.len() - 1]).is_lt()
    {
        return Err(bad(
            "default must be less than the lowest boundary or at least the highest",
        ));
    }
    let value = Bson::String(format!("$${BUCKET_VALUE}"));
    let branches: Vec<Bson> = boundaries
        .windows(2)
        .map(|w| {
            let literal = |b: &Bson| bson::bson!({ "$literal": b.clone() });
            bson::bson!({
                "case": { "$and": [
                    { "$gte": [value.clone(), literal(&w[0])] },
                    { "$lt": [value.clone(), literal(&w[1])] },
                ] },
                "then": literal(&w[0]),
            })
        })
        .collect();
    let mut switch = bson::doc! { "branches": branches };
    if let Some(default) = default {
        switch.insert("default", bson::bson!({ "$literal": default.clone() }));
    }
    let key = bson::bson!({ "$let": {
        "vars": { BUCKET_VALUE: group_by.clone() },
        "in": { "$switch": switch },
    } });
    let accumulators = match d.get("output") {
        None => vec![Accumulator::plain(
            "count",
            "$sum",
            Expr::Literal(Bson::Int32(1)),
        )],
        Some(Bson::Document(output)) => parse_accumulators(output.iter(), bad, op)?,
        Some(_) => return Err(bad("output must be a document of accumulators")),
    };
    Ok(vec![
        Stage::Group {
            id: Expr::parse(&key).map_err(op)?,
            accumulators,
        },
        Stage::Sort(vec![SortField {
            path: "_id".into(),
            descending: false,
        }]),
    ])
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
