//! A minimal walker and writer for BSON bytes.
//!
//! changeflow keeps every document as BSON bytes (see [`Document`](crate::Document)) and reads the
//! few fields a view needs in one pass over a document's elements. This module is that pass: an
//! iterator over the elements of a BSON document ([`elements`]) and the few writing helpers that
//! the document-state operator uses to build updated versions ([`DocWriter`]).
//!
//! # Invariants
//!
//! * [`elements`] never panics and never reads out of bounds: every length is checked, and a
//!   malformed document yields one [`RawError`] and then stops.
//! * Values are returned as the exact byte slice of the encoded value (without type byte and
//!   key), so copying an element into a new document is a `memcpy`.
//!
//! ```
//! use changeflow_core::raw::{elements, DocWriter, kind};
//! let mut w = DocWriter::new();
//! w.append(kind::INT32, "a", &7i32.to_le_bytes());
//! w.append_str("b", "x");
//! let bytes = w.finish();
//! let keys: Vec<_> = elements(&bytes).map(|e| e.unwrap().key).collect();
//! assert_eq!(keys, [b"a", b"b"]);
//! ```

/// BSON element type bytes.
pub mod kind {
    /// 64-bit binary floating point.
    pub const DOUBLE: u8 = 0x01;
    /// UTF-8 string.
    pub const STRING: u8 = 0x02;
    /// Embedded document.
    pub const DOCUMENT: u8 = 0x03;
    /// Array (a document with keys "0", "1", ...).
    pub const ARRAY: u8 = 0x04;
    /// Binary data with a subtype.
    pub const BINARY: u8 = 0x05;
    /// Undefined (deprecated).
    pub const UNDEFINED: u8 = 0x06;
    /// ObjectId (12 bytes).
    pub const OBJECT_ID: u8 = 0x07;
    /// Boolean.
    pub const BOOLEAN: u8 = 0x08;
    /// UTC datetime, milliseconds since the epoch.
    pub const DATETIME: u8 = 0x09;
    /// Null.
    pub const NULL: u8 = 0x0A;
    /// Regular expression (pattern and options cstrings).
    pub const REGEX: u8 = 0x0B;
    /// DBPointer (deprecated).
    pub const DB_POINTER: u8 = 0x0C;
    /// JavaScript code.
    pub const JAVASCRIPT: u8 = 0x0D;
    /// Symbol (deprecated).
    pub const SYMBOL: u8 = 0x0E;
    /// JavaScript code with scope.
    pub const JAVASCRIPT_WITH_SCOPE: u8 = 0x0F;
    /// 32-bit integer.
    pub const INT32: u8 = 0x10;
    /// MongoDB internal timestamp `(t, i)`.
    pub const TIMESTAMP: u8 = 0x11;
    /// 64-bit integer.
    pub const INT64: u8 = 0x12;
    /// 128-bit decimal floating point.
    pub const DECIMAL128: u8 = 0x13;
    /// Min key.
    pub const MIN_KEY: u8 = 0xFF;
    /// Max key.
    pub const MAX_KEY: u8 = 0x7F;
}

/// Why bytes are not a well-formed BSON document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed BSON at byte {offset}: {reason}")]
pub struct RawError {
    /// Offset of the problem inside the walked document.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// One element of a BSON document: its type byte, key and encoded value bytes.
///
/// The key is kept as bytes: comparing it with a known field name needs no UTF-8 check, which
/// is most of what the hot paths do. [`validate`] checks keys; [`Element::key_str`] reads one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    /// The BSON type byte (see [`kind`]).
    pub kind: u8,
    /// The element's key, as bytes (UTF-8 in any valid document).
    pub key: &'a [u8],
    /// The encoded value, without type byte and key.
    pub value: &'a [u8],
}

impl<'a> Element<'a> {
    /// The key as a string (`None` if it is not UTF-8, which [`validate`] rejects).
    pub fn key_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.key).ok()
    }
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&'a str> {
        (self.kind == kind::STRING || self.kind == kind::SYMBOL)
            .then(|| string_value(self.value))
            .flatten()
    }
    /// The value as an embedded document or array's bytes, if it is one.
    pub fn as_document(&self) -> Option<&'a [u8]> {
        (self.kind == kind::DOCUMENT || self.kind == kind::ARRAY).then_some(self.value)
    }
    /// The value as an `i64` if it is an int32 or int64.
    pub fn as_i64(&self) -> Option<i64> {
        match self.kind {
            kind::INT32 => Some(i32::from_le_bytes(self.value.try_into().ok()?) as i64),
            kind::INT64 => Some(i64::from_le_bytes(self.value.try_into().ok()?)),
            _ => None,
        }
    }
    /// The value as an `f64` if it is a double, int32 or int64.
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            kind::DOUBLE => Some(f64::from_le_bytes(self.value.try_into().ok()?)),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The value as a BSON `Timestamp` `(t, i)`.
    pub fn as_timestamp(&self) -> Option<(u32, u32)> {
        if self.kind != kind::TIMESTAMP {
            return None;
        }
        let packed = u64::from_le_bytes(self.value.try_into().ok()?);
        Some(((packed >> 32) as u32, packed as u32))
    }
}

fn string_value(value: &[u8]) -> Option<&str> {
    let body = value.get(4..value.len().checked_sub(1)?)?;
    std::str::from_utf8(body).ok()
}

/// Iterates over the elements of the BSON document `doc`.
///
/// ```
/// use changeflow_core::raw::elements;
/// let doc = bson::rawdoc! { "x": 1, "y": "two" };
/// let mut it = elements(doc.as_bytes());
/// assert_eq!(it.next().unwrap().unwrap().as_i64(), Some(1));
/// assert_eq!(it.next().unwrap().unwrap().as_str(), Some("two"));
/// assert!(it.next().is_none());
/// ```
pub fn elements(doc: &[u8]) -> Elements<'_> {
    let framing = match doc_len(doc) {
        Ok(len) if len == doc.len() && doc[len - 1] == 0 => None,
        Ok(_) => Some(RawError {
            offset: 0,
            reason: "length prefix does not match the data",
        }),
        Err(e) => Some(e),
    };
    Elements {
        doc,
        pos: 4,
        failed: false,
        framing,
    }
}

fn doc_len(doc: &[u8]) -> Result<usize, RawError> {
    let prefix: [u8; 4] = doc
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(RawError {
            offset: 0,
            reason: "shorter than a length prefix",
        })?;
    let len = i32::from_le_bytes(prefix);
    if len < 5 {
        return Err(RawError {
            offset: 0,
            reason: "length prefix below 5",
        });
    }
    Ok(len as usize)
}

/// The iterator returned by [`elements`].
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    doc: &'a [u8],
    pos: usize,
    failed: bool,
    /// A broken length prefix, reported by the first `next`.
    framing: Option<RawError>,
}

impl<'a> Elements<'a> {
    fn error(
        &mut self,
        offset: usize,
        reason: &'static str,
    ) -> Option<Result<Element<'a>, RawError>> {
        self.failed = true;
        Some(Err(RawError { offset, reason }))
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Element<'a>, RawError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.framing.take() {
            return self.error(e.offset, e.reason);
        }
        let doc = self.doc;
        let start = self.pos;
        let kind = *doc.get(start)?;
        if kind == 0 {
            if start + 1 != doc.len() {
                return self.error(start, "terminator before the end of the document");
            }
            self.failed = true;
            return None;
        }
        let key_start = start + 1;
        // The body ends before the document's terminating NUL.
        let body = &doc[..doc.len() - 1];
        let Some(nul) = body
            .get(key_start..)
            .and_then(|rest| rest.iter().position(|&b| b == 0))
        else {
            return self.error(key_start, "key is not NUL-terminated");
        };
        let key = &body[key_start..key_start + nul];
        let value_start = key_start + nul + 1;
        let Some(size) = body
            .get(value_start..)
            .and_then(|rest| value_size(kind, rest))
        else {
            return self.error(start, "value is truncated or of unknown type");
        };
        let value_end = value_start + size;
        self.pos = value_end;
        Some(Ok(Element {
            kind,
            key,
            value: &doc[value_start..value_end],
        }))
    }
}

fn read_i32(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// The encoded size of a value of type `kind` at the start of `rest`, if it fits in `rest`.
fn value_size(kind: u8, rest: &[u8]) -> Option<usize> {
    let size = match kind {
        kind::DOUBLE | kind::DATETIME | kind::TIMESTAMP | kind::INT64 => 8,
        kind::STRING | kind::JAVASCRIPT | kind::SYMBOL => {
            let n = read_i32(rest)?;
            if n < 1 || rest.get(4 + n as usize - 1) != Some(&0) {
                return None;
            }
            4 + n as usize
        }
        kind::DOCUMENT | kind::ARRAY | kind::JAVASCRIPT_WITH_SCOPE => {
            let n = read_i32(rest)?;
            if n < 5 || rest.get(n as usize - 1) != Some(&0) {
                return None;
            }
            n as usize
        }
        kind::BINARY => 4 + 1 + usize::try_from(read_i32(rest)?).ok()?,
        kind::UNDEFINED | kind::NULL | kind::MIN_KEY | kind::MAX_KEY => 0,
        kind::OBJECT_ID => 12,
        kind::BOOLEAN => 1,
        kind::REGEX => {
            let a = rest.iter().position(|&b| b == 0)?;
            let b = rest[a + 1..].iter().position(|&b| b == 0)?;
            a + 1 + b + 1
        }
        kind::DB_POINTER => {
            let n = read_i32(rest)?;
            if n < 1 {
                return None;
            }
            4 + n as usize + 12
        }
        kind::INT32 => 4,
        kind::DECIMAL128 => 16,
        _ => return None,
    };
    (size <= rest.len()).then_some(size)
}

/// Looks up several top-level fields of `doc` in one pass: calls `found(i, element)` for the
/// first element whose key is `keys(i)`, for each `i < n` (`None`: not looked for). The walk
/// stops once every key was found, at a malformed element (the rest reads as missing), or when
/// `found` returns `false`; the result is `false` only in that last case.
///
/// ```
/// use changeflow_core::raw::first_occurrences;
/// let doc = bson::rawdoc! { "a": 1, "b": 2, "a": 3 };
/// let keys = [Some("a"), None, Some("b"), Some("c")];
/// let mut seen = Vec::new();
/// first_occurrences(doc.as_bytes(), keys.len(), |i| keys[i].map(str::as_bytes), |i, e| {
///     seen.push((i, e.as_i64()));
///     true
/// });
/// assert_eq!(seen, [(0, Some(1)), (2, Some(2))]);
/// ```
pub fn first_occurrences<'a, 'k>(
    doc: &'a [u8],
    n: usize,
    keys: impl Fn(usize) -> Option<&'k [u8]>,
    mut found: impl FnMut(usize, Element<'a>) -> bool,
) -> bool {
    // Bit i: key i is still looked for; past 64 keys, one flag each (allocated only then).
    let mut wanted: u64 = (0..n.min(64))
        .filter(|&i| keys(i).is_some())
        .fold(0, |bits, i| bits | 1 << i);
    let mut wanted_beyond: Vec<bool> = (64..n).map(|i| keys(i).is_some()).collect();
    for element in elements(doc) {
        if wanted == 0 && !wanted_beyond.contains(&true) {
            break;
        }
        let Ok(element) = element else { break };
        for i in 0..n {
            let still = match i.checked_sub(64) {
                None => wanted & (1 << i) != 0,
                Some(j) => wanted_beyond[j],
            };
            if !still || keys(i) != Some(element.key) {
                continue;
            }
            match i.checked_sub(64) {
                None => wanted &= !(1 << i),
                Some(j) => wanted_beyond[j] = false,
            }
            if !found(i, element) {
                return false;
            }
        }
    }
    true
}

/// Looks up a top-level field of `doc` by key (a linear scan).
///
/// ```
/// use changeflow_core::raw::get;
/// let doc = bson::rawdoc! { "a": 1, "b": 2.5 };
/// assert_eq!(get(doc.as_bytes(), "b").unwrap().and_then(|e| e.as_f64()), Some(2.5));
/// assert!(get(doc.as_bytes(), "c").unwrap().is_none());
/// ```
pub fn get<'a>(doc: &'a [u8], key: &str) -> Result<Option<Element<'a>>, RawError> {
    for element in elements(doc) {
        let element = element?;
        if element.key == key.as_bytes() {
            return Ok(Some(element));
        }
    }
    Ok(None)
}

/// Checks that `doc` is a well-formed BSON document, recursively.
///
/// ```
/// use changeflow_core::raw::validate;
/// let doc = bson::rawdoc! { "a": { "b": [1, 2] } };
/// assert!(validate(doc.as_bytes()).is_ok());
/// assert!(validate(&doc.as_bytes()[..6]).is_err());
/// ```
pub fn validate(doc: &[u8]) -> Result<(), RawError> {
    for element in elements(doc) {
        let element = element?;
        if element.key_str().is_none() {
            return Err(RawError {
                offset: 0,
                reason: "key is not UTF-8",
            });
        }
        match element.kind {
            kind::DOCUMENT | kind::ARRAY => validate(element.value)?,
            kind::STRING | kind::JAVASCRIPT | kind::SYMBOL
                if string_value(element.value).is_none() =>
            {
                return Err(RawError {
                    offset: 0,
                    reason: "string is not UTF-8",
                });
            }
            kind::JAVASCRIPT_WITH_SCOPE => {
                let code_len = element
                    .value
                    .get(4..)
                    .and_then(read_i32)
                    .filter(|n| *n >= 1)
                    .map(|n| n as usize);
                let scope_start = code_len.map(|n| 8 + n);
                let ok = scope_start.is_some_and(|s| {
                    element.value.get(4..s).and_then(string_value).is_some()
                        && element
                            .value
                            .get(s..)
                            .is_some_and(|scope| validate(scope).is_ok())
                });
                if !ok {
                    return Err(RawError {
                        offset: 0,
                        reason: "malformed code with scope",
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Builds one BSON document by appending elements.
///
/// ```
/// use changeflow_core::raw::{DocWriter, kind};
/// let mut inner = DocWriter::new();
/// inner.append(kind::DOUBLE, "q", &1.5f64.to_le_bytes());
/// let inner = inner.finish();
/// let mut w = DocWriter::new();
/// w.append(kind::DOCUMENT, "a", &inner);
/// let doc = bson::RawDocument::from_bytes(&w.finish()).unwrap().to_owned();
/// assert_eq!(doc.get_document("a").unwrap().get_f64("q").unwrap(), 1.5);
/// ```
#[derive(Debug, Clone)]
pub struct DocWriter {
    buf: Vec<u8>,
}

impl Default for DocWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl DocWriter {
    /// An empty document under construction.
    pub fn new() -> Self {
        Self::with_capacity(64)
    }
    /// An empty document with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(5));
        buf.extend_from_slice(&[0, 0, 0, 0]);
        DocWriter { buf }
    }
    /// Appends an element with type byte `kind`, key `key` and encoded value `value`.
    pub fn append(&mut self, kind: u8, key: &str, value: &[u8]) {
        self.buf.push(kind);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
        self.buf.extend_from_slice(value);
    }
    /// Appends a string element.
    pub fn append_str(&mut self, key: &str, value: &str) {
        self.buf.push(kind::STRING);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
        self.buf
            .extend_from_slice(&(value.len() as i32 + 1).to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
    }
    /// Finishes the document as a [`Document`](crate::Document) (one allocation of its exact
    /// size) and empties the writer for the next one, keeping its buffer.
    ///
    /// ```
    /// use changeflow_core::raw::DocWriter;
    /// let mut w = DocWriter::new();
    /// w.append_str("a", "x");
    /// let first = w.take_document();
    /// w.append_str("b", "y");
    /// let second = w.take_document();
    /// assert_eq!(first.to_relaxed_json(), r#"{"a":"x"}"#);
    /// assert_eq!(second.to_relaxed_json(), r#"{"b":"y"}"#);
    /// ```
    pub fn take_document(&mut self) -> crate::Document {
        self.buf.push(0);
        let len = self.buf.len() as i32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        let doc = crate::Document::from_trusted(self.buf.as_slice());
        self.buf.truncate(4);
        doc
    }
    /// Finishes the document and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(0);
        let len = self.buf.len() as i32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_every_type_like_the_bson_crate() {
        let doc = bson::doc! {
            "d": 1.5, "s": "str", "o": { "x": 1 }, "a": [1, "two"], "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "u": bson::Bson::Undefined, "oid": bson::oid::ObjectId::from_bytes([7; 12]), "b": true,
            "dt": bson::DateTime::from_millis(5), "n": bson::Bson::Null,
            "re": bson::Regex { pattern: "a+".try_into().unwrap(), options: "i".try_into().unwrap() },
            "js": bson::Bson::JavaScriptCode("f()".into()), "sym": bson::Bson::Symbol("s".into()),
            "i32": 3i32, "ts": bson::Timestamp { time: 1, increment: 2 }, "i64": 4i64,
            "dec": bson::Bson::Decimal128(bson::Decimal128::from_bytes([1; 16])),
            "min": bson::Bson::MinKey, "max": bson::Bson::MaxKey,
        };
        let bytes = doc.to_vec().unwrap();
        let ours: Vec<(u8, String)> = elements(&bytes)
            .map(|e| e.map(|e| (e.kind, e.key_str().unwrap().to_owned())))
            .collect::<Result<_, _>>()
            .unwrap();
        let theirs: Vec<(u8, String)> = bson::RawDocument::from_bytes(&bytes)
            .unwrap()
            .iter_elements()
            .map(|e| {
                e.map(|e| (e.element_type() as u8, e.key().as_str().to_owned()))
                    .unwrap()
            })
            .collect();
        assert_eq!(ours, theirs);
        validate(&bytes).unwrap();
        assert_eq!(
            get(&bytes, "ts").unwrap().unwrap().as_timestamp(),
            Some((1, 2))
        );
    }

    #[test]
    fn truncated_documents_error_without_panicking() {
        let bytes = bson::doc! { "a": "hello", "b": { "c": [1, 2, 3] } }
            .to_vec()
            .unwrap();
        for cut in 0..bytes.len() {
            let mut broken = bytes[..cut].to_vec();
            if broken.len() >= 4 {
                let len = broken.len() as i32;
                broken[..4].copy_from_slice(&len.to_le_bytes());
            }
            assert!(validate(&broken).is_err(), "cut at {cut} accepted");
        }
    }
}
