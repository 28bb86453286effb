//! Dotted field paths, as MongoDB resolves them.
//!
//! Two resolutions exist, and pipelines use both:
//!
//! * **Expressions** (`"$items.sku"` in `$project`, `$group`, …): [`resolve`] walks the path;
//!   through an array it maps over the elements, keeping the documents' values and dropping
//!   elements without the field, so `"$items.sku"` over `[{sku: "a"}, {sku: "b"}, {x: 1}]` is
//!   `["a", "b"]`. A missing field gives [`None`] (missing, not null).
//! * **Queries** (`{"items.sku": "a"}` in `$match`): [`candidates`] lists every value the path
//!   can reach, including, for a path ending at an array, the array itself *and* each element,
//!   and numeric components as array indexes, so a predicate matches if any candidate does.
//!
//! ```
//! use bson::{bson, doc};
//! use changeflow_operators::mql::path::{resolve, candidates};
//! let order = doc! { "items": [{"sku": "a", "qty": 1}, {"sku": "b"}, {"qty": 3}] };
//! assert_eq!(resolve(&order, "items.sku"), Some(bson!(["a", "b"])));
//! assert_eq!(resolve(&order, "nothing"), None);
//! assert_eq!(candidates(&order, "items.qty"), vec![bson!(1), bson!(3)]);
//! assert_eq!(candidates(&order, "items.1.sku"), vec![bson!("b")]);
//! ```

use bson::{Bson, Document};

/// The value of `path` in `doc` for an expression (see the module docs); `None` if missing.
pub fn resolve(doc: &Document, path: &str) -> Option<Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    resolve_in(doc.get(first)?, &rest)
}

/// Resolves the remaining components below `value`.
pub fn resolve_in(value: &Bson, rest: &[&str]) -> Option<Bson> {
    let Some((head, tail)) = rest.split_first() else {
        return Some(value.clone());
    };
    match value {
        Bson::Document(d) => resolve_in(d.get(*head)?, tail),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| match item {
                    Bson::Document(_) | Bson::Array(_) => resolve_in(item, rest),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

/// Every value `path` reaches in `doc` for a query predicate (see the module docs).
pub fn candidates(doc: &Document, path: &str) -> Vec<Bson> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    collect(&Bson::Document(doc.clone()), &parts, &mut out);
    out
}

/// Whether `path` reaches anything in `doc` (for `$exists`).
pub fn exists(doc: &Document, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    collect_raw(&Bson::Document(doc.clone()), &parts, &mut out);
    !out.is_empty()
}

fn collect(value: &Bson, rest: &[&str], out: &mut Vec<Bson>) {
    let mut reached = Vec::new();
    collect_raw(value, rest, &mut reached);
    for v in reached {
        if let Bson::Array(items) = &v {
            out.extend(items.iter().cloned());
        }
        out.push(v);
    }
}

/// The values reached at the end of the path, arrays not expanded at the leaf.
fn collect_raw(value: &Bson, rest: &[&str], out: &mut Vec<Bson>) {
    let Some((head, tail)) = rest.split_first() else {
        out.push(value.clone());
        return;
    };
    match value {
        Bson::Document(d) => {
            if let Some(v) = d.get(*head) {
                collect_raw(v, tail, out);
            }
        }
        Bson::Array(items) => {
            if let Ok(index) = head.parse::<usize>()
                && let Some(item) = items.get(index)
            {
                collect_raw(item, tail, out);
            }
            for item in items {
                if let Bson::Document(_) = item {
                    collect_raw(item, rest, out);
                }
            }
        }
        _ => {}
    }
}
