//! Per-document stages: `$match`, `$project`, `$unset`, `$addFields`/`$set`,
//! `$replaceRoot`/`$replaceWith`, `$unwind`. Each maps one document to zero or more documents,
//! so incrementally a change of one input document changes only its own outputs.
//!
//! ```
//! use bson::doc;
//! use changeflow_operators::pipeline::{apply::apply_stage, parse::parse_pipeline};
//! let stages = parse_pipeline(&[doc! { "$unwind": {"path": "$items", "includeArrayIndex": "i"} }]).unwrap();
//! let out = apply_stage(&stages[0].stage, doc! { "_id": 1, "items": ["a", "b"] }).unwrap();
//! assert_eq!(out, vec![doc! { "_id": 1, "items": "a", "i": 0_i64 }, doc! { "_id": 1, "items": "b", "i": 1_i64 }]);
//! ```

use bson::{Bson, Document};

use crate::mql::expr::EvalError;
use crate::pipeline::parse::{Projection, Stage};

/// Applies a per-document stage to one document.
///
/// # Panics
///
/// Never; stages that are not per document return the document unchanged (the compiler does
/// not route them here).
pub fn apply_stage(stage: &Stage, doc: Document) -> Result<Vec<Document>, EvalError> {
    Ok(match stage {
        Stage::Match(query) => {
            if query.matches(&doc)? {
                vec![doc]
            } else {
                vec![]
            }
        }
        Stage::Project { fields, inclusion } => {
            let root = doc.clone();
            vec![if *inclusion {
                include(&doc, fields, &root)?
            } else {
                exclude(doc, fields)
            }]
        }
        Stage::AddFields(fields) => {
            let mut values = Vec::with_capacity(fields.len());
            for (path, expr) in fields {
                values.push((path, expr.eval(&doc)?));
            }
            let mut out = doc;
            for (path, value) in values {
                let parts: Vec<&str> = path.split('.').collect();
                match value {
                    Some(v) => set_path(&mut out, &parts, v),
                    None => remove_path(&mut out, &parts),
                }
            }
            vec![out]
        }
        Stage::ReplaceRoot(expr) => match expr.eval(&doc)? {
            Some(Bson::Document(d)) => vec![d],
            other => {
                return Err(EvalError {
                    operator: "$replaceRoot".into(),
                    reason: format!(
                        "'newRoot' must evaluate to an object, but resulting value was: {}",
                        other.map_or("MISSING".to_string(), |v| v.to_string())
                    ),
                });
            }
        },
        Stage::Unwind {
            path,
            index_field,
            preserve,
        } => unwind(doc, path, index_field.as_deref(), *preserve),
        _ => vec![doc],
    })
}

fn include(
    doc: &Document,
    fields: &[(String, Projection)],
    root: &Document,
) -> Result<Document, EvalError> {
    let mut out = Document::new();
    // Included fields keep the input's order; computed fields follow in the spec's order.
    for (key, value) in doc {
        match fields.iter().find(|(k, _)| k == key).map(|(_, p)| p) {
            Some(Projection::Include) => {
                out.insert(key.clone(), value.clone());
            }
            Some(Projection::Nested(children)) => {
                if let Some(v) = include_value(value, children, root)? {
                    out.insert(key.clone(), v);
                }
            }
            _ => {}
        }
    }
    for (key, p) in fields {
        match p {
            Projection::Computed(e) => {
                if let Some(v) = e.eval(root)? {
                    out.insert(key.clone(), v);
                }
            }
            Projection::Nested(children) if !doc.contains_key(key) && has_computed(children) => {
                if let Some(v) = include_value(&Bson::Document(Document::new()), children, root)? {
                    out.insert(key.clone(), v);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn has_computed(fields: &[(String, Projection)]) -> bool {
    fields.iter().any(|(_, p)| match p {
        Projection::Computed(_) => true,
        Projection::Nested(c) => has_computed(c),
        _ => false,
    })
}

fn include_value(
    value: &Bson,
    children: &[(String, Projection)],
    root: &Document,
) -> Result<Option<Bson>, EvalError> {
    Ok(match value {
        Bson::Document(d) => Some(Bson::Document(include(d, children, root)?)),
        Bson::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Bson::Document(_) | Bson::Array(_) => {
                        if let Some(v) = include_value(item, children, root)? {
                            out.push(v);
                        }
                    }
                    _ if has_computed(children) => {
                        out.push(Bson::Document(include(&Document::new(), children, root)?))
                    }
                    _ => {}
                }
            }
            Some(Bson::Array(out))
        }
        _ if has_computed(children) => {
            Some(Bson::Document(include(&Document::new(), children, root)?))
        }
        _ => None,
    })
}

fn exclude(doc: Document, fields: &[(String, Projection)]) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        match fields.iter().find(|(k, _)| *k == key).map(|(_, p)| p) {
            Some(Projection::Exclude) => {}
            Some(Projection::Nested(children)) => {
                out.insert(key, exclude_value(value, children));
            }
            _ => {
                out.insert(key, value);
            }
        }
    }
    out
}

fn exclude_value(value: Bson, children: &[(String, Projection)]) -> Bson {
    match value {
        Bson::Document(d) => Bson::Document(exclude(d, children)),
        Bson::Array(items) => Bson::Array(
            items
                .into_iter()
                .map(|i| exclude_value(i, children))
                .collect(),
        ),
        other => other,
    }
}

/// Sets a dotted path, creating documents; through an array, sets it in each element.
pub(crate) fn set_path(doc: &mut Document, parts: &[&str], value: Bson) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.insert(*head, value);
        return;
    }
    match doc.get_mut(*head) {
        Some(Bson::Document(sub)) => set_path(sub, rest, value),
        Some(Bson::Array(items)) => {
            for item in items.iter_mut() {
                if let Bson::Document(sub) = item {
                    set_path(sub, rest, value.clone());
                } else {
                    let mut sub = Document::new();
                    set_path(&mut sub, rest, value.clone());
                    *item = Bson::Document(sub);
                }
            }
        }
        _ => {
            let mut sub = Document::new();
            set_path(&mut sub, rest, value);
            doc.insert(*head, sub);
        }
    }
}

fn remove_path(doc: &mut Document, parts: &[&str]) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.remove(*head);
        return;
    }
    match doc.get_mut(*head) {
        Some(Bson::Document(sub)) => remove_path(sub, rest),
        Some(Bson::Array(items)) => {
            for item in items.iter_mut() {
                if let Bson::Document(sub) = item {
                    remove_path(sub, rest);
                }
            }
        }
        _ => {}
    }
}

fn unwind(doc: Document, path: &str, index_field: Option<&str>, preserve: bool) -> Vec<Document> {
    let parts: Vec<&str> = path.split('.').collect();
    let value = crate::mql::path::resolve(&doc, path);
    let with_index = |mut d: Document, i: Option<i64>| {
        if let Some(f) = index_field {
            let parts: Vec<&str> = f.split('.').collect();
            set_path(&mut d, &parts, i.map_or(Bson::Null, Bson::Int64));
        }
        d
    };
    // Only an array reached directly (not through an array of documents) is unwound.
    let direct = value.is_some() && get_direct(&doc, &parts).is_some();
    match (value, direct) {
        (Some(Bson::Array(items)), true) if !items.is_empty() => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let mut d = doc.clone();
                set_path(&mut d, &parts, item);
                with_index(d, Some(i as i64))
            })
            .collect(),
        (Some(Bson::Array(_)), true) => {
            if preserve {
                let mut d = doc;
                remove_path(&mut d, &parts);
                vec![with_index(d, None)]
            } else {
                vec![]
            }
        }
        (None | Some(Bson::Null | Bson::Undefined), _) | (_, false) => {
            if preserve {
                vec![with_index(doc, None)]
            } else {
                vec![]
            }
        }
        (Some(_), true) => vec![with_index(doc, None)],
    }
}

fn get_direct<'a>(doc: &'a Document, parts: &[&str]) -> Option<&'a Bson> {
    let (head, rest) = parts.split_first()?;
    let v = doc.get(*head)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Bson::Document(d) => get_direct(d, rest),
        _ => None,
    }
}
