//! The pipeline stages the test server applies after `$changeStream`: `$match` (equality,
//! `$eq`, `$ne`, `$in`, `$nin`, `$exists`, `$and`, `$or`, `$nor` on dotted paths), `$project`
//! (inclusion or exclusion), `$unset`, `$addFields`/`$set` with literal values, and
//! `$changeStreamSplitLargeEvent` (a flag for the cursor). Anything else is refused with
//! `BadValue`, so a test never silently runs a stage the server ignores.

use bson::{Bson, Document};

/// One stage after `$changeStream`.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `$match` with its filter.
    Match(Document),
    /// `$project`: `true` for an inclusion projection.
    Project(Document, bool),
    /// `$unset` of these top-level or dotted fields.
    Unset(Vec<String>),
    /// `$addFields` / `$set` with literal values.
    Set(Document),
    /// `$changeStreamSplitLargeEvent` (must be last).
    Split,
}

/// Parses the stages after `$changeStream`. The error is `(code, codeName, errmsg)`.
pub fn parse(stages: &[Bson]) -> Result<Vec<Stage>, (i32, &'static str, String)> {
    let bad = |msg: String| (2, "BadValue", msg);
    let mut out = Vec::new();
    for (n, stage) in stages.iter().enumerate() {
        let Some(stage) = stage.as_document() else {
            return Err(bad("each pipeline stage must be a document".into()));
        };
        let Some((name, spec)) = stage.iter().next() else {
            return Err(bad("empty pipeline stage".into()));
        };
        let parsed = match (name.as_str(), spec) {
            ("$match", Bson::Document(d)) => Stage::Match(d.clone()),
            ("$project", Bson::Document(d)) => {
                let include = d
                    .iter()
                    .filter(|(k, _)| k.as_str() != "_id")
                    .any(|(_, v)| truthy(v));
                Stage::Project(d.clone(), include)
            }
            ("$unset", Bson::String(s)) => Stage::Unset(vec![s.clone()]),
            ("$unset", Bson::Array(a)) => Stage::Unset(
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            ),
            ("$addFields" | "$set", Bson::Document(d)) => Stage::Set(d.clone()),
            ("$changeStreamSplitLargeEvent", Bson::Document(_)) => {
                if n + 1 != stages.len() {
                    return Err((
                        7182800,
                        "Location7182800",
                        "$changeStreamSplitLargeEvent must be the last stage in the pipeline"
                            .into(),
                    ));
                }
                Stage::Split
            }
            (other, _) => {
                return Err(bad(format!(
                    "the test server does not implement the stage {other}"
                )));
            }
        };
        out.push(parsed);
    }
    Ok(out)
}

fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Int32(n) => *n != 0,
        Bson::Int64(n) => *n != 0,
        Bson::Double(n) => *n != 0.0,
        _ => true,
    }
}

/// Whether `stages` modify or remove the resume token `_id` (the server then fails with 280
/// on the first event, as MongoDB does).
pub fn touches_id(stages: &[Stage]) -> bool {
    stages.iter().any(|s| match s {
        Stage::Project(d, include) => {
            let id_changed = d.get("_id").is_some_and(|v| {
                !truthy(v)
                    || !matches!(
                        v,
                        Bson::Int32(_) | Bson::Int64(_) | Bson::Boolean(_) | Bson::Double(_)
                    )
            });
            id_changed || (!include && d.keys().any(|k| k.starts_with("_id.")))
        }
        Stage::Unset(fields) => fields.iter().any(|f| f == "_id" || f.starts_with("_id.")),
        Stage::Set(d) => d.keys().any(|k| k == "_id" || k.starts_with("_id.")),
        _ => false,
    })
}

/// Applies the stages to one event: `None` if a `$match` drops it.
pub fn apply(stages: &[Stage], mut event: Document) -> Option<Document> {
    for stage in stages {
        match stage {
            Stage::Match(filter) => {
                if !matches(&event, filter) {
                    return None;
                }
            }
            Stage::Project(spec, include) => event = project(&event, spec, *include),
            Stage::Unset(fields) => {
                for f in fields {
                    event.remove(f);
                }
            }
            Stage::Set(values) => {
                for (k, v) in values {
                    event.insert(k.clone(), v.clone());
                }
            }
            Stage::Split => {}
        }
    }
    Some(event)
}

fn project(event: &Document, spec: &Document, include: bool) -> Document {
    if include {
        let mut out = Document::new();
        let keep_id = spec.get("_id").is_none_or(truthy);
        for (k, v) in event {
            if (k == "_id" && keep_id) || spec.get(k).is_some_and(truthy) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    } else {
        let mut out = event.clone();
        for (k, v) in spec {
            if !truthy(v) {
                out.remove(k);
            }
        }
        out
    }
}

/// The value at a dotted `path`.
pub fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = doc.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

/// Whether `doc` passes the `$match` `filter`.
///
/// ```
/// use bson::doc;
/// use changeflow_testkit::server::pipeline::matches;
/// let event = doc! { "operationType": "insert", "ns": { "db": "shop", "coll": "orders" } };
/// assert!(matches(&event, &doc! { "operationType": { "$in": ["insert", "update"] } }));
/// assert!(matches(&event, &doc! { "ns.coll": "orders", "operationType": { "$ne": "delete" } }));
/// assert!(!matches(&event, &doc! { "$or": [{ "ns.db": "x" }, { "operationType": "drop" }] }));
/// ```
pub fn matches(doc: &Document, filter: &Document) -> bool {
    filter.iter().all(|(key, condition)| match key.as_str() {
        "$and" => each(condition).all(|f| matches(doc, f)),
        "$or" => each(condition).any(|f| matches(doc, f)),
        "$nor" => !each(condition).any(|f| matches(doc, f)),
        path => {
            let value = lookup(doc, path);
            match condition {
                Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
                    ops.iter().all(|(op, arg)| compare(value, op, arg))
                }
                expected => value == Some(expected),
            }
        }
    })
}

fn each(condition: &Bson) -> impl Iterator<Item = &Document> {
    condition
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
}

fn compare(value: Option<&Bson>, op: &str, arg: &Bson) -> bool {
    let within = || {
        arg.as_array()
            .is_some_and(|list| value.is_some_and(|v| list.contains(v)))
    };
    match op {
        "$eq" => value == Some(arg),
        "$ne" => value != Some(arg),
        "$in" => within(),
        "$nin" => !within(),
        "$exists" => value.is_some() == truthy(arg),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn stages_parse_and_apply() {
        let stages = parse(&[
            Bson::Document(doc! { "$match": { "operationType": "insert" } }),
            Bson::Document(doc! { "$project": { "fullDocument": 1, "ns": 1 } }),
        ])
        .unwrap();
        let event = doc! { "_id": { "_data": "82" }, "operationType": "insert", "ns": {}, "fullDocument": {}, "x": 1 };
        let out = apply(&stages, event).unwrap();
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["_id", "ns", "fullDocument"]
        );
        assert!(!touches_id(&stages));
        let bad = parse(&[Bson::Document(doc! { "$project": { "_id": 0 } })]).unwrap();
        assert!(touches_id(&bad));
        assert!(touches_id(
            &parse(&[Bson::Document(doc! { "$set": { "_id": 1 } })]).unwrap()
        ));
        assert!(parse(&[Bson::Document(doc! { "$lookup": {} })]).is_err());
        assert!(
            parse(&[
                Bson::Document(doc! { "$changeStreamSplitLargeEvent": {} }),
                Bson::Document(doc! { "$match": {} })
            ])
            .is_err()
        );
    }
}
