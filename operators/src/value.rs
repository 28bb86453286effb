//! Typed values read out of documents by path.
//!
//! A view declares each column as a [`Field`]: a name, a dotted path into the document and a
//! [`ValueType`]. [`Field::extract`] reads the value in one walk down the path and converts it
//! to the declared type. A missing field or an explicit null is [`Value::Null`] (as in MongoDB's
//! `$group`); a value of another type is also `Null` and is reported as a type mismatch.
//!
//! [`Value`] is ordered and hashable, so rows of values can be keys in differential.
//!
//! ```
//! use changeflow_operators::value::{Field, Value, ValueType};
//! let doc = bson::rawdoc! { "region": "eu", "items": [{ "qty": 3 }], "amount": 12.5 };
//! let region = Field::new("region", "region", ValueType::String);
//! let qty = Field::new("qty", "items.0.qty", ValueType::Int64);
//! let amount = Field::new("amount", "amount", ValueType::Double);
//! assert_eq!(region.extract(doc.as_bytes()), Ok(Value::String("eu".into())));
//! assert_eq!(qty.extract(doc.as_bytes()), Ok(Value::Int(3)));
//! assert_eq!(amount.extract(doc.as_bytes()), Ok(Value::Double(12.5.into())));
//! assert_eq!(Field::new("x", "missing", ValueType::Int64).extract(doc.as_bytes()), Ok(Value::Null));
//! assert!(Field::new("x", "region", ValueType::Int64).extract(doc.as_bytes()).is_err());
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use changeflow_core::raw::{self, Element, kind};
use serde::{Deserialize, Serialize};

/// A column type of a view.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueType {
    /// `true` / `false`.
    Bool,
    /// 64-bit integers (BSON int32 and int64; doubles with an integral value).
    Int64,
    /// 64-bit floats (any BSON number).
    Double,
    /// UTF-8 strings (BSON string and symbol).
    String,
    /// UTC datetime, milliseconds since the epoch.
    DateTime,
    /// 12-byte ObjectId.
    ObjectId,
}

/// An `f64` with a total order (`f64::total_cmp`) so it can be part of a key.
#[derive(Copy, Clone, Default, Serialize, Deserialize)]
pub struct F64(pub f64);

impl F64 {
    fn canonical_bits(self) -> u64 {
        // -0.0 equals 0.0 and all NaNs are one value, as in MongoDB's comparison.
        if self.0 == 0.0 {
            0
        } else if self.0.is_nan() {
            f64::NAN.to_bits()
        } else {
            self.0.to_bits()
        }
    }
}

impl From<f64> for F64 {
    fn from(v: f64) -> Self {
        F64(v)
    }
}
impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.canonical_bits() == other.canonical_bits()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        if self == other {
            Ordering::Equal
        } else {
            self.0.total_cmp(&other.0)
        }
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical_bits().hash(state)
    }
}
impl fmt::Debug for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A typed value in a view row.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Missing, null, or not of the column's type.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(F64),
    /// A string.
    String(Arc<str>),
    /// Milliseconds since the epoch.
    DateTime(i64),
    /// An ObjectId.
    ObjectId([u8; 12]),
}

impl Value {
    /// The value as an `f64`, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Double(v) => Some(v.0),
            _ => None,
        }
    }
    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{}", v.0),
            Value::String(v) => f.write_str(v),
            Value::DateTime(v) => write!(f, "{}", bson::DateTime::from_millis(*v)),
            Value::ObjectId(v) => write!(f, "{}", bson::oid::ObjectId::from_bytes(*v)),
        }
    }
}

/// A value was present but not of the declared type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` holds a BSON {found}, not {expected:?}")]
pub struct TypeMismatch {
    /// The field's name.
    pub field: String,
    /// BSON type byte found.
    pub found: u8,
    /// The declared type.
    pub expected: ValueType,
}

/// A named, typed column read from a dotted path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Field {
    /// The column name.
    pub name: String,
    /// The dotted path, split into components.
    pub path: Vec<String>,
    /// The declared type.
    pub ty: ValueType,
}

impl Field {
    /// The column `name` read from the dotted `path` as `ty`.
    pub fn new(name: &str, path: &str, ty: ValueType) -> Self {
        Field {
            name: name.into(),
            path: path.split('.').map(str::to_owned).collect(),
            ty,
        }
    }

    /// Reads this field from the document `doc` (see the module docs).
    pub fn extract(&self, doc: &[u8]) -> Result<Value, TypeMismatch> {
        match lookup(doc, &self.path) {
            None => Ok(Value::Null),
            Some(e) => convert(&e, self.ty).ok_or_else(|| TypeMismatch {
                field: self.name.clone(),
                found: e.kind,
                expected: self.ty,
            }),
        }
    }
}

/// Reads every field of `fields` from `doc` into a row, walking the top-level elements once for
/// all single-component paths, and only until each has been found (the first occurrence of a
/// repeated key, as [`Field::extract`] reads it). A field with an empty path reads as null.
/// `mismatch` is told of each value present but not of its field's type (which reads as null).
///
/// ```
/// use changeflow_operators::value::{extract_row, Field, Value, ValueType};
/// let doc = bson::rawdoc! { "a": 1, "b": { "c": "x" }, "d": "not a number" };
/// let fields = [Field::new("a", "a", ValueType::Int64), Field::new("c", "b.c", ValueType::String), Field::new("d", "d", ValueType::Double)];
/// let mut mismatches = 0;
/// let row = extract_row(doc.as_bytes(), &fields, |_| mismatches += 1);
/// assert_eq!(row, vec![Value::Int(1), Value::String("x".into()), Value::Null]);
/// assert_eq!(mismatches, 1);
/// ```
pub fn extract_row(
    doc: &[u8],
    fields: &[Field],
    mismatch: impl FnMut(&TypeMismatch),
) -> Vec<Value> {
    extract_row_interned(doc, fields, &mut Interner::default(), mismatch)
}

/// Shares the `Arc<str>` of strings seen before, so reading a string value that repeats (a
/// region, a status) costs no allocation. Bounded: it forgets everything past `LIMIT` strings.
///
/// ```
/// use changeflow_operators::value::Interner;
/// let mut strings = Interner::default();
/// let a = strings.intern("eu");
/// let b = strings.intern("eu");
/// assert!(std::sync::Arc::ptr_eq(&a, &b));
/// ```
#[derive(Default, Debug)]
pub struct Interner {
    strings: crate::fxhash::FxHashSet<Arc<str>>,
}

impl Interner {
    const LIMIT: usize = 1 << 16;

    /// The shared `Arc<str>` for `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        if self.strings.len() >= Self::LIMIT {
            self.strings.clear();
        }
        let shared: Arc<str> = s.into();
        self.strings.insert(Arc::clone(&shared));
        shared
    }
}

/// [`extract_row`] with an [`Interner`] for string values.
pub fn extract_row_interned(
    doc: &[u8],
    fields: &[Field],
    strings: &mut Interner,
    mismatch: impl FnMut(&TypeMismatch),
) -> Vec<Value> {
    let mut row = Vec::with_capacity(fields.len());
    extract_row_into(doc, fields, strings, &mut row, mismatch);
    row
}

/// [`extract_row_interned`] into `row` (cleared first), reusing its allocation.
///
/// ```
/// use changeflow_operators::value::{extract_row_into, Field, Interner, Value, ValueType};
/// let doc = bson::rawdoc! { "region": "eu", "amount": 12.5 };
/// let fields = [Field::new("amount", "amount", ValueType::Double), Field::new("region", "region", ValueType::String)];
/// let mut row = vec![Value::Int(1)];
/// extract_row_into(doc.as_bytes(), &fields, &mut Interner::default(), &mut row, |_| {});
/// assert_eq!(row, [Value::Double(12.5.into()), Value::String("eu".into())]);
/// ```
pub fn extract_row_into(
    doc: &[u8],
    fields: &[Field],
    strings: &mut Interner,
    row: &mut Vec<Value>,
    mut mismatch: impl FnMut(&TypeMismatch),
) {
    row.clear();
    row.resize(fields.len(), Value::Null);
    let mut top_level = 0;
    for (slot, field) in row.iter_mut().zip(fields) {
        match field.path.len() {
            0 => {}
            1 => top_level += 1,
            _ => {
                *slot = field.extract(doc).unwrap_or_else(|e| {
                    mismatch(&e);
                    Value::Null
                })
            }
        }
    }
    if top_level == 0 {
        return;
    }
    let key = |i: usize| match fields[i].path.as_slice() {
        [only] => Some(only.as_bytes()),
        _ => None,
    };
    raw::first_occurrences(doc, fields.len(), key, |i, element| {
        let field = &fields[i];
        let value = match (field.ty, element.as_str()) {
            (ValueType::String, Some(s)) => Some(Value::String(strings.intern(s))),
            _ => convert(&element, field.ty),
        };
        row[i] = value.unwrap_or_else(|| {
            mismatch(&TypeMismatch {
                field: field.name.clone(),
                found: element.kind,
                expected: field.ty,
            });
            Value::Null
        });
        true
    });
}

/// Follows `path` through documents (and arrays, by numeric index).
pub fn lookup<'a>(doc: &'a [u8], path: &[String]) -> Option<Element<'a>> {
    let mut current = doc;
    let mut found = None;
    for (i, component) in path.iter().enumerate() {
        let e = raw::get(current, component).ok().flatten()?;
        if i + 1 == path.len() {
            found = Some(e);
        } else {
            current = e.as_document()?;
        }
    }
    found
}

fn convert(e: &Element<'_>, ty: ValueType) -> Option<Value> {
    if e.kind == kind::NULL || e.kind == kind::UNDEFINED {
        return Some(Value::Null);
    }
    match ty {
        ValueType::Bool => {
            (e.kind == kind::BOOLEAN).then(|| Value::Bool(e.value.first() == Some(&1)))
        }
        ValueType::Int64 => match e.kind {
            kind::INT32 | kind::INT64 => e.as_i64().map(Value::Int),
            kind::DOUBLE => e
                .as_f64()
                .filter(|v| v.fract() == 0.0 && v.abs() < 9.2e18)
                .map(|v| Value::Int(v as i64)),
            _ => None,
        },
        ValueType::Double => e.as_f64().map(|v| Value::Double(F64(v))),
        ValueType::String => e.as_str().map(|s| Value::String(s.into())),
        ValueType::DateTime => (e.kind == kind::DATETIME)
            .then(|| {
                e.value
                    .try_into()
                    .ok()
                    .map(|b| Value::DateTime(i64::from_le_bytes(b)))
            })
            .flatten(),
        ValueType::ObjectId => (e.kind == kind::OBJECT_ID)
            .then(|| e.value.try_into().ok().map(Value::ObjectId))
            .flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeated key reads as its first occurrence in one pass, as one field read alone does,
    /// also past the 64 fields the pass tracks in a bit set.
    #[test]
    fn a_row_reads_the_first_occurrence_like_a_single_field() {
        let mut w = raw::DocWriter::new();
        for (key, v) in [("a", 1i32), ("b", 2), ("a", 3), ("z", 4), ("z", 5)] {
            w.append(kind::INT32, key, &v.to_le_bytes());
        }
        let doc = w.finish();
        let mut fields: Vec<Field> = (0..70)
            .map(|i| Field::new(&format!("f{i}"), &format!("f{i}"), ValueType::Int64))
            .collect();
        fields[0] = Field::new("a", "a", ValueType::Int64);
        fields[69] = Field::new("z", "z", ValueType::Int64);
        let row = extract_row(&doc, &fields, |_| {});
        assert_eq!(row[0], Value::Int(1));
        assert_eq!(row[69], Value::Int(4));
        assert_eq!(fields[0].extract(&doc), Ok(Value::Int(1)));
        assert_eq!(fields[69].extract(&doc), Ok(Value::Int(4)));
        assert!(row[1..69].iter().all(|v| *v == Value::Null));
    }
}
