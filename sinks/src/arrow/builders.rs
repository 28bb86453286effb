//! Column builders: BSON elements appended straight into Arrow buffers, one walk per document.
//!
//! ```text
//!   document bytes ──raw::elements──▶ DocBuilder (match key → child, hint = next child)
//!                                        ├─▶ leaf builders (Int64Builder, StringBuilder, …)
//!                                        ├─▶ DocBuilder (nested document → Struct)
//!                                        └─▶ ListBuilder (array → List, offsets + child)
//!   a value that does not fit its builder ──▶ null in the column + (path, value) in the row's
//!                                             fallback document (Cx), counted as a miss
//! ```
//!
//! # Invariants
//!
//! * Every `append` adds exactly one slot (a value or a null) to its builder, whatever the input,
//!   so sibling columns always have equal lengths; a struct's children get one slot per struct
//!   slot (nulls under a null struct).
//! * A repeated key in one document keeps the first value; the later ones are misses.
//! * No value is dropped without being recorded in [`Cx`]: either it is in a column or it is in
//!   the row's fallback document under its dotted path.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float64Builder, Int8Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, ListArray, NullArray, StructArray, UnionArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType};
use changeflow_core::raw::{self, DocWriter, Element, kind};

use super::mapping::{
    ColumnType, binary_fields, db_pointer_fields, decimal_parts, regex_fields, rescale,
    timestamp_fields,
};

/// Where a value sits: its key and the path of its parent (`None`: the top level).
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    pub key: &'a [u8],
    pub parent: Option<&'a Path<'a>>,
}

impl Path<'_> {
    fn render(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.render(out);
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(self.key));
    }
}

/// Per-row context: the values that did not fit, kept as a BSON document `{path: value}`.
#[derive(Default)]
pub(crate) struct Cx {
    fallback: Option<DocWriter>,
    /// Values of this row that did not fit their column.
    pub misses: u64,
    /// Documents whose bytes broke off mid-walk.
    pub malformed: u64,
    path: String,
}

impl Cx {
    pub fn start_row(&mut self) {
        self.fallback = None;
        self.misses = 0;
    }

    fn miss(&mut self, e: &Element<'_>, path: &Path<'_>) {
        self.misses += 1;
        self.path.clear();
        path.render(&mut self.path);
        self.fallback
            .get_or_insert_with(DocWriter::new)
            .append(e.kind, &self.path, e.value);
    }

    /// The row's fallback document as canonical Extended JSON (`None`: every value fit).
    pub fn take_fallback(&mut self) -> Option<String> {
        let doc = self.fallback.take()?.finish();
        let mut json = String::new();
        let raw = bson::RawDocument::from_bytes(&doc).ok()?;
        changeflow_core::extjson::write_document(raw, true, &mut json).ok()?;
        Some(json)
    }
}

/// One value as canonical Extended JSON (the document `{"v": value}` without its wrapper).
pub(crate) fn ext_json(e: &Element<'_>) -> Option<String> {
    let mut w = DocWriter::with_capacity(e.value.len() + 8);
    w.append(e.kind, "v", e.value);
    let doc = w.finish();
    let raw = bson::RawDocument::from_bytes(&doc).ok()?;
    let mut json = String::new();
    changeflow_core::extjson::write_document(raw, true, &mut json).ok()?;
    json.strip_prefix("{\"v\":")
        .and_then(|s| s.strip_suffix('}'))
        .map(str::to_owned)
}

fn string_of(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value.get(4..value.len().checked_sub(1)?)?).ok()
}

fn fixed<const N: usize>(value: &[u8]) -> Option<[u8; N]> {
    value.try_into().ok()
}

/// A BSON binary's `(subtype, data)`.
fn binary_of(value: &[u8]) -> Option<(u8, &[u8])> {
    Some((*value.get(4)?, value.get(5..)?))
}

fn cstrings(value: &[u8]) -> Option<(&str, &str)> {
    let a = value.iter().position(|&b| b == 0)?;
    let rest = value.get(a + 1..)?;
    let b = rest.iter().position(|&b| b == 0)?;
    Some((
        std::str::from_utf8(&value[..a]).ok()?,
        std::str::from_utf8(&rest[..b]).ok()?,
    ))
}

fn db_pointer_of(value: &[u8]) -> Option<(&str, [u8; 12])> {
    let n = usize::try_from(i32::from_le_bytes(value.get(..4)?.try_into().ok()?)).ok()?;
    let ns = string_of(value.get(..4 + n)?)?;
    Some((ns, fixed(value.get(4 + n..)?)?))
}

/// Key equality without a `memcmp` call: keys are short.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Integers a double holds exactly.
const EXACT_IN_F64: i64 = 1 << 53;

/// The builder of one column.
pub(crate) enum Builder {
    Null(usize),
    Undefined(usize),
    Double(Float64Builder),
    String(StringBuilder),
    JavaScript(StringBuilder),
    Symbol(StringBuilder),
    ExtJson(StringBuilder),
    Document(Box<DocBuilder>),
    Array(Box<ListBuilder>),
    Binary(UInt8Builder, BinaryBuilder, NullBufferBuilder),
    Uuid(FixedSizeBinaryBuilder),
    LegacyUuid(FixedSizeBinaryBuilder),
    ObjectId(FixedSizeBinaryBuilder),
    DecimalBytes(FixedSizeBinaryBuilder),
    Bool(BooleanBuilder),
    DateTime(TimestampMillisecondBuilder),
    Regex(StringBuilder, StringBuilder, NullBufferBuilder),
    DbPointer(StringBuilder, FixedSizeBinaryBuilder, NullBufferBuilder),
    Int32(Int32Builder),
    Timestamp(UInt32Builder, UInt32Builder, NullBufferBuilder),
    Int64(Int64Builder),
    Decimal(Decimal128Builder, u8, i8),
    MinMaxKey(Int8Builder),
    Union(Box<UnionBuilder>),
}

impl Builder {
    /// An empty builder for `ty`.
    pub fn new(ty: &ColumnType) -> Builder {
        match ty {
            ColumnType::Null => Builder::Null(0),
            ColumnType::Undefined => Builder::Undefined(0),
            ColumnType::Double => Builder::Double(Float64Builder::new()),
            ColumnType::String => Builder::String(StringBuilder::new()),
            ColumnType::JavaScript => Builder::JavaScript(StringBuilder::new()),
            ColumnType::Symbol => Builder::Symbol(StringBuilder::new()),
            ColumnType::ExtJson => Builder::ExtJson(StringBuilder::new()),
            ColumnType::Document(fields) => Builder::Document(Box::new(DocBuilder::new(fields))),
            ColumnType::Array(element) => Builder::Array(Box::new(ListBuilder {
                offsets: vec![0],
                child: Builder::new(element),
                nulls: NullBufferBuilder::new(0),
            })),
            ColumnType::Binary => Builder::Binary(
                UInt8Builder::new(),
                BinaryBuilder::new(),
                NullBufferBuilder::new(0),
            ),
            ColumnType::Uuid => Builder::Uuid(FixedSizeBinaryBuilder::new(16)),
            ColumnType::LegacyUuid => Builder::LegacyUuid(FixedSizeBinaryBuilder::new(16)),
            ColumnType::ObjectId => Builder::ObjectId(FixedSizeBinaryBuilder::new(12)),
            ColumnType::DecimalBytes => Builder::DecimalBytes(FixedSizeBinaryBuilder::new(16)),
            ColumnType::Bool => Builder::Bool(BooleanBuilder::new()),
            ColumnType::DateTime => {
                Builder::DateTime(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            ColumnType::Regex => Builder::Regex(
                StringBuilder::new(),
                StringBuilder::new(),
                NullBufferBuilder::new(0),
            ),
            ColumnType::DbPointer => Builder::DbPointer(
                StringBuilder::new(),
                FixedSizeBinaryBuilder::new(12),
                NullBufferBuilder::new(0),
            ),
            ColumnType::Int32 => Builder::Int32(Int32Builder::new()),
            ColumnType::Timestamp => Builder::Timestamp(
                UInt32Builder::new(),
                UInt32Builder::new(),
                NullBufferBuilder::new(0),
            ),
            ColumnType::Int64 => Builder::Int64(Int64Builder::new()),
            ColumnType::Decimal { precision, scale } => {
                Builder::Decimal(Decimal128Builder::new(), *precision, *scale)
            }
            ColumnType::MinMaxKey => Builder::MinMaxKey(Int8Builder::new()),
            ColumnType::Union(members) => Builder::Union(Box::new(UnionBuilder {
                type_ids: Vec::new(),
                offsets: Vec::new(),
                members: members.iter().map(Builder::new).collect(),
            })),
        }
    }

    /// Slots appended so far.
    pub fn len(&self) -> usize {
        match self {
            Builder::Null(n) | Builder::Undefined(n) => *n,
            Builder::Double(b) => b.len(),
            Builder::String(b)
            | Builder::JavaScript(b)
            | Builder::Symbol(b)
            | Builder::ExtJson(b) => b.len(),
            Builder::Document(d) => d.len,
            Builder::Array(l) => l.nulls.len(),
            Builder::Binary(_, _, n)
            | Builder::Regex(_, _, n)
            | Builder::DbPointer(_, _, n)
            | Builder::Timestamp(_, _, n) => n.len(),
            Builder::Uuid(b)
            | Builder::LegacyUuid(b)
            | Builder::ObjectId(b)
            | Builder::DecimalBytes(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::DateTime(b) => b.len(),
            Builder::Int32(b) => b.len(),
            Builder::Int64(b) => b.len(),
            Builder::Decimal(b, _, _) => b.len(),
            Builder::MinMaxKey(b) => b.len(),
            Builder::Union(u) => u.type_ids.len(),
        }
    }

    /// Appends a null slot.
    pub fn append_null(&mut self) {
        match self {
            Builder::Null(n) | Builder::Undefined(n) => *n += 1,
            Builder::Double(b) => b.append_null(),
            Builder::String(b)
            | Builder::JavaScript(b)
            | Builder::Symbol(b)
            | Builder::ExtJson(b) => b.append_null(),
            Builder::Document(d) => d.append_null(),
            Builder::Array(l) => {
                l.offsets.push(l.offsets.last().copied().unwrap_or(0));
                l.nulls.append_null();
            }
            Builder::Binary(s, d, n) => {
                s.append_value(0);
                d.append_value([]);
                n.append_null();
            }
            Builder::Regex(a, b, n) => {
                a.append_value("");
                b.append_value("");
                n.append_null();
            }
            Builder::DbPointer(a, b, n) => {
                a.append_value("");
                b.append_null();
                n.append_null();
            }
            Builder::Timestamp(a, b, n) => {
                a.append_value(0);
                b.append_value(0);
                n.append_null();
            }
            Builder::Uuid(b)
            | Builder::LegacyUuid(b)
            | Builder::ObjectId(b)
            | Builder::DecimalBytes(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::DateTime(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Decimal(b, _, _) => b.append_null(),
            Builder::MinMaxKey(b) => b.append_null(),
            Builder::Union(u) => {
                // A dense union has no validity of its own: a null of its first member.
                if let Some(first) = u.members.first_mut() {
                    u.type_ids.push(0);
                    u.offsets
                        .push(i32::try_from(first.len()).unwrap_or(i32::MAX));
                    first.append_null();
                }
            }
        }
    }

    /// Appends `e` (one slot): its value if it fits, else a null and a miss recorded in `cx`.
    pub fn append(&mut self, e: &Element<'_>, path: &Path<'_>, cx: &mut Cx) {
        if e.kind == kind::NULL {
            return self.append_null();
        }
        if !self.try_append(e, path, cx) {
            self.append_null();
            cx.miss(e, path);
        }
    }

    /// Appends `e` if it fits this column; `false` (nothing appended) if it does not.
    fn try_append(&mut self, e: &Element<'_>, path: &Path<'_>, cx: &mut Cx) -> bool {
        let v = e.value;
        match (self, e.kind) {
            (Builder::Undefined(n), kind::UNDEFINED) => *n += 1,
            (Builder::Double(b), kind::DOUBLE) => match fixed::<8>(v) {
                Some(x) => b.append_value(f64::from_le_bytes(x)),
                None => return false,
            },
            (Builder::Double(b), kind::INT32 | kind::INT64) => match e.as_i64() {
                Some(x) if x.abs() <= EXACT_IN_F64 => b.append_value(x as f64),
                _ => return false,
            },
            (Builder::String(b), kind::STRING)
            | (Builder::JavaScript(b), kind::JAVASCRIPT)
            | (Builder::Symbol(b), kind::SYMBOL) => match string_of(v) {
                Some(s) => b.append_value(s),
                None => return false,
            },
            (Builder::ExtJson(b), _) => match ext_json(e) {
                Some(s) => b.append_value(s),
                None => return false,
            },
            (Builder::Document(d), kind::DOCUMENT) => d.append_fields(v, Some(path), cx),
            (Builder::Array(l), kind::ARRAY) => {
                for item in raw::elements(v) {
                    let Ok(item) = item else {
                        cx.malformed += 1;
                        break;
                    };
                    let item_path = Path {
                        key: item.key,
                        parent: Some(path),
                    };
                    l.child.append(&item, &item_path, cx);
                }
                let end = i32::try_from(l.child.len()).unwrap_or(i32::MAX);
                l.offsets.push(end);
                l.nulls.append_non_null();
            }
            (Builder::Binary(s, d, n), kind::BINARY) => match binary_of(v) {
                Some((subtype, data)) => {
                    s.append_value(subtype);
                    d.append_value(data);
                    n.append_non_null();
                }
                None => return false,
            },
            (Builder::Uuid(b), kind::BINARY) => match binary_of(v) {
                Some((4, data)) if data.len() == 16 => {
                    if b.append_value(data).is_err() {
                        return false;
                    }
                }
                _ => return false,
            },
            (Builder::LegacyUuid(b), kind::BINARY) => match binary_of(v) {
                Some((3, data)) if data.len() == 16 => {
                    if b.append_value(data).is_err() {
                        return false;
                    }
                }
                _ => return false,
            },
            (Builder::ObjectId(b), kind::OBJECT_ID)
            | (Builder::DecimalBytes(b), kind::DECIMAL128) => {
                if b.append_value(v).is_err() {
                    return false;
                }
            }
            (Builder::Bool(b), kind::BOOLEAN) => b.append_value(v.first().is_some_and(|x| *x != 0)),
            (Builder::DateTime(b), kind::DATETIME) => match fixed::<8>(v) {
                Some(x) => b.append_value(i64::from_le_bytes(x)),
                None => return false,
            },
            (Builder::Regex(a, b, n), kind::REGEX) => match cstrings(v) {
                Some((pattern, options)) => {
                    a.append_value(pattern);
                    b.append_value(options);
                    n.append_non_null();
                }
                None => return false,
            },
            (Builder::DbPointer(a, b, n), kind::DB_POINTER) => match db_pointer_of(v) {
                Some((ns, id)) => {
                    a.append_value(ns);
                    if b.append_value(id).is_err() {
                        b.append_null();
                    }
                    n.append_non_null();
                }
                None => return false,
            },
            (Builder::Int32(b), kind::INT32) => match fixed::<4>(v) {
                Some(x) => b.append_value(i32::from_le_bytes(x)),
                None => return false,
            },
            (Builder::Int64(b), kind::INT32 | kind::INT64) => match e.as_i64() {
                Some(x) => b.append_value(x),
                None => return false,
            },
            (Builder::Timestamp(a, b, n), kind::TIMESTAMP) => match e.as_timestamp() {
                Some((t, i)) => {
                    a.append_value(t);
                    b.append_value(i);
                    n.append_non_null();
                }
                None => return false,
            },
            (Builder::Decimal(b, precision, scale), kind::DECIMAL128) => {
                match fixed::<16>(v)
                    .and_then(|bytes| decimal_parts(&bytes))
                    .and_then(|(c, s)| rescale(c, s, *precision, *scale))
                {
                    Some(x) => b.append_value(x),
                    None => return false,
                }
            }
            (Builder::MinMaxKey(b), kind::MIN_KEY) => b.append_value(-1),
            (Builder::MinMaxKey(b), kind::MAX_KEY) => b.append_value(1),
            (Builder::Union(u), _) => {
                for (id, member) in u.members.iter_mut().enumerate() {
                    let at = member.len();
                    if member.try_append(e, path, cx) {
                        u.type_ids.push(id as i8);
                        u.offsets.push(i32::try_from(at).unwrap_or(i32::MAX));
                        return true;
                    }
                }
                return false;
            }
            _ => return false,
        }
        true
    }

    /// The finished array (the builder is left empty, of the same type).
    pub fn finish(&mut self, ty: &ColumnType) -> Result<ArrayRef, ArrowError> {
        Ok(match (self, ty) {
            (Builder::Null(n) | Builder::Undefined(n), _) => {
                Arc::new(NullArray::new(std::mem::take(n)))
            }
            (Builder::Double(b), _) => Arc::new(b.finish()),
            (
                Builder::String(b)
                | Builder::JavaScript(b)
                | Builder::Symbol(b)
                | Builder::ExtJson(b),
                _,
            ) => Arc::new(b.finish()),
            (Builder::Document(d), ColumnType::Document(fields)) => Arc::new(d.finish(fields)?),
            (Builder::Array(l), ColumnType::Array(element)) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let values = l.child.finish(element)?;
                Arc::new(ListArray::try_new(
                    Arc::new(element.field("item")),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    values,
                    l.nulls.finish(),
                )?)
            }
            (Builder::Binary(s, d, n), _) => Arc::new(StructArray::try_new(
                binary_fields(),
                vec![Arc::new(s.finish()), Arc::new(d.finish())],
                n.finish(),
            )?),
            (Builder::Regex(a, b, n), _) => Arc::new(StructArray::try_new(
                regex_fields(),
                vec![Arc::new(a.finish()), Arc::new(b.finish())],
                n.finish(),
            )?),
            (Builder::DbPointer(a, b, n), _) => Arc::new(StructArray::try_new(
                db_pointer_fields(),
                vec![Arc::new(a.finish()), Arc::new(b.finish())],
                n.finish(),
            )?),
            (Builder::Timestamp(a, b, n), _) => Arc::new(StructArray::try_new(
                timestamp_fields(),
                vec![Arc::new(a.finish()), Arc::new(b.finish())],
                n.finish(),
            )?),
            (
                Builder::Uuid(b)
                | Builder::LegacyUuid(b)
                | Builder::ObjectId(b)
                | Builder::DecimalBytes(b),
                _,
            ) => Arc::new(b.finish()),
            (Builder::Bool(b), _) => Arc::new(b.finish()),
            (Builder::DateTime(b), _) => Arc::new(b.finish()),
            (Builder::Int32(b), _) => Arc::new(b.finish()),
            (Builder::Int64(b), _) => Arc::new(b.finish()),
            (Builder::Decimal(b, precision, scale), _) => {
                Arc::new(b.finish().with_precision_and_scale(*precision, *scale)?)
            }
            (Builder::MinMaxKey(b), _) => Arc::new(b.finish()),
            (Builder::Union(u), ColumnType::Union(kinds)) => {
                let DataType::Union(fields, _) = ty.data_type() else {
                    return Err(ArrowError::SchemaError("not a union".into()));
                };
                let children = u
                    .members
                    .iter_mut()
                    .zip(kinds)
                    .map(|(b, kind)| b.finish(kind))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(UnionArray::try_new(
                    fields,
                    ScalarBuffer::from(std::mem::take(&mut u.type_ids)),
                    Some(ScalarBuffer::from(std::mem::take(&mut u.offsets))),
                    children,
                )?)
            }
            (_, other) => {
                return Err(ArrowError::SchemaError(format!(
                    "builder does not match column type {other:?}"
                )));
            }
        })
    }
}

/// The builder of a dense union column: which member and where, per slot.
pub(crate) struct UnionBuilder {
    type_ids: Vec<i8>,
    offsets: Vec<i32>,
    members: Vec<Builder>,
}

/// The builder of an array column.
pub(crate) struct ListBuilder {
    offsets: Vec<i32>,
    child: Builder,
    nulls: NullBufferBuilder,
}

/// The builder of a document (a struct column, or a whole record batch at the top level).
pub(crate) struct DocBuilder {
    keys: Vec<Box<[u8]>>,
    pub children: Vec<Builder>,
    nulls: NullBufferBuilder,
    pub len: usize,
    /// Fields not in `keys` are skipped instead of being misses (a declared projection).
    pub ignore_unknown: bool,
}

impl DocBuilder {
    /// A builder for a document with these fields.
    pub fn new(fields: &[(String, ColumnType)]) -> DocBuilder {
        DocBuilder {
            keys: fields
                .iter()
                .map(|(k, _)| k.as_bytes().to_vec().into_boxed_slice())
                .collect(),
            children: fields.iter().map(|(_, ty)| Builder::new(ty)).collect(),
            nulls: NullBufferBuilder::new(0),
            len: 0,
            ignore_unknown: false,
        }
    }

    /// A builder whose child `i` is matched by `keys[i]` (a key with a NUL byte never matches).
    pub fn with_keys(keys: Vec<Vec<u8>>, types: &[ColumnType]) -> DocBuilder {
        DocBuilder {
            keys: keys.into_iter().map(Vec::into_boxed_slice).collect(),
            children: types.iter().map(Builder::new).collect(),
            nulls: NullBufferBuilder::new(0),
            len: 0,
            ignore_unknown: true,
        }
    }

    fn append_null(&mut self) {
        for child in &mut self.children {
            child.append_null();
        }
        self.nulls.append_null();
        self.len += 1;
    }

    /// Appends one slot from the document bytes `doc`; fields missing from it are null.
    pub fn append_fields(&mut self, doc: &[u8], parent: Option<&Path<'_>>, cx: &mut Cx) {
        let row = self.len;
        let mut hint = 0;
        let mut matched = 0;
        for e in raw::elements(doc) {
            let Ok(e) = e else {
                cx.malformed += 1;
                break;
            };
            let path = Path { key: e.key, parent };
            let index = if self.keys.get(hint).is_some_and(|k| same_key(k, e.key)) {
                Some(hint)
            } else {
                self.keys.iter().position(|k| same_key(k, e.key))
            };
            match index {
                Some(i) if self.children[i].len() == row => {
                    self.children[i].append(&e, &path, cx);
                    hint = i + 1;
                    matched += 1;
                }
                None if self.ignore_unknown => {}
                _ => cx.miss(&e, &path),
            }
        }
        if matched < self.children.len() {
            for child in &mut self.children {
                if child.len() == row {
                    child.append_null();
                }
            }
        }
        self.nulls.append_non_null();
        self.len += 1;
    }

    /// The children's arrays (the builder is left empty).
    pub fn finish_children(&mut self, types: &[&ColumnType]) -> Result<Vec<ArrayRef>, ArrowError> {
        self.len = 0;
        self.nulls = NullBufferBuilder::new(0);
        self.children
            .iter_mut()
            .zip(types)
            .map(|(b, ty)| b.finish(ty))
            .collect()
    }

    fn finish(&mut self, fields: &[(String, ColumnType)]) -> Result<StructArray, ArrowError> {
        let nulls = self.nulls.finish();
        let types: Vec<&ColumnType> = fields.iter().map(|(_, ty)| ty).collect();
        let arrow_fields = match ColumnType::Document(fields.to_vec()).data_type() {
            DataType::Struct(f) => f,
            _ => return Err(ArrowError::SchemaError("not a struct".into())),
        };
        let len = self.len;
        let children = self.finish_children(&types)?;
        if children.is_empty() {
            return Ok(StructArray::new_empty_fields(len, nulls));
        }
        StructArray::try_new(arrow_fields, children, nulls)
    }
}
