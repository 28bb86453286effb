//! Applying an `updateDescription` to the previous version of a document.
//!
//! A change stream's `update` event carries the exact delta of the update, whatever the update
//! command was. [`apply_update`] applies it to the previous version, giving the exact version at
//! that event (unlike `fullDocument: updateLookup`, which may be newer).
//!
//! # The rule
//!
//! 1. `truncatedArrays`: each named array keeps its first `newSize` elements.
//! 2. `updatedFields`, in document order: each dotted path is set to its value.
//!    * A path component is an array index when the container is an array, a field name when it
//!      is a document, unless `disambiguatedPaths` gives the components explicitly (integers are
//!      indices, strings field names).
//!    * Missing intermediate components are created as documents (never arrays).
//!    * Setting index `len` of an array appends; an index beyond it pads with nulls.
//!    * An existing field is replaced in place; a new field is appended to its document.
//! 3. `removedFields`: each path is removed (an array element is set to null, as `$unset` does).
//!
//! A path that runs through a scalar (e.g. `a.b` where `a` is a number) cannot come from a real
//! update of this version: [`ApplyError`] says so, and the caller must not guess.
//!
//! Untouched sub-documents are copied as bytes; only the documents on updated paths are rebuilt.
//!
//! ```
//! use changeflow_core::Document;
//! use changeflow_operators::update::apply_update;
//! let before = bson::rawdoc! { "_id": 1, "items": [{ "qty": 1 }, { "qty": 2 }], "status": "new" };
//! let delta = bson::rawdoc! {
//!     "updatedFields": { "items.1.qty": 5, "ship.carrier": "ups" },
//!     "removedFields": ["status"],
//!     "truncatedArrays": [],
//! };
//! let after = apply_update(before.as_bytes(), delta.as_bytes()).unwrap();
//! assert_eq!(
//!     bson::RawDocument::from_bytes(&after).unwrap().to_owned(),
//!     bson::rawdoc! { "_id": 1, "items": [{ "qty": 1 }, { "qty": 5 }], "ship": { "carrier": "ups" } },
//! );
//! ```

use std::borrow::Cow;

use changeflow_core::raw::{self, RawError, kind};

/// Why an `updateDescription` could not be applied to a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The previous version or the delta is not well-formed BSON.
    #[error("malformed BSON: {0}")]
    Malformed(#[from] RawError),
    /// The delta does not have the shape of an `updateDescription`.
    #[error("malformed updateDescription: {0}")]
    BadDescription(String),
    /// A path runs through a value that is neither a document nor an array.
    #[error("path `{path}` runs through a {found} value")]
    PathConflict {
        /// The dotted path.
        path: String,
        /// What it ran into.
        found: &'static str,
    },
    /// `truncatedArrays` names a field that is not an array.
    #[error("truncated field `{0}` is not an array")]
    NotAnArray(String),
}

#[derive(Debug, Clone)]
enum Node<'a> {
    /// An encoded value: type byte and bytes.
    Raw(u8, Cow<'a, [u8]>),
    Doc(Vec<(Cow<'a, str>, Node<'a>)>),
    Arr(Vec<Node<'a>>),
}

const NOT_UTF8: RawError = RawError {
    offset: 0,
    reason: "key is not UTF-8",
};

const NULL: Node<'static> = Node::Raw(kind::NULL, Cow::Borrowed(&[]));

#[derive(Debug, Clone, PartialEq)]
enum Component<'a> {
    /// A component from a dotted path: index or field depending on the container.
    Ambiguous(&'a str),
    Field(Cow<'a, str>),
    Index(usize),
}

impl Component<'_> {
    /// The field name this component names in a document, if it can name one.
    fn field(&self) -> Option<&str> {
        match self {
            Component::Ambiguous(s) => Some(s),
            Component::Field(s) => Some(s),
            Component::Index(_) => None,
        }
    }
    /// The index this component names in an array, if it can name one.
    fn index(&self) -> Option<usize> {
        match self {
            Component::Index(i) => Some(*i),
            Component::Ambiguous(s) => s.parse().ok(),
            Component::Field(_) => None,
        }
    }
}

impl<'a> Node<'a> {
    fn expand(&mut self) -> Result<(), RawError> {
        if let Node::Raw(k, bytes) = self {
            let k = *k;
            if k == kind::DOCUMENT || k == kind::ARRAY {
                let bytes: Cow<'a, [u8]> = std::mem::take(bytes);
                *self = parse_container(k, bytes)?;
            }
        }
        Ok(())
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Node::Doc(_) => "document",
            Node::Arr(_) => "array",
            Node::Raw(k, _) => match *k {
                kind::DOCUMENT => "document",
                kind::ARRAY => "array",
                kind::NULL => "null",
                kind::STRING => "string",
                kind::INT32 | kind::INT64 | kind::DOUBLE | kind::DECIMAL128 => "number",
                _ => "scalar",
            },
        }
    }

    /// The child at `c`, creating a document there if `create` and it is missing.
    fn child(
        &mut self,
        c: &Component<'a>,
        create: bool,
        path: &str,
    ) -> Result<Option<&mut Node<'a>>, ApplyError> {
        self.expand()?;
        let found = self.kind_name();
        let conflict = || ApplyError::PathConflict {
            path: path.into(),
            found,
        };
        match self {
            Node::Doc(fields) => {
                let name = c.field().ok_or_else(conflict)?;
                match fields.iter().position(|(k, _)| k == name) {
                    Some(p) => Ok(Some(&mut fields[p].1)),
                    None if create => {
                        fields.push((Cow::Owned(name.to_owned()), Node::Doc(Vec::new())));
                        Ok(fields.last_mut().map(|(_, n)| n))
                    }
                    None => Ok(None),
                }
            }
            Node::Arr(items) => {
                let index = c.index().ok_or_else(conflict)?;
                if index >= items.len() {
                    if !create {
                        return Ok(None);
                    }
                    items.resize(index, NULL);
                    items.push(Node::Doc(Vec::new()));
                }
                Ok(Some(&mut items[index]))
            }
            Node::Raw(..) => Err(conflict()),
        }
    }

    /// Sets the child at `last` to `value` (replacing in place, appending, or padding arrays).
    fn set(&mut self, last: &Component<'a>, value: Node<'a>, path: &str) -> Result<(), ApplyError> {
        self.expand()?;
        let found = self.kind_name();
        let conflict = || ApplyError::PathConflict {
            path: path.into(),
            found,
        };
        match self {
            Node::Doc(fields) => {
                let name = last.field().ok_or_else(conflict)?;
                match fields.iter_mut().find(|(k, _)| k == name) {
                    Some((_, slot)) => *slot = value,
                    None => fields.push((Cow::Owned(name.to_owned()), value)),
                }
            }
            Node::Arr(items) => {
                let index = last.index().ok_or_else(conflict)?;
                if index < items.len() {
                    items[index] = value;
                } else {
                    items.resize(index, NULL);
                    items.push(value);
                }
            }
            Node::Raw(..) => return Err(conflict()),
        }
        Ok(())
    }

    /// Removes the child at `last` (an array element becomes null, as `$unset` does).
    fn remove(&mut self, last: &Component<'a>) -> Result<(), ApplyError> {
        self.expand()?;
        match self {
            Node::Doc(fields) => {
                if let Some(name) = last.field() {
                    fields.retain(|(k, _)| k != name);
                }
            }
            Node::Arr(items) => {
                if let Some(slot) = last.index().and_then(|i| items.get_mut(i)) {
                    *slot = NULL;
                }
            }
            Node::Raw(..) => {}
        }
        Ok(())
    }

    fn write(&self, kind_out: &mut u8, out: &mut Vec<u8>) {
        match self {
            Node::Raw(k, bytes) => {
                *kind_out = *k;
                out.extend_from_slice(bytes);
            }
            Node::Doc(fields) => {
                *kind_out = kind::DOCUMENT;
                write_container(fields.iter().map(|(k, v)| (Key::Name(k), v)), out);
            }
            Node::Arr(items) => {
                *kind_out = kind::ARRAY;
                write_container(
                    items.iter().enumerate().map(|(i, v)| (Key::Index(i), v)),
                    out,
                );
            }
        }
    }
}

/// The key of an element being written: a field name, or an array index (written as decimal
/// digits without allocating a string).
enum Key<'n> {
    Name(&'n str),
    Index(usize),
}

impl Key<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Key::Name(name) => out.extend_from_slice(name.as_bytes()),
            Key::Index(i) => {
                let mut digits = [0u8; 20];
                let mut at = digits.len();
                let mut n = *i;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                out.extend_from_slice(&digits[at..]);
            }
        }
    }
}

fn write_container<'n, 'a: 'n>(
    children: impl Iterator<Item = (Key<'n>, &'n Node<'a>)>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, node) in children {
        let type_at = out.len();
        out.push(0);
        key.write(out);
        out.push(0);
        let mut k = 0;
        node.write(&mut k, out);
        out[type_at] = k;
    }
    out.push(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn parse_container<'a>(k: u8, bytes: Cow<'a, [u8]>) -> Result<Node<'a>, RawError> {
    // Children borrow from a borrowed container and own copies from an owned one.
    let (mut items, mut fields) = (Vec::new(), Vec::new());
    match &bytes {
        Cow::Borrowed(b) => {
            for e in raw::elements(b) {
                let e = e?;
                let node = Node::Raw(e.kind, Cow::Borrowed(e.value));
                match k {
                    kind::ARRAY => items.push(node),
                    _ => fields.push((Cow::Borrowed(e.key_str().ok_or(NOT_UTF8)?), node)),
                }
            }
        }
        Cow::Owned(b) => {
            for e in raw::elements(b) {
                let e = e?;
                let node = Node::Raw(e.kind, Cow::Owned(e.value.to_vec()));
                match k {
                    kind::ARRAY => items.push(node),
                    _ => fields.push((Cow::Owned(e.key_str().ok_or(NOT_UTF8)?.to_owned()), node)),
                }
            }
        }
    }
    Ok(if k == kind::ARRAY {
        Node::Arr(items)
    } else {
        Node::Doc(fields)
    })
}

/// The components of `path` (from `disambiguatedPaths` when it lists the path), into `out`
/// (cleared first; one buffer serves every path of an update).
fn split_path<'a>(
    path: &'a str,
    disambiguated: Option<&'a [u8]>,
    out: &mut Vec<Component<'a>>,
) -> Result<(), ApplyError> {
    out.clear();
    if let Some(list) = disambiguated.and_then(|d| raw::get(d, path).ok().flatten()) {
        let Some(items) = list.as_document().filter(|_| list.kind == kind::ARRAY) else {
            return Err(ApplyError::BadDescription(format!(
                "disambiguatedPaths entry for `{path}` is not an array"
            )));
        };
        for e in raw::elements(items) {
            let e = e?;
            out.push(match (e.as_str(), e.as_i64()) {
                (Some(s), _) => Component::Field(Cow::Borrowed(s)),
                (None, Some(i)) if i >= 0 => Component::Index(i as usize),
                _ => return Err(ApplyError::BadDescription(format!("disambiguatedPaths entry for `{path}` has a component that is neither a string nor an index"))),
            });
        }
        if out.is_empty() {
            return Err(ApplyError::BadDescription(format!(
                "disambiguatedPaths entry for `{path}` is empty"
            )));
        }
        return Ok(());
    }
    out.extend(path.split('.').map(Component::Ambiguous));
    Ok(())
}

/// Walks `root` to the parent of the last component; `None` if a component is missing and
/// `create` is false.
fn parent<'r, 'a>(
    root: &'r mut Node<'a>,
    components: &[Component<'a>],
    create: bool,
    path: &str,
) -> Result<Option<&'r mut Node<'a>>, ApplyError> {
    let mut node = root;
    for c in &components[..components.len() - 1] {
        match node.child(c, create, path)? {
            Some(next) => node = next,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// Applies the `updateDescription` `delta` to the document `before` (both BSON bytes) and returns
/// the new version's bytes (see the module docs for the rule).
pub fn apply_update(before: &[u8], delta: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let mut updated = None;
    let mut removed = None;
    let mut truncated = None;
    let mut disambiguated = None;
    for e in raw::elements(delta) {
        let e = e?;
        let want = |k: u8, name: &str| -> Result<&[u8], ApplyError> {
            if e.kind == k {
                Ok(e.value)
            } else {
                Err(ApplyError::BadDescription(format!(
                    "`{name}` has the wrong type"
                )))
            }
        };
        match e.key {
            b"updatedFields" => updated = Some(want(kind::DOCUMENT, "updatedFields")?),
            b"removedFields" => removed = Some(want(kind::ARRAY, "removedFields")?),
            b"truncatedArrays" => truncated = Some(want(kind::ARRAY, "truncatedArrays")?),
            b"disambiguatedPaths" => {
                disambiguated = Some(want(kind::DOCUMENT, "disambiguatedPaths")?)
            }
            _ => {}
        }
    }
    let mut root = parse_container(kind::DOCUMENT, Cow::Borrowed(before))?;
    let mut components = Vec::new();

    if let Some(list) = truncated {
        for entry in raw::elements(list) {
            let entry = entry?;
            let body = entry.as_document().ok_or_else(|| {
                ApplyError::BadDescription("truncatedArrays entry is not a document".into())
            })?;
            let field = raw::get(body, "field")?.and_then(|f| f.as_str());
            let size = raw::get(body, "newSize")?.and_then(|f| f.as_i64());
            let (Some(field), Some(size)) = (field, size) else {
                return Err(ApplyError::BadDescription(
                    "truncatedArrays entry needs `field` and `newSize`".into(),
                ));
            };
            split_path(field, disambiguated, &mut components)?;
            let Some(parent) = parent(&mut root, &components, false, field)? else {
                return Err(ApplyError::NotAnArray(field.into()));
            };
            let last = &components[components.len() - 1];
            match parent.child(last, false, field)? {
                Some(target) => {
                    target.expand()?;
                    match target {
                        Node::Arr(items) => items.truncate(size.max(0) as usize),
                        _ => return Err(ApplyError::NotAnArray(field.into())),
                    }
                }
                None => return Err(ApplyError::NotAnArray(field.into())),
            }
        }
    }
    if let Some(fields) = updated {
        for e in raw::elements(fields) {
            let e = e?;
            let path = e.key_str().ok_or(NOT_UTF8)?;
            split_path(path, disambiguated, &mut components)?;
            let value = Node::Raw(e.kind, Cow::Borrowed(e.value));
            if let Some(parent) = parent(&mut root, &components, true, path)? {
                parent.set(&components[components.len() - 1], value, path)?;
            }
        }
    }
    if let Some(list) = removed {
        for e in raw::elements(list) {
            let e = e?;
            let path = e.as_str().ok_or_else(|| {
                ApplyError::BadDescription("removedFields entry is not a string".into())
            })?;
            split_path(path, disambiguated, &mut components)?;
            if let Some(parent) = parent(&mut root, &components, false, path)? {
                parent.remove(&components[components.len() - 1])?;
            }
        }
    }
    let mut out = Vec::with_capacity(before.len() + 64);
    let mut k = 0;
    root.write(&mut k, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc, rawdoc};

    fn apply(before: bson::Document, delta: bson::Document) -> Result<bson::Document, ApplyError> {
        let out = apply_update(&before.to_vec().unwrap(), &delta.to_vec().unwrap())?;
        Ok(bson::Document::from_reader(&out[..]).unwrap())
    }

    #[test]
    fn sets_top_level_and_nested_paths_in_place_or_appended() {
        let after = apply(
            doc! { "a": 1, "b": { "c": 2 } },
            doc! { "updatedFields": { "a": 5, "b.d": 3, "x.y.z": true } },
        )
        .unwrap();
        assert_eq!(
            after,
            doc! { "a": 5, "b": { "c": 2, "d": 3 }, "x": { "y": { "z": true } } }
        );
        let keys: Vec<_> = after.keys().cloned().collect();
        assert_eq!(keys, ["a", "b", "x"]);
    }

    #[test]
    fn array_indices_set_append_and_pad() {
        let before = doc! { "items": [ { "q": 1 }, { "q": 2 } ] };
        assert_eq!(
            apply(before.clone(), doc! { "updatedFields": { "items.1.q": 9 } }).unwrap(),
            doc! { "items": [ { "q": 1 }, { "q": 9 } ] }
        );
        assert_eq!(
            apply(
                before.clone(),
                doc! { "updatedFields": { "items.2": { "q": 3 } } }
            )
            .unwrap(),
            doc! { "items": [ { "q": 1 }, { "q": 2 }, { "q": 3 } ] }
        );
        assert_eq!(
            apply(before, doc! { "updatedFields": { "items.4": 7 } }).unwrap(),
            doc! { "items": [ { "q": 1 }, { "q": 2 }, Bson::Null, Bson::Null, 7 ] }
        );
    }

    #[test]
    fn removed_fields_and_array_elements() {
        let after = apply(
            doc! { "a": 1, "b": { "c": 2, "d": 3 }, "arr": [1, 2] },
            doc! { "removedFields": ["a", "b.c", "arr.0", "missing.path"] },
        )
        .unwrap();
        assert_eq!(after, doc! { "b": { "d": 3 }, "arr": [Bson::Null, 2] });
    }

    #[test]
    fn truncation_happens_before_sets() {
        let after = apply(doc! { "v": [1, 2, 3, 4, 5] }, doc! { "truncatedArrays": [ { "field": "v", "newSize": 2 } ], "updatedFields": { "v.2": 30 } }).unwrap();
        assert_eq!(after, doc! { "v": [1, 2, 30] });
    }

    #[test]
    fn disambiguated_paths_distinguish_numeric_field_names_from_indices() {
        let before = doc! { "a": { "0": { "b": 1 } }, "arr": [ { "0": 1 } ] };
        let delta = doc! {
            "updatedFields": { "a.0.b": 2, "arr.0.0": 5 },
            "disambiguatedPaths": { "a.0.b": ["a", "0", "b"], "arr.0.0": ["arr", 0, "0"] },
        };
        assert_eq!(
            apply(before, delta).unwrap(),
            doc! { "a": { "0": { "b": 2 } }, "arr": [ { "0": 5 } ] }
        );
        // Without disambiguation, a numeric component on a missing path creates a field.
        assert_eq!(
            apply(doc! {}, doc! { "updatedFields": { "m.0": 1 } }).unwrap(),
            doc! { "m": { "0": 1 } }
        );
    }

    #[test]
    fn conflicts_are_errors_not_guesses() {
        let err = apply(doc! { "a": 5 }, doc! { "updatedFields": { "a.b": 1 } }).unwrap_err();
        assert_eq!(
            err,
            ApplyError::PathConflict {
                path: "a.b".into(),
                found: "number"
            }
        );
        let err = apply(
            doc! { "a": 5 },
            doc! { "truncatedArrays": [ { "field": "a", "newSize": 1 } ] },
        )
        .unwrap_err();
        assert_eq!(err, ApplyError::NotAnArray("a".into()));
        let err = apply_update(
            rawdoc! { "a": 1 }.as_bytes(),
            rawdoc! { "updatedFields": 3 }.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::BadDescription(_)));
        assert!(apply_update(&[1, 2], rawdoc! {}.as_bytes()).is_err());
    }

    #[test]
    fn untouched_subdocuments_are_copied_byte_for_byte() {
        let before = doc! { "keep": { "deep": [1, { "x": "y" }] }, "n": 1 };
        let after = apply(before.clone(), doc! { "updatedFields": { "n": 2 } }).unwrap();
        assert_eq!(
            after.get_document("keep").unwrap(),
            before.get_document("keep").unwrap()
        );
    }
}
