//! MongoDB Extended JSON (v2, relaxed and canonical) straight to BSON bytes, and back.
//!
//! [`transcode`] streams over the JSON text with `serde_json`'s parser and writes BSON as it
//! goes: no `serde_json::Value`, no `bson::Bson` on the way. A hand-written scanner ([`scan`])
//! takes the common shapes first, and declines anything it does not read exactly as the serde
//! path does. Its output is byte for byte what the
//! `bson` crate's own route gives (`serde_json::from_slice::<Value>`, then
//! `bson::Document::try_from(map)`, then `to_vec()`), and it accepts and rejects the same texts.
//! Field order is always the input's; bson's route keeps it only with `serde_json`'s
//! `preserve_order` feature, and otherwise sorts every object's keys.
//!
//! * plain JSON: strings, booleans, `null`, objects, arrays; an integer that fits `i32` becomes an
//!   int32, else one that fits `i64` an int64, anything else (a fraction, an exponent, `-0`, an
//!   integer above `i64::MAX`) a double;
//! * the wrappers `$oid`, `$symbol`, `$numberInt`, `$numberLong`, `$numberDouble`,
//!   `$numberDecimal`, `$binary` (v2 form), `$uuid`, `$code` (with or without `$scope`),
//!   `$timestamp`, `$regularExpression`, `$dbPointer`, `$date` (ISO-8601 string,
//!   `{"$numberLong": …}` or a bare integer), `$minKey`, `$maxKey` and `$undefined`.
//!
//! The rules follow `bson` 3.1 exactly, including where they surprise:
//!
//! * an object is a wrapper when it contains one of the wrapper keys *anywhere* (not only
//!   first), and then it must hold nothing else (only `$code` admits `$scope`); an object that
//!   mixes a wrapper key with other keys is an error, not a document. Keys that are not wrapper
//!   keys (`$set`, `$ref`/`$id` DBRefs, `$scope` alone, the legacy `$regex`/`$options` and
//!   `$type`) make ordinary documents;
//! * the legacy `{"$binary": "<base64>", "$type": "<hex>"}` is rejected (bson 3.1 only reads the
//!   v2 form);
//! * the top-level object, and the `$scope` of code-with-scope, are documents as they stand: their
//!   own keys are never read as wrappers (their values are);
//! * a repeated key keeps the position of its first occurrence and the value of its last one;
//! * the body of a wrapper may also be given as an array of its fields in order
//!   (`{"$timestamp": [1, 2]}`), as serde allows for structs;
//! * `{"$code": "…", "$scope": null}` is plain code; `$date` strings follow RFC 3339 as the `time`
//!   crate reads it (any separator byte between date and time, `Z`/`z` or `±hh:mm`, any number of
//!   fractional digits truncated to milliseconds, leap seconds only at the end of a month UTC).
//!
//! The one deliberate difference: a document larger than MongoDB's 16 MiB limit is refused
//! ([`ExtJsonError::TooLarge`]). Errors come out as bson's route would meet them: a syntax error
//! anywhere in the text wins over a bad wrapper, and a value replaced by a repeated key is never
//! checked (the error path re-reads the text whole to get both right).
//!
//! [`write_document`] goes the other way, for test data and changelogs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use base64::Engine as _;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a line of Extended JSON could not become BSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtJsonError {
    /// Not JSON at all (message from the parser, with line/column inside the text).
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// The top-level value is not an object.
    #[error("expected a JSON object at the top level")]
    NotADocument,
    /// A `$`-wrapper that is malformed, e.g. `{"$oid": "xyz"}` or `{"$numberLong": "1.5"}`; names
    /// the wrapper and says what is wrong.
    #[error("bad Extended JSON {wrapper}: {reason}")]
    BadWrapper {
        /// The wrapper key, e.g. `$oid`.
        wrapper: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key contains a NUL byte, which BSON cannot store.
    #[error("key contains a NUL byte: {0:?}")]
    NulInKey(String),
    /// The document is larger than BSON's limit (MongoDB's 16 MiB, 16 777 216 bytes).
    #[error("document exceeds the BSON size limit")]
    TooLarge,
}

/// MongoDB's maximum BSON document size.
const MAX_DOCUMENT_SIZE: usize = 16 * 1024 * 1024;

/// Above this many keys, a document finds repeated keys with a hash map instead of a scan.
const INDEX_THRESHOLD: usize = 32;

use crate::calendar::{civil_from_days, days_from_civil};
use crate::raw::kind as ty;

mod scan;

/// Transcodes one Extended JSON document (an object) into BSON bytes appended to `out`
/// (the caller clears `out` first if it wants only this document).
///
/// On error `out` is left as it was. See the [module docs](self) for the accepted forms.
///
/// ```
/// use changeflow_core::extjson::transcode;
///
/// let mut out = Vec::new();
/// transcode(br#"{"a": 1}"#, &mut out)?;
/// assert_eq!(out, [12, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0, 0, 0]);
///
/// out.clear();
/// transcode(
///     br#"{"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "at": {"$date": "2024-01-01T00:00:00Z"}}"#,
///     &mut out,
/// )?;
/// let doc = bson::RawDocument::from_bytes(&out)?;
/// assert_eq!(doc.get_datetime("at")?.timestamp_millis(), 1_704_067_200_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn transcode(json: &[u8], out: &mut Vec<u8>) -> Result<(), ExtJsonError> {
    let base = out.len();
    let mut ctx = Ctx {
        out: std::mem::take(out),
        err: None,
    };
    let result = run(json, &mut ctx);
    *out = ctx.out;
    if result.is_err() {
        out.truncate(base);
    }
    result
}

fn run(json: &[u8], ctx: &mut Ctx) -> Result<(), ExtJsonError> {
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<Skip>(json) {
            Ok(Skip) => ExtJsonError::NotADocument,
            Err(e) => ExtJsonError::Syntax(e.to_string()),
        });
    }
    let start = ctx.out.len();
    // Text that is UTF-8 as a whole (every valid line) is read as a `str`, so the parser does
    // not check each string and key again; any other text is a syntax error, which the
    // error path below reports as bson's route does.
    let Ok(text) = std::str::from_utf8(json) else {
        return run_deduplicated(json, ctx, start);
    };
    // The common shapes go through the hand-written scanner; it declines the rest.
    if scan::transcode(text, ctx).is_some() {
        return Ok(());
    }
    ctx.out.truncate(start);
    run_serde(json, text, ctx, start)
}

/// The serde path (the reference for [`scan`]), on text that is UTF-8.
fn run_serde(json: &[u8], text: &str, ctx: &mut Ctx, start: usize) -> Result<(), ExtJsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = TopSeed { ctx: &mut *ctx }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match parsed {
        Ok(()) if ctx.out.len() - start > MAX_DOCUMENT_SIZE => Err(ExtJsonError::TooLarge),
        Ok(()) => Ok(()),
        Err(e) => match ctx.err.take() {
            None => Err(ExtJsonError::Syntax(e.to_string())),
            Some(_) => {
                ctx.out.truncate(start);
                run_deduplicated(json, ctx, start)
            }
        },
    }
}

/// The error path. bson parses the whole text first, so a syntax error anywhere wins, and a
/// repeated key drops its earlier values before they are converted, so a bad wrapper there is
/// no error. Redo the work that way: read the text into a [`Small`] tree, keep one value per
/// key, and replay the tree.
#[cold]
fn run_deduplicated(json: &[u8], ctx: &mut Ctx, start: usize) -> Result<(), ExtJsonError> {
    let mut tree: Small<'_> =
        serde_json::from_slice(json).map_err(|e| ExtJsonError::Syntax(e.to_string()))?;
    tree.deduplicate();
    match (TopSeed { ctx: &mut *ctx }).deserialize(SmallRef(&tree)) {
        Ok(()) if ctx.out.len() - start > MAX_DOCUMENT_SIZE => Err(ExtJsonError::TooLarge),
        Ok(()) => Ok(()),
        Err(e) => Err(ctx
            .err
            .take()
            .unwrap_or_else(|| ExtJsonError::Syntax(e.to_string()))),
    }
}

/// The transcoder's state: the output buffer, and the error that stopped it (serde's error type
/// cannot carry ours).
struct Ctx {
    out: Vec<u8>,
    err: Option<ExtJsonError>,
}

impl Ctx {
    #[cold]
    fn fail<E: de::Error>(&mut self, err: ExtJsonError) -> E {
        let e = E::custom(&err);
        if self.err.is_none() {
            self.err = Some(err);
        }
        e
    }

    #[cold]
    fn bad<E: de::Error>(&mut self, wrapper: Wrapper, reason: impl Into<String>) -> E {
        self.fail(bad_wrapper(wrapper, reason))
    }

    /// Writes a BSON string (length, bytes, NUL).
    #[inline]
    fn put_str<E: de::Error>(&mut self, s: &[u8]) -> Result<(), E> {
        match bson_len(s.len() + 1) {
            Some(len) => {
                self.out.extend_from_slice(&len);
                self.out.extend_from_slice(s);
                self.out.push(0);
                Ok(())
            }
            None => Err(self.fail(ExtJsonError::TooLarge)),
        }
    }

    /// Closes the document or array that starts at `start`: terminator, then its length.
    #[inline]
    fn finish_doc<E: de::Error>(&mut self, start: usize) -> Result<(), E> {
        self.out.push(0);
        match bson_len(self.out.len() - start) {
            Some(len) => {
                self.out[start..start + 4].copy_from_slice(&len);
                Ok(())
            }
            None => Err(self.fail(ExtJsonError::TooLarge)),
        }
    }

    /// Writes `key` as a cstring and says what kind of key it is and how long.
    #[inline]
    fn write_key<E: de::Error>(&mut self, key: &str) -> Result<(KeyClass, usize), E> {
        let bytes = key.as_bytes();
        if bytes.contains(&0) {
            return Err(self.fail(ExtJsonError::NulInKey(key.to_owned())));
        }
        self.out.extend_from_slice(bytes);
        self.out.push(0);
        Ok((classify(bytes), bytes.len()))
    }
}

/// A BSON length field, if `len` is within the size limit.
#[inline]
fn bson_len(len: usize) -> Option<[u8; 4]> {
    if len > MAX_DOCUMENT_SIZE {
        return None;
    }
    i32::try_from(len).ok().map(i32::to_le_bytes)
}

fn bad_wrapper(wrapper: Wrapper, reason: impl Into<String>) -> ExtJsonError {
    ExtJsonError::BadWrapper {
        wrapper: wrapper.name().to_owned(),
        reason: reason.into(),
    }
}

/// The wrapper keys, in the order in which bson tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Wrapper {
    Oid,
    Symbol,
    RegularExpression,
    NumberInt,
    NumberLong,
    NumberDouble,
    NumberDecimal,
    Binary,
    Uuid,
    Code,
    Timestamp,
    Date,
    MinKey,
    MaxKey,
    DbPointer,
    Undefined,
}

impl Wrapper {
    fn name(self) -> &'static str {
        match self {
            Wrapper::Oid => "$oid",
            Wrapper::Symbol => "$symbol",
            Wrapper::RegularExpression => "$regularExpression",
            Wrapper::NumberInt => "$numberInt",
            Wrapper::NumberLong => "$numberLong",
            Wrapper::NumberDouble => "$numberDouble",
            Wrapper::NumberDecimal => "$numberDecimal",
            Wrapper::Binary => "$binary",
            Wrapper::Uuid => "$uuid",
            Wrapper::Code => "$code",
            Wrapper::Timestamp => "$timestamp",
            Wrapper::Date => "$date",
            Wrapper::MinKey => "$minKey",
            Wrapper::MaxKey => "$maxKey",
            Wrapper::DbPointer => "$dbPointer",
            Wrapper::Undefined => "$undefined",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyClass {
    Plain,
    Wrapper(Wrapper),
    /// `$scope`: part of a code-with-scope wrapper, or an ordinary key.
    Scope,
}

#[inline]
fn classify(key: &[u8]) -> KeyClass {
    if key.first() != Some(&b'$') {
        return KeyClass::Plain;
    }
    let w = match key {
        b"$oid" => Wrapper::Oid,
        b"$symbol" => Wrapper::Symbol,
        b"$regularExpression" => Wrapper::RegularExpression,
        b"$numberInt" => Wrapper::NumberInt,
        b"$numberLong" => Wrapper::NumberLong,
        b"$numberDouble" => Wrapper::NumberDouble,
        b"$numberDecimal" => Wrapper::NumberDecimal,
        b"$binary" => Wrapper::Binary,
        b"$uuid" => Wrapper::Uuid,
        b"$code" => Wrapper::Code,
        b"$timestamp" => Wrapper::Timestamp,
        b"$date" => Wrapper::Date,
        b"$minKey" => Wrapper::MinKey,
        b"$maxKey" => Wrapper::MaxKey,
        b"$dbPointer" => Wrapper::DbPointer,
        b"$undefined" => Wrapper::Undefined,
        b"$scope" => return KeyClass::Scope,
        _ => return KeyClass::Plain,
    };
    KeyClass::Wrapper(w)
}

// ---------------------------------------------------------------------------------------------
// Streaming: JSON values to BSON.

/// The top-level object: a document whose own keys are never wrappers.
struct TopSeed<'a> {
    ctx: &'a mut Ctx,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        write_object(self.ctx, map, false).map(|_| ())
    }
}

/// Any JSON value: writes its BSON value and returns its element type.
struct ValueSeed<'a> {
    ctx: &'a mut Ctx,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = u8;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u8, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = u8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u8, E> {
        self.ctx.out.push(u8::from(v));
        Ok(ty::BOOLEAN)
    }

    #[inline]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
        Ok(match i32::try_from(v) {
            Ok(i) => {
                self.ctx.out.extend_from_slice(&i.to_le_bytes());
                ty::INT32
            }
            Err(_) => {
                self.ctx.out.extend_from_slice(&v.to_le_bytes());
                ty::INT64
            }
        })
    }

    #[inline]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            // Above i64::MAX: bson falls back to a double.
            Err(_) => self.visit_f64(v as f64),
        }
    }

    #[inline]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u8, E> {
        self.ctx.out.extend_from_slice(&v.to_le_bytes());
        Ok(ty::DOUBLE)
    }

    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u8, E> {
        self.ctx.put_str(v.as_bytes())?;
        Ok(ty::STRING)
    }

    fn visit_unit<E: de::Error>(self) -> Result<u8, E> {
        Ok(ty::NULL)
    }

    fn visit_none<E: de::Error>(self) -> Result<u8, E> {
        Ok(ty::NULL)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<u8, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u8, A::Error> {
        let ctx = self.ctx;
        let start = ctx.out.len();
        ctx.out.extend_from_slice(&[0; 4]);
        let mut index = 0usize;
        loop {
            let elem = ctx.out.len();
            ctx.out.push(0);
            write_index(&mut ctx.out, index);
            match seq.next_element_seed(ValueSeed { ctx: &mut *ctx })? {
                Some(t) => ctx.out[elem] = t,
                None => {
                    ctx.out.truncate(elem);
                    break;
                }
            }
            index += 1;
        }
        ctx.finish_doc(start)?;
        Ok(ty::ARRAY)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u8, A::Error> {
        write_object(self.ctx, map, true)
    }
}

/// Writes an array index as a cstring key.
#[inline]
fn write_index(out: &mut Vec<u8>, index: usize) {
    if index < 10 {
        out.extend_from_slice(&[b'0' + index as u8, 0]);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = index;
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[i..]);
    out.push(0);
}

/// A map key, written straight into the output as a cstring.
struct KeySeed<'a> {
    ctx: &'a mut Ctx,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = (KeyClass, usize);

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = (KeyClass, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.ctx.write_key(v)
    }
}

/// Writes a JSON object: a document, or (when `detect` and a key says so) a wrapper's value.
/// Returns the element type.
fn write_object<'de, A: MapAccess<'de>>(
    ctx: &mut Ctx,
    mut map: A,
    detect: bool,
) -> Result<u8, A::Error> {
    let start = ctx.out.len();
    ctx.out.extend_from_slice(&[0; 4]);
    let mut elem = ctx.out.len();
    ctx.out.push(0);
    let Some((class, mut key_len)) = map.next_key_seed(KeySeed { ctx: &mut *ctx })? else {
        ctx.out.truncate(elem);
        ctx.finish_doc(start)?;
        return Ok(ty::DOCUMENT);
    };
    if detect {
        match class {
            KeyClass::Plain => {}
            KeyClass::Wrapper(w) => {
                ctx.out.truncate(start);
                return write_wrapper(ctx, map, w, start);
            }
            KeyClass::Scope => {
                ctx.out.truncate(start);
                return write_scope_first(ctx, map);
            }
        }
    }
    let mut seen = Seen::new();
    loop {
        let dup = seen.check(&ctx.out, elem, key_len);
        let t = map.next_value_seed(ValueSeed { ctx: &mut *ctx })?;
        ctx.out[elem] = t;
        if let Some(j) = dup {
            seen.replace(&mut ctx.out, j, elem);
        }
        elem = ctx.out.len();
        ctx.out.push(0);
        match map.next_key_seed(KeySeed { ctx: &mut *ctx })? {
            None => {
                ctx.out.truncate(elem);
                break;
            }
            Some((KeyClass::Wrapper(w), _)) if detect => {
                return Err(ctx.bad(w, "mixed with other keys in one object"));
            }
            Some((_, len)) => key_len = len,
        }
    }
    ctx.finish_doc(start)?;
    Ok(ty::DOCUMENT)
}

/// The elements of the document being written, to find repeated keys (the value of the last
/// occurrence takes the place of the first, as in a `serde_json::Map`). Each element is kept as
/// its offset and a fingerprint of its key; a 64-bit Bloom mask of the fingerprints lets a new
/// key skip the scan, and large documents switch to a hash map.
struct Seen {
    bloom: u64,
    inline: [(usize, u64); 16],
    len: usize,
    spill: Vec<(usize, u64)>,
    index: Option<HashMap<Vec<u8>, usize>>,
}

/// A cheap fingerprint of a key: its length and its first and last bytes.
#[inline]
fn fingerprint(key: &[u8]) -> u64 {
    match key {
        [] => 0,
        [first, .., last] => (key.len() as u64) << 16 | u64::from(*first) << 8 | u64::from(*last),
        [only] => 1 << 16 | u64::from(*only) << 8 | u64::from(*only),
    }
}

/// The Bloom mask bit of a fingerprint.
#[inline]
fn bloom_bit(fp: u64) -> u64 {
    1 << (fp.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

impl Seen {
    #[inline]
    fn new() -> Self {
        Seen {
            bloom: 0,
            inline: [(0, 0); 16],
            len: 0,
            spill: Vec::new(),
            index: None,
        }
    }

    #[inline]
    fn get(&self, i: usize) -> (usize, u64) {
        match self.inline.get(i) {
            Some(&e) => e,
            None => self.spill[i - self.inline.len()],
        }
    }

    fn shift(&mut self, i: usize, delta: isize) {
        let n = self.inline.len();
        let slot = match self.inline.get_mut(i) {
            Some(e) => &mut e.0,
            None => &mut self.spill[i - n].0,
        };
        *slot = slot.wrapping_add_signed(delta);
    }

    #[inline]
    fn push(&mut self, entry: (usize, u64)) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = entry,
            None => self.spill.push(entry),
        }
        self.len += 1;
    }

    /// For the element just begun at `elem` (key of `key_len` bytes written): the index of an
    /// earlier element with the same key, or `None` after recording this one.
    #[inline(always)]
    fn check(&mut self, out: &[u8], elem: usize, key_len: usize) -> Option<usize> {
        let key = &out[elem + 1..elem + 1 + key_len];
        let fp = fingerprint(key);
        if let Some(index) = &mut self.index {
            if let Some(&j) = index.get(key) {
                return Some(j);
            }
            index.insert(key.to_vec(), self.len);
        } else {
            let bit = bloom_bit(fp);
            if self.bloom & bit != 0 {
                for j in 0..self.len {
                    let (o, f) = self.get(j);
                    // Keys hold no NUL, so a longer earlier key cannot match.
                    if f == fp && out[o + 1 + key_len] == 0 && &out[o + 1..o + 1 + key_len] == key {
                        return Some(j);
                    }
                }
            }
            self.bloom |= bit;
            if self.len + 1 >= INDEX_THRESHOLD {
                let mut index = HashMap::with_capacity(2 * INDEX_THRESHOLD);
                for j in 0..self.len {
                    let o = self.get(j).0 + 1;
                    let n = out[o..].iter().position(|&b| b == 0).unwrap_or(0);
                    index.insert(out[o..o + n].to_vec(), j);
                }
                index.insert(key.to_vec(), self.len);
                self.index = Some(index);
            }
        }
        self.push((elem, fp));
        None
    }

    /// Moves the element written at `elem..` (the end of `out`) over earlier element `j`.
    #[cold]
    fn replace(&mut self, out: &mut Vec<u8>, j: usize, elem: usize) {
        let old = self.get(j).0;
        let old_end = if j + 1 < self.len {
            self.get(j + 1).0
        } else {
            elem
        };
        let new = out.split_off(elem);
        let delta = new.len() as isize - (old_end - old) as isize;
        out.splice(old..old_end, new);
        for k in j + 1..self.len {
            self.shift(k, delta);
        }
    }
}

/// A wrapper object, its first key (`w`) already read. Writes the value at `start`.
fn write_wrapper<'de, A: MapAccess<'de>>(
    ctx: &mut Ctx,
    mut map: A,
    w: Wrapper,
    start: usize,
) -> Result<u8, A::Error> {
    let mut value: Small<'de> = map.next_value()?;
    let mut scope = ScopeKind::Absent;
    while let Some(key) = map.next_key_seed(CowStr)? {
        if key == w.name() {
            value = map.next_value()?;
        } else if w == Wrapper::Code && key == "$scope" {
            ctx.out.truncate(start);
            scope = map.next_value_seed(ScopeSeed { ctx: &mut *ctx })?;
        } else {
            return Err(ctx.bad(w, format!("unexpected key {key:?}")));
        }
    }
    match emit(ctx, w, &value, scope, start) {
        Ok(t) => Ok(t),
        Err(e) => Err(ctx.fail(e)),
    }
}

/// A nested object whose first key is `$scope`: code with scope if `$code` follows, else a
/// document. Rare, so it is read into a [`Small`] tree first and replayed.
fn write_scope_first<'de, A: MapAccess<'de>>(ctx: &mut Ctx, mut map: A) -> Result<u8, A::Error> {
    let mut entries: Vec<(Cow<'de, str>, Small<'de>)> =
        vec![(Cow::Borrowed("$scope"), map.next_value()?)];
    while let Some(key) = map.next_key_seed(CowStr)? {
        entries.push((key, map.next_value()?));
    }
    replay_scope_first(ctx, &entries).map_err(de::Error::custom)
}

fn replay_scope_first(
    ctx: &mut Ctx,
    entries: &[(Cow<'_, str>, Small<'_>)],
) -> Result<u8, serde_json::Error> {
    let mut wrapper: Option<Wrapper> = None;
    for (k, _) in entries {
        if let KeyClass::Wrapper(w) = classify(k.as_bytes()) {
            wrapper = Some(wrapper.map_or(w, |v| v.min(w)));
        }
    }
    let start = ctx.out.len();
    if let Some(w) = wrapper {
        // Only `$code` takes `$scope`, and nothing else may be there.
        if let Some((k, _)) = entries.iter().find(|(k, _)| k != "$scope" && k != w.name()) {
            return Err(ctx.bad(w, format!("unexpected key {k:?}")));
        }
        if w != Wrapper::Code {
            return Err(ctx.bad(w, "unexpected key \"$scope\""));
        }
        let last = |name: &str| entries.iter().rev().find(|(k, _)| k == name).map(|e| &e.1);
        let (Some(code), Some(scope)) = (last("$code"), last("$scope")) else {
            return Err(ctx.bad(w, "missing key"));
        };
        let scope = ScopeSeed { ctx: &mut *ctx }.deserialize(SmallRef(scope))?;
        return match emit(ctx, w, code, scope, start) {
            Ok(t) => Ok(t),
            Err(e) => Err(ctx.fail(e)),
        };
    }
    ctx.out.extend_from_slice(&[0; 4]);
    let mut seen = Seen::new();
    for (k, v) in entries {
        let elem = ctx.out.len();
        ctx.out.push(0);
        let (_, key_len) = ctx.write_key::<serde_json::Error>(k)?;
        let dup = seen.check(&ctx.out, elem, key_len);
        let t = ValueSeed { ctx: &mut *ctx }.deserialize(SmallRef(v))?;
        ctx.out[elem] = t;
        if let Some(j) = dup {
            seen.replace(&mut ctx.out, j, elem);
        }
    }
    ctx.finish_doc::<serde_json::Error>(start)?;
    Ok(ty::DOCUMENT)
}

/// What a `$scope` value turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    Absent,
    Null,
    /// A document, written at the end of the output.
    Doc,
    Invalid,
}

/// The value of `$scope`: an object is written as a document (its own keys are not wrappers);
/// anything else is only noted.
struct ScopeSeed<'a> {
    ctx: &'a mut Ctx,
}

impl<'de> DeserializeSeed<'de> for ScopeSeed<'_> {
    type Value = ScopeKind;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ScopeKind, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScopeSeed<'_> {
    type Value = ScopeKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ScopeKind, A::Error> {
        write_object(self.ctx, map, false)?;
        Ok(ScopeKind::Doc)
    }

    fn visit_unit<E: de::Error>(self) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScopeKind, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(ScopeKind::Invalid)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Invalid)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Invalid)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Invalid)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Invalid)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ScopeKind, E> {
        Ok(ScopeKind::Invalid)
    }
}

// ---------------------------------------------------------------------------------------------
// Wrapper bodies.

/// A wrapper's body, held until the whole wrapper object is read (a repeated key replaces it).
#[derive(Debug)]
enum Small<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
    Seq(Vec<Small<'de>>),
    Map(Vec<(Cow<'de, str>, Small<'de>)>),
}

impl<'de> Deserialize<'de> for Small<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SmallVisitor)
    }
}

struct SmallVisitor;

/// A [`Small`] tree as a serde deserializer, to replay it through the same seeds.
#[derive(Clone, Copy)]
struct SmallRef<'a, 'de>(&'a Small<'de>);

impl<'a> de::IntoDeserializer<'a, serde_json::Error> for SmallRef<'a, '_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for SmallRef<'de, '_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Small::Null => visitor.visit_unit(),
            Small::Bool(b) => visitor.visit_bool(*b),
            Small::U64(n) => visitor.visit_u64(*n),
            Small::I64(n) => visitor.visit_i64(*n),
            Small::F64(f) => visitor.visit_f64(*f),
            Small::Str(s) => visitor.visit_borrowed_str(s),
            Small::Seq(items) => {
                let mut seq = de::value::SeqDeserializer::new(items.iter().map(SmallRef));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Small::Map(entries) => {
                let mut map = de::value::MapDeserializer::new(
                    entries.iter().map(|(k, v)| (k.as_ref(), SmallRef(v))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> Visitor<'de> for SmallVisitor {
    type Value = Small<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Small<'de>, E> {
        Ok(Small::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Small<'de>, E> {
        Ok(Small::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Small<'de>, E> {
        Ok(Small::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Small<'de>, E> {
        Ok(Small::F64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Small<'de>, E> {
        Ok(Small::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Small<'de>, E> {
        Ok(Small::Str(Cow::Borrowed(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Small<'de>, E> {
        Ok(Small::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Small<'de>, E> {
        Ok(Small::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Small<'de>, E> {
        Ok(Small::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Small<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Small<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Small::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Small<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(CowStr)? {
            entries.push((key, map.next_value()?));
        }
        Ok(Small::Map(entries))
    }
}

/// A string, borrowed from the input when it has no escapes.
struct CowStr;

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Any JSON value, checked and thrown away.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

impl Small<'_> {
    /// Keeps one entry per key in every object: the first position with the last value, as a
    /// `serde_json::Map` does.
    fn deduplicate(&mut self) {
        match self {
            Small::Seq(items) => items.iter_mut().for_each(Small::deduplicate),
            Small::Map(entries) => {
                let mut kept: Vec<(Cow<'_, str>, Small<'_>)> = Vec::with_capacity(entries.len());
                let mut index: HashMap<String, usize> = HashMap::new();
                for (key, mut value) in entries.drain(..) {
                    value.deduplicate();
                    match index.get(key.as_ref()) {
                        Some(&i) => kept[i].1 = value,
                        None => {
                            index.insert(key.to_string(), kept.len());
                            kept.push((key, value));
                        }
                    }
                }
                *entries = kept;
            }
            _ => {}
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Small::Null => "null",
            Small::Bool(_) => "a boolean",
            Small::U64(_) | Small::I64(_) => "an integer",
            Small::F64(_) => "a floating-point number",
            Small::Str(_) => "a string",
            Small::Seq(_) => "an array",
            Small::Map(_) => "an object",
        }
    }

    /// The value, as an error message quotes it.
    fn describe(&self) -> String {
        match self {
            Small::Null => "null".to_owned(),
            Small::Bool(b) => b.to_string(),
            Small::U64(n) => n.to_string(),
            Small::I64(n) => n.to_string(),
            Small::F64(f) => f.to_string(),
            Small::Str(s) => format!("{s:?}"),
            other => other.kind().to_owned(),
        }
    }

    fn string(&self) -> Result<&str, String> {
        match self {
            Small::Str(s) => Ok(s),
            other => Err(format!("expected a string, found {}", other.kind())),
        }
    }

    fn unsigned(&self) -> Option<u64> {
        match *self {
            Small::U64(n) => Some(n),
            Small::I64(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    fn u32(&self) -> Result<u32, String> {
        self.unsigned()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                format!(
                    "expected an integer from 0 to 4294967295, found {}",
                    self.describe()
                )
            })
    }

    /// The fields of a struct-like body: an object with exactly these keys (the last of a
    /// repeated key counts), or an array of the values in this order.
    fn fields<const N: usize>(&self, names: [&str; N]) -> Result<[&Self; N], String> {
        match self {
            Small::Map(entries) => {
                let mut found: [Option<&Self>; N] = [None; N];
                for (k, v) in entries {
                    match names.iter().position(|n| n == k) {
                        Some(i) => found[i] = Some(v),
                        None => return Err(format!("unexpected key {k:?}")),
                    }
                }
                let mut fields = [self; N];
                for (i, f) in found.into_iter().enumerate() {
                    fields[i] = f.ok_or_else(|| format!("missing key {:?}", names[i]))?;
                }
                Ok(fields)
            }
            Small::Seq(items) if items.len() == N => {
                let mut fields = [self; N];
                for (slot, item) in fields.iter_mut().zip(items) {
                    *slot = item;
                }
                Ok(fields)
            }
            Small::Seq(items) => Err(format!(
                "expected an object with keys {names:?}, found an array of {}",
                items.len()
            )),
            other => Err(format!(
                "expected an object with keys {names:?}, found {}",
                other.kind()
            )),
        }
    }
}

/// Writes wrapper `w` with body `v` at `start` (the end of the output, or where the `$scope`
/// document was written); returns the element type.
fn emit(
    ctx: &mut Ctx,
    w: Wrapper,
    v: &Small<'_>,
    scope: ScopeKind,
    start: usize,
) -> Result<u8, ExtJsonError> {
    let bad = |reason: String| bad_wrapper(w, reason);
    let out = &mut ctx.out;
    let t = match w {
        Wrapper::Oid => {
            out.extend_from_slice(&oid(v).map_err(bad)?);
            ty::OBJECT_ID
        }
        Wrapper::Symbol => {
            put_string(out, v.string().map_err(bad)?)?;
            ty::SYMBOL
        }
        Wrapper::RegularExpression => {
            let [pattern, options] = v.fields(["pattern", "options"]).map_err(bad)?;
            let pattern = pattern.string().map_err(bad)?;
            let options = options.string().map_err(bad)?;
            if pattern.contains('\0') || options.contains('\0') {
                return Err(bad("the pattern or options contain a NUL byte".into()));
            }
            // bson sorts the options.
            let mut chars: Vec<char> = options.chars().collect();
            chars.sort_unstable();
            out.extend_from_slice(pattern.as_bytes());
            out.push(0);
            let mut buf = [0u8; 4];
            for c in chars {
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            out.push(0);
            ty::REGEX
        }
        Wrapper::NumberInt => {
            let s = v.string().map_err(bad)?;
            let n: i32 = s
                .parse()
                .map_err(|_| bad(format!("{s:?} is not a 32-bit integer")))?;
            out.extend_from_slice(&n.to_le_bytes());
            ty::INT32
        }
        Wrapper::NumberLong => {
            let s = v.string().map_err(bad)?;
            let n: i64 = s
                .parse()
                .map_err(|_| bad(format!("{s:?} is not a 64-bit integer")))?;
            out.extend_from_slice(&n.to_le_bytes());
            ty::INT64
        }
        Wrapper::NumberDouble => {
            let s = v.string().map_err(bad)?;
            let f = match s {
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                other => other
                    .parse()
                    .map_err(|_| bad(format!("{s:?} is not a double")))?,
            };
            out.extend_from_slice(&f.to_le_bytes());
            ty::DOUBLE
        }
        Wrapper::NumberDecimal => {
            let s = v.string().map_err(bad)?;
            let bytes = match plain_decimal128(s) {
                Some(bytes) => bytes,
                None => s
                    .parse::<bson::Decimal128>()
                    .map_err(|e| bad(format!("{s:?} is not a Decimal128: {e}")))?
                    .bytes(),
            };
            out.extend_from_slice(&bytes);
            ty::DECIMAL128
        }
        Wrapper::Binary => {
            let [data, subtype] = v.fields(["base64", "subType"]).map_err(bad)?;
            let data = data.string().map_err(bad)?;
            let subtype = subtype.string().map_err(bad)?;
            let sub = match subtype.as_bytes() {
                &[hi, lo] => hex_digit(hi).zip(hex_digit(lo)).map(|(h, l)| h << 4 | l),
                _ => None,
            }
            .ok_or_else(|| {
                bad(format!(
                    "subType {subtype:?} is not one byte in hexadecimal"
                ))
            })?;
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.push(sub);
            let old = sub == 0x02;
            if old {
                // The old binary subtype repeats the length inside the value.
                out.extend_from_slice(&[0; 4]);
            }
            let data_start = out.len();
            if let Err(e) = base64::engine::general_purpose::STANDARD.decode_vec(data, out) {
                out.truncate(at);
                return Err(bad(format!("invalid base64: {e}")));
            }
            let n = out.len() - data_start;
            let outer = bson_len(if old { n + 4 } else { n }).ok_or(ExtJsonError::TooLarge)?;
            out[at..at + 4].copy_from_slice(&outer);
            if old {
                let inner = bson_len(n).ok_or(ExtJsonError::TooLarge)?;
                out[at + 5..at + 9].copy_from_slice(&inner);
            }
            ty::BINARY
        }
        Wrapper::Uuid => {
            let s = v.string().map_err(bad)?;
            let uuid = bson::Uuid::parse_str(s)
                .map_err(|_| bad(format!("{s:?} is not a UUID in hexadecimal")))?;
            out.extend_from_slice(&16i32.to_le_bytes());
            out.push(0x04);
            out.extend_from_slice(&uuid.bytes());
            ty::BINARY
        }
        Wrapper::Code => {
            let code = v.string().map_err(bad)?;
            match scope {
                ScopeKind::Absent | ScopeKind::Null => {
                    out.truncate(start);
                    put_string(out, code)?;
                    ty::JAVASCRIPT
                }
                ScopeKind::Invalid => {
                    return Err(bad("$scope must be an object".into()));
                }
                ScopeKind::Doc => {
                    // The scope document is already at `start`; put the total length and the
                    // code in front of it.
                    let scope_len = out.len() - start;
                    let total = 4 + 4 + code.len() + 1 + scope_len;
                    let mut head = Vec::with_capacity(9 + code.len());
                    head.extend_from_slice(&bson_len(total).ok_or(ExtJsonError::TooLarge)?);
                    put_string(&mut head, code)?;
                    out.splice(start..start, head);
                    ty::JAVASCRIPT_WITH_SCOPE
                }
            }
        }
        Wrapper::Timestamp => {
            let [t, i] = v.fields(["t", "i"]).map_err(bad)?;
            let t = t.u32().map_err(bad)?;
            let i = i.u32().map_err(bad)?;
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
            ty::TIMESTAMP
        }
        Wrapper::Date => {
            out.extend_from_slice(&date(v).map_err(bad)?.to_le_bytes());
            ty::DATETIME
        }
        Wrapper::MinKey | Wrapper::MaxKey => {
            if v.unsigned() != Some(1) {
                return Err(bad(format!("expected 1, found {}", v.describe())));
            }
            if w == Wrapper::MinKey {
                ty::MIN_KEY
            } else {
                ty::MAX_KEY
            }
        }
        Wrapper::DbPointer => {
            let [ns, id] = v.fields(["$ref", "$id"]).map_err(bad)?;
            let ns = ns.string().map_err(bad)?;
            let [id] = id.fields(["$oid"]).map_err(bad)?;
            let id = oid(id).map_err(bad)?;
            put_string(out, ns)?;
            out.extend_from_slice(&id);
            ty::DB_POINTER
        }
        Wrapper::Undefined => {
            if !matches!(v, Small::Bool(true)) {
                return Err(bad(format!("expected true, found {}", v.describe())));
            }
            ty::UNDEFINED
        }
    };
    Ok(t)
}

/// The Decimal128 of a plain decimal string (optional sign, digits with at most one `.`, at
/// most 34 significant digits, no exponent), as bson's parser encodes it: coefficient as
/// written, exponent minus the number of fractional digits. `None` for anything else, which
/// goes to bson's (much slower) parser.
fn plain_decimal128(s: &str) -> Option<[u8; 16]> {
    let (negative, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        all => (false, all),
    };
    let mut coefficient: u128 = 0;
    let mut significant = 0usize;
    let mut fraction: Option<usize> = None;
    let mut any_digit = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                any_digit = true;
                if let Some(f) = &mut fraction {
                    *f += 1;
                }
                if significant > 0 || c != b'0' {
                    significant += 1;
                    if significant > 34 {
                        return None;
                    }
                    coefficient = coefficient * 10 + u128::from(c - b'0');
                }
            }
            b'.' if fraction.is_none() => fraction = Some(0),
            _ => return None,
        }
    }
    let fraction = fraction.unwrap_or(0);
    if !any_digit || fraction > 6176 {
        return None;
    }
    // 6176 is the exponent bias; a coefficient below 10^34 fits the 113-bit form.
    let exponent = (6176 - fraction) as u128;
    let bits = (u128::from(negative) << 127) | (exponent << 113) | coefficient;
    Some(bits.to_le_bytes())
}

fn put_string(out: &mut Vec<u8>, s: &str) -> Result<(), ExtJsonError> {
    let len = bson_len(s.len() + 1).ok_or(ExtJsonError::TooLarge)?;
    out.extend_from_slice(&len);
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

#[inline]
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn oid(v: &Small<'_>) -> Result<[u8; 12], String> {
    let s = v.string()?;
    let b = s.as_bytes();
    let mut id = [0u8; 12];
    let ok = b.len() == 24
        && id.iter_mut().zip(b.chunks_exact(2)).all(|(slot, pair)| {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(h), Some(l)) => {
                    *slot = h << 4 | l;
                    true
                }
                _ => false,
            }
        });
    if ok {
        Ok(id)
    } else {
        Err(format!("expected 24 hexadecimal digits, found {s:?}"))
    }
}

/// A `$date` body: `{"$numberLong": "…"}`, an RFC 3339 string, or integer milliseconds.
fn date(v: &Small<'_>) -> Result<i64, String> {
    match v {
        Small::Map(_) | Small::Seq(_) => {
            let [n] = v.fields(["$numberLong"])?;
            let s = n.string()?;
            s.parse()
                .map_err(|_| format!("{s:?} is not a 64-bit integer"))
        }
        Small::Str(s) => parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 date")),
        Small::U64(n) => i64::try_from(*n).map_err(|_| format!("{n} is out of range")),
        Small::I64(n) => Ok(*n),
        other => Err(format!(
            "expected a string, an integer or {{\"$numberLong\": …}}, found {}",
            other.kind()
        )),
    }
}

/// Milliseconds since the epoch of an RFC 3339 date-time, read as the `time` crate reads it
/// (which is what bson uses): `YYYY-MM-DD`, any one byte, `hh:mm:ss`, optional `.` and digits
/// (truncated), then `Z`, `z` or `±hh:mm`. A leap second (`:60`) counts as the last nanosecond
/// of the previous second and is only accepted at 23:59:60 UTC on the last day of a month.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |at: usize, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for k in 0..n {
            let c = *b.get(at + k)?;
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let lit = |at: usize, c: u8| (b.get(at) == Some(&c)).then_some(());
    let year = digits(0, 4)?;
    lit(4, b'-')?;
    let month = digits(5, 2)?;
    lit(7, b'-')?;
    let day = digits(8, 2)?;
    b.get(10)?; // any separator
    let hour = digits(11, 2)?;
    lit(13, b':')?;
    let minute = digits(14, 2)?;
    lit(16, b':')?;
    let second = digits(17, 2)?;
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let first = i;
        let mut scale = 100_000_000u32;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            nanos += u32::from(c - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == first {
            return None;
        }
    }
    let offset = match *b.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let h = digits(i + 1, 2)?;
            lit(i + 3, b':')?;
            let m = digits(i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            i += 6;
            let secs = i64::from(h * 3600 + m * 60);
            if sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    if i != b.len()
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let leap = second == 60;
    let (second, nanos) = if leap {
        (59, 999_999_999)
    } else {
        (second, nanos)
    };
    let secs = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second)
        - offset;
    if leap {
        let (_, _, next_day) = civil_from_days((secs + 1).div_euclid(86_400));
        if secs.rem_euclid(86_400) != 86_399 || next_day != 1 {
            return None;
        }
    }
    // Truncated toward zero, as bson does.
    i64::try_from((i128::from(secs) * 1_000_000_000 + i128::from(nanos)) / 1_000_000).ok()
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// ---------------------------------------------------------------------------------------------
// BSON to Extended JSON.

/// Writes a BSON document (raw bytes) as relaxed (canonical = false) or canonical Extended JSON
/// v2 into `out`.
///
/// The output is compact, keeps field order, and reads back through [`transcode`] to the same
/// bytes. The relaxed form is bson's (`Bson::into_relaxed_extjson`) except where a plain number
/// would not come back as the same type or bits: an int64 that fits 32 bits is written as
/// `{"$numberLong": "…"}`, and a double that `serde_json` would not read back exactly as
/// `{"$numberDouble": "…"}`. Canonical doubles are always `{"$numberDouble": "…"}`.
///
/// What cannot round-trip: NaNs other than the two standard ones, Decimal128 bit patterns that are
/// not canonical (bson prints them as their value), regex options that are not sorted, and
/// embedded documents whose keys look like wrappers (`{"$oid": "…"}` as a document), which no
/// Extended JSON reader can tell apart. On error `out` is left as it was.
///
/// # Errors
///
/// [`ExtJsonError::Syntax`] (prefixed "malformed BSON") if `doc` does not hold valid BSON, e.g. a
/// string that is not UTF-8.
///
/// ```
/// use changeflow_core::extjson::{transcode, write_document};
///
/// let mut bytes = Vec::new();
/// transcode(br#"{"n": 1, "big": {"$numberLong": "7"}, "x": 1.5}"#, &mut bytes)?;
/// let doc = bson::RawDocument::from_bytes(&bytes)?;
/// let mut json = String::new();
/// write_document(doc, false, &mut json)?;
/// assert_eq!(json, r#"{"n":1,"big":{"$numberLong":"7"},"x":1.5}"#);
/// json.clear();
/// write_document(doc, true, &mut json)?;
/// assert_eq!(
///     json,
///     r#"{"n":{"$numberInt":"1"},"big":{"$numberLong":"7"},"x":{"$numberDouble":"1.5"}}"#
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_document(
    doc: &bson::RawDocument,
    canonical: bool,
    out: &mut String,
) -> Result<(), ExtJsonError> {
    let base = out.len();
    let result = JsonWriter {
        out: &mut *out,
        canonical,
    }
    .document(doc.as_bytes(), doc.iter_elements(), false);
    if result.is_err() {
        out.truncate(base);
    }
    result
}

fn malformed(e: bson::error::Error) -> ExtJsonError {
    ExtJsonError::Syntax(format!("malformed BSON: {e}"))
}

struct JsonWriter<'a> {
    out: &'a mut String,
    canonical: bool,
}

impl JsonWriter<'_> {
    /// Writes the elements of a document (or, when `array`, an array) whose bytes are `bytes`.
    fn document(
        &mut self,
        bytes: &[u8],
        elements: bson::raw::RawIter<'_>,
        array: bool,
    ) -> Result<(), ExtJsonError> {
        self.out.push(if array { '[' } else { '{' });
        let mut offset = 4;
        for (i, element) in elements.enumerate() {
            let element = element.map_err(malformed)?;
            if i > 0 {
                self.out.push(',');
            }
            let key = element.key().as_str();
            if !array {
                write_json_str(self.out, key);
                self.out.push(':');
            }
            let value_start = offset + 1 + key.len() + 1;
            offset = value_start + element.size();
            let value = element.value().map_err(malformed)?;
            if let bson::RawBsonRef::DbPointer(_) = value {
                // bson does not expose a DBPointer's parts: read them from the bytes.
                let raw = bytes.get(value_start..offset).unwrap_or_default();
                self.db_pointer(raw)?;
            } else {
                self.value(value)?;
            }
        }
        self.out.push(if array { ']' } else { '}' });
        Ok(())
    }

    fn value(&mut self, value: bson::RawBsonRef<'_>) -> Result<(), ExtJsonError> {
        use bson::RawBsonRef as B;
        let canonical = self.canonical;
        let out = &mut *self.out;
        match value {
            B::Double(f) => write_double(out, f, canonical),
            B::String(s) => write_json_str(out, s),
            B::Document(d) => return self.document(d.as_bytes(), d.iter_elements(), false),
            B::Array(a) => return self.document(a.as_bytes(), a.iter_elements(), true),
            B::Binary(b) => {
                out.push_str(r#"{"$binary":{"base64":""#);
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(b.bytes));
                let _ = write!(out, r#"","subType":"{:02x}"}}}}"#, u8::from(b.subtype));
            }
            B::Undefined => out.push_str(r#"{"$undefined":true}"#),
            B::ObjectId(id) => {
                let _ = write!(out, r#"{{"$oid":"{}"}}"#, id.to_hex());
            }
            B::Boolean(v) => out.push_str(if v { "true" } else { "false" }),
            B::DateTime(dt) => write_date(out, dt.timestamp_millis(), canonical),
            B::Null => out.push_str("null"),
            B::RegularExpression(re) => {
                let mut options: Vec<char> = re.options.as_str().chars().collect();
                options.sort_unstable();
                let options: String = options.into_iter().collect();
                out.push_str(r#"{"$regularExpression":{"pattern":"#);
                write_json_str(out, re.pattern.as_str());
                out.push_str(r#","options":"#);
                write_json_str(out, &options);
                out.push_str("}}");
            }
            B::DbPointer(_) => {
                // Handled by `document`, which has the bytes.
                return Err(ExtJsonError::Syntax("malformed BSON: DBPointer".into()));
            }
            B::JavaScriptCode(code) => {
                out.push_str(r#"{"$code":"#);
                write_json_str(out, code);
                out.push('}');
            }
            B::Symbol(s) => {
                out.push_str(r#"{"$symbol":"#);
                write_json_str(out, s);
                out.push('}');
            }
            B::JavaScriptCodeWithScope(cws) => {
                out.push_str(r#"{"$code":"#);
                write_json_str(out, cws.code);
                out.push_str(r#","$scope":"#);
                self.document(cws.scope.as_bytes(), cws.scope.iter_elements(), false)?;
                self.out.push('}');
            }
            B::Int32(n) => {
                let _ = if canonical {
                    write!(out, r#"{{"$numberInt":"{n}"}}"#)
                } else {
                    write!(out, "{n}")
                };
            }
            B::Timestamp(ts) => {
                let _ = write!(
                    out,
                    r#"{{"$timestamp":{{"t":{},"i":{}}}}}"#,
                    ts.time, ts.increment
                );
            }
            B::Int64(n) => {
                // A relaxed int64 that fits 32 bits would read back as an int32.
                let _ = if canonical || i32::try_from(n).is_ok() {
                    write!(out, r#"{{"$numberLong":"{n}"}}"#)
                } else {
                    write!(out, "{n}")
                };
            }
            B::Decimal128(d) => {
                let _ = write!(out, r#"{{"$numberDecimal":"{d}"}}"#);
            }
            B::MaxKey => out.push_str(r#"{"$maxKey":1}"#),
            B::MinKey => out.push_str(r#"{"$minKey":1}"#),
        }
        Ok(())
    }

    /// A DBPointer from its value bytes: string (length, bytes, NUL), then 12 ObjectId bytes.
    fn db_pointer(&mut self, raw: &[u8]) -> Result<(), ExtJsonError> {
        let bad = || ExtJsonError::Syntax("malformed BSON: bad DBPointer".into());
        let len = raw
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_le_bytes)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n >= 1)
            .ok_or_else(bad)?;
        let ns = raw
            .get(4..4 + len - 1)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let id = raw.get(4 + len..4 + len + 12).ok_or_else(bad)?;
        self.out.push_str(r#"{"$dbPointer":{"$ref":"#);
        write_json_str(self.out, ns);
        self.out.push_str(r#","$id":{"$oid":""#);
        for b in id {
            let _ = write!(self.out, "{b:02x}");
        }
        self.out.push_str(r#""}}}"#);
        Ok(())
    }
}

fn write_double(out: &mut String, f: f64, canonical: bool) {
    if f.is_nan() {
        out.push_str(if f.is_sign_negative() {
            r#"{"$numberDouble":"-NaN"}"#
        } else {
            r#"{"$numberDouble":"NaN"}"#
        });
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 {
            r#"{"$numberDouble":"Infinity"}"#
        } else {
            r#"{"$numberDouble":"-Infinity"}"#
        });
        return;
    }
    if !canonical {
        // serde_json's shortest form; it always has a '.' or an exponent, so it reads back as a
        // double, but serde_json's own reader is not exact for every such text.
        if let Ok(s) = serde_json::to_string(&f)
            && serde_json::from_str::<f64>(&s).is_ok_and(|g| g.to_bits() == f.to_bits())
        {
            out.push_str(&s);
            return;
        }
    }
    // Rust's shortest exact decimal, with ".0" for integral values (as bson writes it).
    let _ = write!(out, r#"{{"$numberDouble":"{f}"#);
    if f.fract() == 0.0 {
        out.push_str(".0");
    }
    out.push_str("\"}");
}

fn write_date(out: &mut String, millis: i64, canonical: bool) {
    // bson writes years 1970 to 9999 as RFC 3339 in relaxed form.
    if canonical || !(0..=253_402_300_799_999).contains(&millis) {
        let _ = write!(out, r#"{{"$date":{{"$numberLong":"{millis}"}}}}"#);
        return;
    }
    let (year, month, day) = civil_from_days(millis.div_euclid(86_400_000));
    let ms_of_day = millis.rem_euclid(86_400_000);
    let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    let _ = write!(
        out,
        r#"{{"$date":"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}"#,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if ms != 0 {
        // As the `time` crate formats it: trailing zeros dropped.
        let frac = format!("{ms:03}");
        let _ = write!(out, ".{}", frac.trim_end_matches('0'));
    }
    out.push_str("Z\"}");
}

/// Writes `s` as a JSON string.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bson crate's route: parse to a `serde_json::Value`, convert, encode.
    fn reference(json: &[u8]) -> Result<Vec<u8>, String> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("syntax: {e}"))?;
        let serde_json::Value::Object(map) = value else {
            return Err("not a document".to_owned());
        };
        let doc = bson::Document::try_from(map).map_err(|e| format!("convert: {e}"))?;
        doc.to_vec().map_err(|e| format!("encode: {e}"))
    }

    fn ours(json: &[u8]) -> Result<Vec<u8>, ExtJsonError> {
        let mut out = Vec::new();
        transcode(json, &mut out).map(|()| out)
    }

    /// Both routes fail the same way, or give the same bytes (after `normalize`); then ours.
    fn compare(json: &str, normalize: fn(&[u8]) -> Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        let theirs = reference(json.as_bytes());
        let mine = ours(json.as_bytes());
        match (&theirs, &mine) {
            (Ok(a), Ok(b)) => {
                let (a, mine) = (normalize(a), b.clone());
                let b = normalize(b);
                if a == b {
                    Ok(Some(mine))
                } else {
                    Err(format!("{json}\n bson: {a:?}\n ours: {b:?}"))
                }
            }
            (Err(a), Err(b)) => {
                let same_kind = match b {
                    ExtJsonError::Syntax(_) => a.starts_with("syntax"),
                    ExtJsonError::NotADocument => a.starts_with("not a document"),
                    _ => a.starts_with("convert") || a.starts_with("encode"),
                };
                if same_kind {
                    Ok(None)
                } else {
                    Err(format!("{json}\n bson: {a}\n ours: {b}"))
                }
            }
            _ => Err(format!("{json}\n bson: {theirs:?}\n ours: {mine:?}")),
        }
    }

    fn same_bytes(json: &str) -> Result<Option<Vec<u8>>, String> {
        compare(json, <[u8]>::to_vec)
    }

    /// The document with every level's keys sorted, for comparing against bson when
    /// `serde_json::Map` is a `BTreeMap` (no `preserve_order`).
    fn sorted_bytes(bytes: &[u8]) -> Vec<u8> {
        fn sort(value: bson::Bson) -> bson::Bson {
            match value {
                bson::Bson::Document(d) => bson::Bson::Document(sort_doc(d)),
                bson::Bson::Array(a) => bson::Bson::Array(a.into_iter().map(sort).collect()),
                bson::Bson::JavaScriptCodeWithScope(c) => {
                    bson::Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                        code: c.code,
                        scope: sort_doc(c.scope),
                    })
                }
                other => other,
            }
        }
        fn sort_doc(doc: bson::Document) -> bson::Document {
            let mut entries: Vec<(String, bson::Bson)> = doc.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.into_iter().map(|(k, v)| (k, sort(v))).collect()
        }
        let raw = bson::RawDocumentBuf::from_bytes(bytes.to_vec()).expect("valid BSON");
        let doc = bson::Document::try_from(raw).expect("valid BSON");
        sort_doc(doc).to_vec().expect("encodable")
    }

    fn same_sorted(json: &str) -> Result<Option<Vec<u8>>, String> {
        compare(json, sorted_bytes)
    }

    /// Same as bson up to key order (the fixed cases do not sort their keys).
    #[track_caller]
    fn check(json: &str) -> Option<Vec<u8>> {
        same_sorted(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn bad_wrapper_name(json: &str) -> String {
        match ours(json.as_bytes()) {
            Err(ExtJsonError::BadWrapper { wrapper, .. }) => wrapper,
            other => panic!("{json}: expected BadWrapper, got {other:?}"),
        }
    }

    /// The scanner's bytes for `json`, or `None` if it declines.
    fn scanned(json: &str) -> Option<Vec<u8>> {
        let mut ctx = Ctx {
            out: Vec::new(),
            err: None,
        };
        scan::transcode(json, &mut ctx).map(|()| ctx.out)
    }

    /// Change events as the workload generator and `mongoexport` write them: the scanner
    /// answers them (no serde fallback on the hot path), with bson's bytes.
    #[test]
    fn scanner_answers_change_events() {
        let lines = [
            r#"{"_id":{"_data":"826553F100000000012B0229296E04"},"operationType":"insert","clusterTime":{"$timestamp":{"t":1700000000,"i":1}},"wallTime":{"$date":"2023-11-14T22:13:20.001Z"},"fullDocument":{"_id":{"$oid":"6553f10015780b2e0c2ec716"},"customer_id":356,"region":"us-west","status":"pending","amount":100.15,"items":[{"sku":"SKU-00725","qty":1,"price":13.36},{"sku":"SKU-00319","qty":3,"price":-28.9}],"ts":{"$date":"2023-11-14T22:13:20.001Z"}},"ns":{"db":"shop","coll":"orders"},"documentKey":{"_id":{"$oid":"6553f10015780b2e0c2ec716"}}}"#,
            r#"{"_id":{"_data":"826553F104000000012B0229296E04"},"operationType":"update","clusterTime":{"$timestamp":{"t":1700000004,"i":1}},"wallTime":{"$date":"2023-11-14T22:13:24.001Z"},"lsid":{"id":{"$binary":{"base64":"ZYmvc5jbSUq2xgYwqe0PzQ==","subType":"04"}},"uid":{"$binary":{"base64":"fjoRbYbZBGGhmeQ5MlMXrqFgswNHrbjsZF7s4n/c5v0=","subType":"00"}}},"txnNumber":{"$numberLong":"1"},"ns":{"db":"shop","coll":"orders"},"documentKey":{"_id":{"$oid":"6553f10215780b2e0c2ec71b"}},"updateDescription":{"updatedFields":{"items.0.price":1.32,"amount":0.5},"removedFields":["status"],"truncatedArrays":[{"field":"items","newSize":1}]}}"#,
            r#"{ "_id" : { "_data" : "8200000001" }, "operationType" : "delete", "clusterTime" : { "$timestamp" : { "t" : 1, "i" : 5 } }, "ns" : { "db" : "shop", "coll" : "orders" }, "documentKey" : { "_id" : -7 }, "n" : null, "b" : [true, false, [], {}] }"#,
        ];
        for line in lines {
            let fast = scanned(line);
            assert!(fast.is_some(), "declined: {line}");
            assert_eq!(fast, check(line), "{line}");
        }
    }

    /// What the scanner declines still transcodes (or fails) exactly as bson's route.
    #[test]
    fn scanner_declines_what_it_does_not_read_exactly() {
        let lines = [
            r#"{"a": "esc\"aped"}"#,
            r#"{"a": 1e5}"#,
            r#"{"a": 1234567890123456.5}"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": {"x": 1, "$oid": "65a1b2c3d4e5f60718293a4b"}}"#,
            r#"{"a": {"$oid": "65a1b2c3d4e5f60718293a4b", "$oid": "65a1b2c3d4e5f60718293a4c"}}"#,
            r#"{"a": {"$oid": "xyz"}}"#,
            r#"{"a": {"$scope": {}, "$code": "f"}}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{"a": [1, 2,]}"#,
            r#"{"a": 1} x"#,
        ];
        for line in lines {
            assert!(scanned(line).is_none(), "answered: {line}");
            same_bytes(line).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // --- generators -------------------------------------------------------------------------

    /// A generated JSON value: text, or a container rendered with sorted unique keys (`exact`)
    /// or as generated (repeats and any order).
    #[derive(Debug, Clone)]
    enum Gen {
        Raw(String),
        Object(Vec<(String, Gen)>),
        Array(Vec<Gen>),
        Code {
            code: String,
            scope: Box<Gen>,
            scope_first: bool,
        },
    }

    impl Gen {
        fn render(&self, exact: bool, out: &mut String) {
            match self {
                Gen::Raw(s) => out.push_str(s),
                Gen::Object(entries) => {
                    let mut entries: Vec<&(String, Gen)> = entries.iter().collect();
                    if exact {
                        entries.sort_by(|a, b| a.0.cmp(&b.0));
                        entries.dedup_by(|a, b| a.0 == b.0);
                    }
                    out.push('{');
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(&json_str(k));
                        out.push(':');
                        v.render(exact, out);
                    }
                    out.push('}');
                }
                Gen::Array(items) => {
                    out.push('[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        v.render(exact, out);
                    }
                    out.push(']');
                }
                Gen::Code {
                    code,
                    scope,
                    scope_first,
                } => {
                    let mut s = String::new();
                    scope.render(exact, &mut s);
                    if *scope_first {
                        let _ = write!(out, r#"{{"$scope": {s}, "$code": {code}}}"#);
                    } else {
                        let _ = write!(out, r#"{{"$code": {code}, "$scope": {s}}}"#);
                    }
                }
            }
        }

        fn to_json(&self, exact: bool) -> String {
            let mut s = String::new();
            self.render(exact, &mut s);
            s
        }
    }

    fn json_str(s: &str) -> String {
        serde_json::to_string(s).expect("string")
    }

    fn raw(s: impl Into<String>) -> Gen {
        Gen::Raw(s.into())
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => "[a-e]{1,2}",
            1 => prop::sample::select(vec![
                "_id", "$set", "$ref", "$id", "$db", "$scope", "$type", "$options", "$regex",
                "a.b", "é", "日本", "\u{1F600}", "a\"b", "t\tb", "",
            ])
            .prop_map(str::to_owned),
            1 => prop::sample::select(vec!["$oid", "$date", "$code", "$numberLong"])
                .prop_map(str::to_owned),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z ]{0,8}".prop_map(|s| json_str(&s)),
            1 => any::<String>().prop_map(|s| json_str(&s)),
            1 => prop::sample::select(vec![
                r#""\u0041\n\"\\\/""#, r#""\ud83d\ude00""#, r#""a\u0000b""#, r#""""#,
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn hex_string(bytes: &[u8], upper: bool) -> String {
        bytes
            .iter()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect()
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "1.0",
                "-0.0",
                "1e5",
                "1E+2",
                "2.5e-3",
                "2147483647",
                "2147483648",
                "-2147483648",
                "-2147483649",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "18446744073709551615",
                "18446744073709551616",
                "123456789012345678901234567890",
                "1e308",
                "5e-324",
                "0.1",
                "0.30000000000000004",
            ])
            .prop_map(str::to_owned),
            "-?(0|[1-9][0-9]{0,9})\\.[0-9]{1,6}",
            "-?[0-9]{1,3}\\.?[0-9]{0,3}",
            "-?[0-9]{14,17}(\\.[0-9])?",
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::to_string(&f).expect("finite")),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
        ]
    }

    fn rfc3339() -> impl Strategy<Value = String> {
        let offset = prop_oneof![
            3 => Just("Z".to_owned()),
            1 => Just("z".to_owned()),
            3 => (prop::bool::ANY, 0u32..24, 0u32..60).prop_map(|(neg, h, m)| {
                format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })
            }),
            1 => (prop::bool::ANY, 0u32..25, 0u32..61).prop_map(|(neg, h, m)| {
                format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })
            }),
            1 => prop::sample::select(vec!["", "+0100", "+1:00", "Zz", "+01:00:00", " Z"])
                .prop_map(str::to_owned),
        ];
        let year = prop_oneof![0u32..10_000, 1960u32..2100, Just(0u32), Just(9999u32)];
        let fields = prop_oneof![
            // In range.
            3 => (1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..60),
            // Anything two digits can say, near the edges.
            1 => (0u32..14, 0u32..33, 0u32..25, 0u32..61, 0u32..62),
        ];
        let frac = prop_oneof![
            2 => Just(String::new()),
            2 => "\\.[0-9]{1,12}",
            1 => Just(".".to_owned()),
        ];
        (
            year,
            fields,
            prop::sample::select(vec!["T", "T", "T", "t", " ", "x", "é"]),
            frac,
            offset,
        )
            .prop_map(|(y, (mo, d, h, mi, s), sep, frac, off)| {
                format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}")
            })
    }

    fn leap_second() -> impl Strategy<Value = String> {
        (
            1969u32..2030,
            1u32..13,
            27u32..32,
            0u32..24,
            0u32..60,
            prop::bool::ANY,
        )
            .prop_map(|(y, mo, d, oh, om, neg)| {
                // A local time that may be 23:59:60 UTC.
                let (h, m) = if neg {
                    ((23 + 24 - oh) % 24, (59 + 60 - om) % 60)
                } else {
                    ((23 + oh) % 24, (59 + om) % 60)
                };
                let sign = if neg { '-' } else { '+' };
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:60.5{sign}{oh:02}:{om:02}")
            })
    }

    fn wrapper(lossless: bool) -> BoxedStrategy<Gen> {
        let oid = prop_oneof![
            4 => (any::<[u8; 12]>(), prop::bool::ANY).prop_map(|(b, up)| hex_string(&b, up)),
            1 => prop::sample::select(vec!["xyz", "", "65a1b2c3d4e5f60718293a4", "65a1b2c3d4e5f60718293a4g"])
                .prop_map(str::to_owned),
        ];
        let oid2 = oid.clone();
        let oid3 = oid.clone();
        let decimal = prop_oneof![
            3 => (prop::bool::ANY, "[0-9]{1,36}", -6200i32..6200).prop_map(|(neg, digits, e)| {
                format!("{}{digits}E{e}", if neg { "-" } else { "" })
            }),
            3 => (any::<i64>(), 0u32..6).prop_map(|(n, scale)| {
                let s = n.unsigned_abs().to_string();
                let sign = if n < 0 { "-" } else { "" };
                if scale as usize >= s.len() { format!("{sign}0.{s}") } else {
                    let (a, b) = s.split_at(s.len() - scale as usize);
                    if b.is_empty() { format!("{sign}{a}") } else { format!("{sign}{a}.{b}") }
                }
            }),
            1 => prop::sample::select(if lossless {
                vec!["0", "-0", "1E+10", "Infinity", "-Infinity", "inf", "NaN", "1.2.3", "", "1e", "+5", "0.000"]
            } else {
                vec!["0", "-0", "1E+10", "Infinity", "-Infinity", "NaN", "-NaN", "sNaN", "-sNaN", "1.2.3", "", "1e"]
            })
            .prop_map(str::to_owned),
        ];
        let double = prop_oneof![
            any::<f64>().prop_map(|f| f.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            prop::sample::select(vec![
                "Infinity",
                "-Infinity",
                "NaN",
                "-NaN",
                "nan",
                "inf",
                "-0.0",
                "0",
                "1e400",
                "1.5",
                "+1.5",
                ".5",
                "5.",
                "x",
                "",
            ])
            .prop_map(str::to_owned),
        ];
        let int_text = prop_oneof![
            3 => any::<i32>().prop_map(|n| n.to_string()),
            3 => any::<i64>().prop_map(|n| n.to_string()),
            1 => prop::sample::select(vec!["+5", "-0", "007", "1.5", "", "-", "2147483648", "9223372036854775808", " 1"])
                .prop_map(str::to_owned),
        ];
        let int_text2 = int_text.clone();
        let subtype = prop_oneof![
            4 => prop::sample::select(vec!["00", "01", "02", "03", "04", "05", "06", "80", "ff", "FF", "7f"]),
            1 => prop::sample::select(vec!["0", "000", "zz", ""]),
        ];
        let b64 = prop_oneof![
            5 => prop::collection::vec(any::<u8>(), 0..24)
                .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            1 => prop::sample::select(vec!["A", "AB=", "====", "AAAA\n"]).prop_map(str::to_owned),
        ];
        let b64_2 = b64.clone();
        let uuid = (any::<[u8; 16]>(), 0..6usize).prop_map(|(b, form)| {
            let h = hex_string(&b, false);
            let hy = format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            );
            match form {
                0 | 1 => hy,
                2 => h,
                3 => format!("{{{hy}}}"),
                4 => format!("urn:uuid:{hy}"),
                _ => hy.to_uppercase().replacen('-', "", 1),
            }
        });
        let date = prop_oneof![
            4 => rfc3339().prop_map(|s| format!(r#"{{"$date": {}}}"#, json_str(&s))),
            1 => leap_second().prop_map(|s| format!(r#"{{"$date": {}}}"#, json_str(&s))),
            2 => any::<i64>().prop_map(|n| format!(r#"{{"$date": {{"$numberLong": "{n}"}}}}"#)),
            2 => any::<i64>().prop_map(|n| format!(r#"{{"$date": {n}}}"#)),
            1 => prop::sample::select(vec![
                r#"{"$date": {"$numberLong": 5}}"#,
                r#"{"$date": {"$numberLong": "5", "x": 1}}"#,
                r#"{"$date": {}}"#,
                r#"{"$date": ["5"]}"#,
                r#"{"$date": 1.5}"#,
                r#"{"$date": 9223372036854775808}"#,
                r#"{"$date": -9223372036854775808}"#,
                r#"{"$date": null}"#,
                r#"{"$date": "2024-01-01T00:00:00Z", "$date": 7}"#,
            ])
            .prop_map(str::to_owned),
        ];
        let ts = prop_oneof![
            4 => (any::<u32>(), any::<u32>()).prop_map(|(t, i)| format!(r#"{{"$timestamp": {{"t": {t}, "i": {i}}}}}"#)),
            1 => (any::<u32>(), any::<u32>()).prop_map(|(t, i)| format!(r#"{{"$timestamp": {{"i": {i}, "t": {t}}}}}"#)),
            1 => prop::sample::select(vec![
                r#"{"$timestamp": [7, 1]}"#,
                r#"{"$timestamp": {"t": 4294967296, "i": 1}}"#,
                r#"{"$timestamp": {"t": -1, "i": 1}}"#,
                r#"{"$timestamp": {"t": 1.0, "i": 1}}"#,
                r#"{"$timestamp": {"t": 1}}"#,
                r#"{"$timestamp": {"t": 1, "i": 2, "x": 3}}"#,
                r#"{"$timestamp": {"t": 1, "i": 2, "t": 3}}"#,
            ])
            .prop_map(str::to_owned),
        ];
        let regex = prop_oneof![
            4 => ("[a-z.*+]{0,6}", "[imxslu]{0,4}").prop_map(|(p, o)| {
                format!(r#"{{"$regularExpression": {{"pattern": {}, "options": {}}}}}"#, json_str(&p), json_str(&o))
            }),
            1 => ("[a-z]{0,3}", "[ximé]{0,4}").prop_map(|(p, o)| {
                format!(r#"{{"$regularExpression": {{"options": {}, "pattern": {}}}}}"#, json_str(&o), json_str(&p))
            }),
            1 => prop::sample::select(vec![
                r#"{"$regularExpression": {"pattern": "a\u0000", "options": ""}}"#,
                r#"{"$regularExpression": ["a", "i"]}"#,
                r#"{"$regularExpression": {"pattern": "a"}}"#,
                r#"{"$regularExpression": "a"}"#,
            ])
            .prop_map(str::to_owned),
        ];
        prop_oneof![
            4 => oid.prop_map(|h| raw(format!(r#"{{"$oid": "{h}"}}"#))),
            4 => text().prop_map(|s| raw(format!(r#"{{"$symbol": {s}}}"#))),
            4 => regex.prop_map(raw),
            4 => ("[a-z]{0,4}", "[gim]{0,3}").prop_map(|(p, o)| Gen::Object(vec![
                ("$regex".into(), raw(json_str(&p))),
                ("$options".into(), raw(json_str(&o))),
            ])),
            4 => int_text.prop_map(|s| raw(format!(r#"{{"$numberInt": {}}}"#, json_str(&s)))),
            4 => int_text2.prop_map(|s| raw(format!(r#"{{"$numberLong": {}}}"#, json_str(&s)))),
            4 => double.prop_map(|s| raw(format!(r#"{{"$numberDouble": {}}}"#, json_str(&s)))),
            4 => decimal.prop_map(|s| raw(format!(r#"{{"$numberDecimal": {}}}"#, json_str(&s)))),
            4 => (b64, subtype).prop_map(|(b, t)| raw(format!(
                r#"{{"$binary": {{"base64": {}, "subType": "{t}"}}}}"#, json_str(&b)
            ))),
            1 => b64_2.prop_map(|b| raw(format!(r#"{{"$binary": {}, "$type": "00"}}"#, json_str(&b)))),
            4 => uuid.prop_map(|u| raw(format!(r#"{{"$uuid": "{u}"}}"#))),
            4 => text().prop_map(|s| raw(format!(r#"{{"$code": {s}}}"#))),
            4 => ts.prop_map(raw),
            4 => date.prop_map(raw),
            4 => (text(), oid2).prop_map(|(ns, h)| raw(format!(
                r#"{{"$dbPointer": {{"$ref": {ns}, "$id": {{"$oid": "{h}"}}}}}}"#
            ))),
            4 => oid3.prop_map(|h| Gen::Object(vec![
                ("$ref".into(), raw(r#""coll""#)),
                ("$id".into(), raw(format!(r#"{{"$oid": "{h}"}}"#))),
            ])),
            4 => prop::sample::select(vec![
                r#"{"$minKey": 1}"#, r#"{"$maxKey": 1}"#, r#"{"$undefined": true}"#,
                r#"{"$minKey": 2}"#, r#"{"$maxKey": "1"}"#, r#"{"$undefined": false}"#,
                r#"{"$minKey": 1.0}"#,
                r#"{"$oid": 5, "$oid": "65a1b2c3d4e5f60718293a4b"}"#,
                r#"{"$oid": "65a1b2c3d4e5f60718293a4b", "x": 1}"#,
                r#"{"x": 1, "$oid": "65a1b2c3d4e5f60718293a4b"}"#,
                r#"{"$oid": "65a1b2c3d4e5f60718293a4b", "$date": 1}"#,
                r#"{"$binary": ["AAAA", "80"]}"#,
                r#"{"$dbPointer": ["db.c", ["65a1b2c3d4e5f60718293a4b"]]}"#,
                r#"{"$code": "x", "$scope": null}"#,
                r#"{"$code": "x", "$scope": 5}"#,
                r#"{"$code": "x", "$scope": 5, "$scope": {"a": 1}}"#,
                r#"{"$scope": null, "$code": "x"}"#,
                r#"{"$scope": {"a": 1}}"#,
                r#"{"$scope": {"a": 1}, "b": {"$oid": "xyz"}}"#,
                r#"{"$scope": {"$oid": "xyz"}, "$code": "f()"}"#,
                r#"{"$scope": {"a": 1}, "$code": "x", "b": 1}"#,
                r#"{"$scope": 1, "$scope": 2}"#,
                r#"{"$code": 5}"#,
                r#"{"$set": {"a.b": 1}}"#,
            ])
            .prop_map(raw),
        ]
        .boxed()
    }

    fn value(lossless: bool) -> impl Strategy<Value = Gen> {
        let leaf = prop_oneof![
            3 => number().prop_map(raw),
            3 => text().prop_map(raw),
            1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(raw),
            6 => wrapper(lossless),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                3 => prop::collection::vec((key(), inner.clone()), 0..6).prop_map(Gen::Object),
                2 => prop::collection::vec(inner.clone(), 0..5).prop_map(Gen::Array),
                1 => (
                    text(),
                    prop::collection::vec((key(), inner), 0..4),
                    prop::bool::ANY,
                )
                    .prop_map(|(code, scope, scope_first)| Gen::Code {
                        code,
                        scope: Box::new(Gen::Object(scope)),
                        scope_first,
                    }),
            ]
        })
    }

    fn document(lossless: bool) -> impl Strategy<Value = Gen> {
        prop::collection::vec((key(), value(lossless)), 0..8).prop_map(Gen::Object)
    }

    // --- properties -------------------------------------------------------------------------

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// With sorted, unique keys (so that bson's `BTreeMap`-backed route keeps the order),
        /// the bytes are identical, and errors happen for the same inputs.
        #[test]
        fn matches_bson_byte_for_byte(doc in document(false)) {
            let json = doc.to_json(true);
            if let Err(e) = same_bytes(&json) {
                prop_assert!(false, "{}", e);
            }
        }

        /// With keys in any order and repeated, the same documents up to key order.
        #[test]
        fn matches_bson_up_to_key_order(doc in document(false)) {
            let json = doc.to_json(false);
            if let Err(e) = same_sorted(&json) {
                prop_assert!(false, "{}", e);
            }
        }

        /// Wherever the scanner answers, its bytes are the serde path's.
        #[test]
        fn scanner_matches_the_serde_path(doc in document(false), exact in prop::bool::ANY) {
            let json = doc.to_json(exact);
            if let Some(fast) = scanned(&json) {
                let mut slow = Ctx { out: Vec::new(), err: None };
                let result = run_serde(json.as_bytes(), &json, &mut slow, 0);
                prop_assert!(result.is_ok(), "{}: scanner answered, serde path failed: {:?}", json, result);
                prop_assert_eq!(fast, slow.out, "{}", json);
            }
        }

        /// Keys keep their input order (first occurrence), values their last occurrence.
        #[test]
        fn keeps_key_order(keys in prop::collection::vec("[a-d]{1,2}", 0..60)) {
            let json = format!(
                "{{{}}}",
                keys.iter().enumerate().map(|(i, k)| format!("{}: {i}", json_str(k)))
                    .collect::<Vec<_>>().join(", ")
            );
            let bytes = ours(json.as_bytes()).expect("transcodes");
            let doc = bson::RawDocument::from_bytes(&bytes).expect("valid");
            let mut expected: Vec<(String, i32)> = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let i = i32::try_from(i).expect("small");
                match expected.iter_mut().find(|e| &e.0 == k) {
                    Some(e) => e.1 = i,
                    None => expected.push((k.clone(), i)),
                }
            }
            let got: Vec<(String, i32)> = doc
                .iter()
                .map(|e| {
                    let (k, v) = e.expect("valid");
                    (k.as_str().to_owned(), v.as_i32().expect("int32"))
                })
                .collect();
            prop_assert_eq!(got, expected);
        }

        /// The fast Decimal128 path agrees with bson's parser wherever it answers.
        #[test]
        fn plain_decimal128_matches_bson(
            s in prop_oneof![
                "[-+]?[0-9]{0,40}(\\.[0-9]{0,40})?",
                "[-+]?0{0,6}[0-9]{0,3}\\.?0{0,4}",
                "[-+.0-9eE]{0,8}",
            ]
        ) {
            let theirs = s.parse::<bson::Decimal128>().ok().map(|d| d.bytes());
            if let Some(bytes) = plain_decimal128(&s) {
                prop_assert_eq!(Some(bytes), theirs, "{}", s);
            }
        }

        /// The RFC 3339 reader agrees with bson's (the `time` crate).
        #[test]
        fn rfc3339_matches_bson(s in prop_oneof![rfc3339(), leap_second()]) {
            let theirs = bson::DateTime::parse_rfc3339_str(&s).ok().map(|d| d.timestamp_millis());
            prop_assert_eq!(parse_rfc3339(&s), theirs, "{}", s);
        }

        /// `write_document` output reads back to the same bytes, relaxed and canonical.
        #[test]
        fn write_document_round_trips(doc in document(true), canonical in prop::bool::ANY) {
            let json = doc.to_json(false);
            if let Ok(bytes) = ours(json.as_bytes()) {
                let raw = bson::RawDocument::from_bytes(&bytes).expect("valid");
                let mut text = String::new();
                write_document(raw, canonical, &mut text).expect("writes");
                let again = ours(text.as_bytes());
                prop_assert_eq!(again.as_ref(), Ok(&bytes), "{} -> {}", json, text);
            }
        }

        /// Any double survives `write_document` both ways.
        #[test]
        fn doubles_round_trip(f in any::<f64>(), canonical in prop::bool::ANY) {
            let doc = bson::doc! { "x": f };
            let bytes = doc.to_vec().expect("encodes");
            let mut text = String::new();
            write_document(bson::RawDocument::from_bytes(&bytes).expect("valid"), canonical, &mut text)
                .expect("writes");
            if f.is_nan() {
                let back = ours(text.as_bytes()).expect("reads");
                let back = bson::RawDocument::from_bytes(&back).expect("valid");
                prop_assert!(back.get_f64("x").expect("double").is_nan());
            } else {
                prop_assert_eq!(ours(text.as_bytes()), Ok(bytes), "{}", text);
            }
        }
    }

    // --- fixed cases ------------------------------------------------------------------------

    #[test]
    fn plain_json() {
        for json in [
            r#"{}"#,
            r#"{"a": 1, "b": -1, "c": 2147483648, "d": -2147483649, "e": 1.0, "f": -0}"#,
            r#"{"a": 9223372036854775807, "b": 9223372036854775808, "c": -9223372036854775808}"#,
            r#"{"a": 18446744073709551616, "b": 1e3, "c": 1E-3, "d": 0.1}"#,
            r#"{"s": "x\u0000y", "t": true, "f": false, "n": null, "é": "日本"}"#,
            r#"{"a": [1, [2, []], {}], "b": {"c": {"d": [null]}}}"#,
            r#"{"a": [0,1,2,3,4,5,6,7,8,9,10,11,12]}"#,
            r#"  {"a" : 1 }  "#,
        ] {
            check(json).expect("transcodes");
        }
    }

    #[test]
    fn number_mapping() {
        let doc = |json: &str| {
            let bytes = check(json).expect("transcodes");
            bson::Document::from_reader(bytes.as_slice()).expect("valid")
        };
        let d = doc(r#"{"i": 1, "l": 4294967296, "d": 1.0, "z": -0, "u": 9223372036854775808}"#);
        assert_eq!(d.get("i"), Some(&bson::Bson::Int32(1)));
        assert_eq!(d.get("l"), Some(&bson::Bson::Int64(4_294_967_296)));
        assert_eq!(d.get("d"), Some(&bson::Bson::Double(1.0)));
        let z = d.get_f64("z").expect("double");
        assert!(z == 0.0 && z.is_sign_negative());
        assert_eq!(
            d.get("u"),
            Some(&bson::Bson::Double(9_223_372_036_854_775_808.0))
        );
    }

    #[test]
    fn every_wrapper() {
        for json in [
            r#"{"a": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "b": {"$oid": "65A1B2C3D4E5F60718293A4B"}}"#,
            r#"{"a": {"$symbol": "s"}}"#,
            r#"{"a": {"$numberInt": "-7"}, "b": {"$numberInt": "+7"}, "c": {"$numberLong": "7"}}"#,
            r#"{"a": {"$numberDouble": "1.5"}, "b": {"$numberDouble": "-0.0"}, "c": {"$numberDouble": "1e400"}}"#,
            r#"{"a": {"$numberDouble": "Infinity"}, "b": {"$numberDouble": "-Infinity"}, "c": {"$numberDouble": "NaN"}}"#,
            r#"{"a": {"$numberDecimal": "1.23"}, "b": {"$numberDecimal": "-1E+6144"}, "c": {"$numberDecimal": "NaN"}}"#,
            r#"{"a": {"$binary": {"base64": "AQID", "subType": "00"}}, "b": {"$binary": {"subType": "80", "base64": ""}}}"#,
            r#"{"a": {"$binary": {"base64": "AQID", "subType": "02"}}}"#,
            r#"{"a": {"$uuid": "3b241101-e2bb-4255-8caf-4136c566a962"}}"#,
            r#"{"a": {"$uuid": "{3b241101-e2bb-4255-8caf-4136c566a962}"}, "b": {"$uuid": "3b241101e2bb42558caf4136c566a962"}}"#,
            r#"{"a": {"$code": "f()"}, "b": {"$code": "g()", "$scope": {"x": 1, "y": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}}"#,
            r#"{"a": {"$scope": {"x": 1}, "$code": "g()"}, "b": {"$code": "f()", "$scope": {"$oid": "not-a-wrapper-here"}}}"#,
            r#"{"a": {"$timestamp": {"t": 4294967295, "i": 1}}, "b": {"$timestamp": {"i": 2, "t": 1}}}"#,
            r#"{"a": {"$regularExpression": {"pattern": "^a.*", "options": "xmi"}}}"#,
            r#"{"a": {"$regex": "^a", "$options": "i"}}"#,
            r#"{"a": {"$dbPointer": {"$ref": "db.c", "$id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}}"#,
            r#"{"a": {"$date": "2024-01-01T00:00:00Z"}, "b": {"$date": "2024-02-29T23:59:59.999+05:30"}}"#,
            r#"{"a": {"$date": "1969-12-31T23:59:59.9995Z"}, "b": {"$date": "2016-12-31T23:59:60Z"}}"#,
            r#"{"a": {"$date": {"$numberLong": "-62135596800000"}}, "b": {"$date": 1700000000000}, "c": {"$date": -1}}"#,
            r#"{"a": {"$minKey": 1}, "b": {"$maxKey": 1}, "c": {"$undefined": true}}"#,
            r#"{"a": {"$ref": "c", "$id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}, "b": {"$set": {"x": 1}}}"#,
            r#"{"$oid": "top-level keys are never wrappers", "$date": 5}"#,
            r#"{"a": {"$timestamp": [1, 2]}, "b": {"$binary": ["AQID", "05"]}}"#,
            r#"{"a": {"\u0024oid": "65a1b2c3d4e5f60718293a4b"}, "\u0062": {"$date": {"$numberLong": "1", "$numberLong": "2"}}}"#,
            r#"{"a": {"$code": "x", "$scope": {"b": 1}, "$scope": null}, "b": {"$code": "y", "$scope": {"$scope": 1}}}"#,
            r#"{"a": {"$scope": {"x": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "w": 1, "v": 2}, "b": [3, 4]}}"#,
            r#"{"a": {"b": {"$minKey": 2}, "b": 1}, "c": {"d\u0000": 1}, "c": 2}"#,
        ] {
            check(json).unwrap_or_else(|| panic!("{json} should transcode"));
        }
    }

    #[test]
    fn change_events_match_bson() {
        let insert = r#"{"_id": {"_data": "8265A1B2C3000000012B022C0100296E5A1004"},
            "operationType": "insert",
            "clusterTime": {"$timestamp": {"t": 1705091779, "i": 1}},
            "wallTime": {"$date": "2024-01-12T20:36:19.123Z"},
            "fullDocument": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "customer": "Ada",
                "total": {"$numberDecimal": "1234.50"}, "placedAt": {"$date": {"$numberLong": "1705091779123"}},
                "items": [{"sku": "A-1", "qty": 2, "price": 9.99, "tags": ["x", "y"]},
                          {"sku": "B-2", "qty": 1, "price": {"$numberDouble": "100.0"}, "dims": [[1, 2], [3, 4]]}],
                "note": null, "gift": false, "n": {"$numberLong": "42"}},
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}"#;
        let update = r#"{"_id": {"_data": "8265A1B2C4000000012B"}, "operationType": "update",
            "clusterTime": {"$timestamp": {"t": 1705091780, "i": 3}},
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}},
            "updateDescription": {"updatedFields": {"items.0.qty": 3, "status": "paid",
                "paidAt": {"$date": "2024-01-12T20:36:20Z"}, "total": {"$numberDecimal": "1244.49"}},
                "removedFields": ["note"], "truncatedArrays": [{"field": "items", "newSize": 1}],
                "disambiguatedPaths": {}},
            "txnNumber": {"$numberLong": "12"}, "lsid": {"id": {"$binary": {"base64": "O0ERAeK7QlWMr0E2xWapYg==", "subType": "04"}},
                "uid": {"$binary": {"base64": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "subType": "00"}}}}"#;
        for event in [insert, update] {
            let bytes = same_sorted(event)
                .unwrap_or_else(|e| panic!("{e}"))
                .expect("transcodes");
            // Field order is the input's.
            let doc = bson::RawDocument::from_bytes(&bytes).expect("valid");
            let keys: Vec<&str> = doc.iter().map(|e| e.expect("valid").0.as_str()).collect();
            assert_eq!(keys[..2], ["_id", "operationType"]);
        }
        let doc = bson::Document::from_reader(ours(insert.as_bytes()).expect("ok").as_slice())
            .expect("valid");
        let full = doc.get_document("fullDocument").expect("doc");
        assert_eq!(full.get_str("customer").ok(), Some("Ada"));
        assert_eq!(
            full.get_decimal128("total").map(|d| d.to_string()).ok(),
            Some("1234.50".to_owned())
        );
        assert_eq!(
            doc.get_timestamp("clusterTime").ok(),
            Some(bson::Timestamp {
                time: 1_705_091_779,
                increment: 1
            })
        );
        assert_eq!(
            doc.get_datetime("wallTime")
                .map(|d| d.timestamp_millis())
                .ok(),
            Some(1_705_091_779_123)
        );
    }

    #[test]
    fn repeated_keys() {
        // First position, last value (a `serde_json::Map`'s rule).
        let bytes = ours(br#"{"b": 1, "a": {"x": 1}, "b": "two", "c": 3, "a": 4}"#).expect("ok");
        let expected = bson::doc! { "b": "two", "a": 4, "c": 3 }
            .to_vec()
            .expect("encodes");
        assert_eq!(bytes, expected);
        same_sorted(r#"{"b": 1, "a": {"x": 1}, "b": "two", "c": 3, "a": 4}"#).expect("same");
        // Enough keys to switch to the hash index.
        let mut json = String::from("{");
        for i in 0..100 {
            let _ = write!(json, r#""k{}": {i},"#, i % 40);
        }
        json.push_str(r#""end": 0}"#);
        let bytes = same_sorted(&json).expect("same").expect("ok");
        let doc = bson::RawDocument::from_bytes(&bytes).expect("valid");
        assert_eq!(doc.iter().count(), 41);
        assert_eq!(doc.get_i32("k0").ok(), Some(80));
        assert_eq!(
            doc.iter().next().expect("first").expect("valid").0.as_str(),
            "k0"
        );
    }

    #[test]
    fn scope_first_object_keeps_order() {
        // An object that starts with `$scope` is read whole before it is written: its values
        // keep their key order too.
        let bytes =
            ours(br#"{"a": {"$scope": {"z": 1, "y": 2}, "x": {"c": 1, "b": 2}}}"#).expect("ok");
        let expected =
            bson::doc! { "a": { "$scope": { "z": 1, "y": 2 }, "x": { "c": 1, "b": 2 } } };
        assert_eq!(bytes, expected.to_vec().expect("encodes"));
    }

    #[test]
    fn appends_and_leaves_output_alone_on_error() {
        let mut out = vec![1, 2, 3];
        transcode(br#"{"a": 1}"#, &mut out).expect("ok");
        assert_eq!(out[..3], [1, 2, 3]);
        assert_eq!(
            out[3..],
            bson::doc! { "a": 1 }.to_vec().expect("encodes")[..]
        );
        let before = out.clone();
        assert!(transcode(br#"{"a": {"b": [1, {"$oid": "x"}]}}"#, &mut out).is_err());
        assert_eq!(out, before);
    }

    #[test]
    fn errors() {
        assert!(matches!(ours(b"{\"a\": 1"), Err(ExtJsonError::Syntax(m)) if m.contains("line 1")));
        assert!(matches!(
            ours(b"{\"a\": 1} x"),
            Err(ExtJsonError::Syntax(_))
        ));
        assert!(matches!(ours(b""), Err(ExtJsonError::Syntax(_))));
        // A syntax error after a bad wrapper is still a syntax error.
        assert!(matches!(
            ours(br#"{"a": {"$oid": "x"}, "b": }"#),
            Err(ExtJsonError::Syntax(_))
        ));
        // serde_json's nesting limit, in both routes.
        let deep = format!("{}1{}", r#"{"a":["#.repeat(100), "]}".repeat(100));
        assert!(matches!(
            ours(deep.as_bytes()),
            Err(ExtJsonError::Syntax(_))
        ));
        assert!(reference(deep.as_bytes()).is_err());
        let deep = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        assert_eq!(
            ours(deep.as_bytes()).is_ok(),
            reference(deep.as_bytes()).is_ok()
        );
        for json in ["[1]", "1", "\"x\"", "null", " true"] {
            assert_eq!(
                ours(json.as_bytes()),
                Err(ExtJsonError::NotADocument),
                "{json}"
            );
        }
        assert_eq!(
            ours(br#"{"a\u0000b": 1}"#),
            Err(ExtJsonError::NulInKey("a\0b".to_owned()))
        );
        assert!(matches!(
            ours(br#"{"a": {"x\u0000": 1}}"#),
            Err(ExtJsonError::NulInKey(_))
        ));
        for (json, wrapper) in [
            (r#"{"a": {"$oid": "xyz"}}"#, "$oid"),
            (r#"{"a": {"$numberLong": "1.5"}}"#, "$numberLong"),
            (r#"{"a": {"$numberInt": "2147483648"}}"#, "$numberInt"),
            (r#"{"a": {"$numberDouble": "one"}}"#, "$numberDouble"),
            (r#"{"a": {"$numberDecimal": "1.2.3"}}"#, "$numberDecimal"),
            (
                r#"{"a": {"$binary": {"base64": "A", "subType": "00"}}}"#,
                "$binary",
            ),
            (
                r#"{"a": {"$binary": {"base64": "", "subType": "0"}}}"#,
                "$binary",
            ),
            (r#"{"a": {"$binary": "AQID", "$type": "00"}}"#, "$binary"),
            (r#"{"a": {"$uuid": "3b241101-e2bb-4255-8caf"}}"#, "$uuid"),
            (r#"{"a": {"$code": 1}}"#, "$code"),
            (r#"{"a": {"$code": "f", "$scope": []}}"#, "$code"),
            (r#"{"a": {"$timestamp": {"t": 1}}}"#, "$timestamp"),
            (
                r#"{"a": {"$regularExpression": {"pattern": "a\u0000", "options": ""}}}"#,
                "$regularExpression",
            ),
            (
                r#"{"a": {"$dbPointer": {"$ref": "c", "$id": "65a1b2c3d4e5f60718293a4b"}}}"#,
                "$dbPointer",
            ),
            (r#"{"a": {"$date": "2023-02-29T00:00:00Z"}}"#, "$date"),
            (r#"{"a": {"$date": "2016-12-30T23:59:60Z"}}"#, "$date"),
            (r#"{"a": {"$date": 1.5}}"#, "$date"),
            (r#"{"a": {"$minKey": 0}}"#, "$minKey"),
            (r#"{"a": {"$maxKey": 2}}"#, "$maxKey"),
            (r#"{"a": {"$undefined": false}}"#, "$undefined"),
            (r#"{"a": {"$symbol": 1}}"#, "$symbol"),
            (
                r#"{"a": {"$oid": "65a1b2c3d4e5f60718293a4b", "x": 1}}"#,
                "$oid",
            ),
            (r#"{"a": {"x": 1, "$date": 5}}"#, "$date"),
            (r#"{"a": {"$scope": {}, "$date": 5}}"#, "$date"),
        ] {
            assert_eq!(bad_wrapper_name(json), wrapper, "{json}");
            let message = ours(json.as_bytes()).expect_err("fails").to_string();
            assert!(message.contains(wrapper), "{message}");
            assert!(reference(json.as_bytes()).is_err(), "bson accepts {json}");
        }
        // Over 16 MiB.
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_DOCUMENT_SIZE));
        assert_eq!(ours(big.as_bytes()), Err(ExtJsonError::TooLarge));
        let many = format!(r#"{{"a": [{}1]}}"#, "1,".repeat(MAX_DOCUMENT_SIZE / 8));
        assert_eq!(ours(many.as_bytes()), Err(ExtJsonError::TooLarge));
    }

    #[test]
    fn write_document_forms() {
        let json = r#"{"i": 1, "l": {"$numberLong": "5"}, "L": 5000000000, "d": 2.0, "z": -0.0,
            "n": {"$numberDouble": "NaN"}, "s": "a\"b\u0001", "t": {"$timestamp": {"t": 1, "i": 2}},
            "dt": {"$date": "2024-01-01T00:00:00.120Z"}, "old": {"$date": -1},
            "b": {"$binary": {"base64": "AQID", "subType": "02"}}, "o": {"$oid": "65a1b2c3d4e5f60718293a4b"},
            "r": {"$regularExpression": {"pattern": "a", "options": "mi"}},
            "p": {"$dbPointer": {"$ref": "db.c", "$id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}},
            "c": {"$code": "f()", "$scope": {"x": [1, {"$minKey": 1}]}}, "u": {"$undefined": true},
            "dec": {"$numberDecimal": "1.50"}, "sym": {"$symbol": "s"}, "arr": [[], {}, {"$maxKey": 1}]}"#;
        let bytes = ours(json.as_bytes()).expect("ok");
        let doc = bson::RawDocument::from_bytes(&bytes).expect("valid");
        let mut relaxed = String::new();
        write_document(doc, false, &mut relaxed).expect("writes");
        assert_eq!(
            relaxed,
            concat!(
                r#"{"i":1,"l":{"$numberLong":"5"},"L":5000000000,"d":2.0,"z":-0.0,"#,
                r#""n":{"$numberDouble":"NaN"},"s":"a\"b\u0001","t":{"$timestamp":{"t":1,"i":2}},"#,
                r#""dt":{"$date":"2024-01-01T00:00:00.12Z"},"old":{"$date":{"$numberLong":"-1"}},"#,
                r#""b":{"$binary":{"base64":"AQID","subType":"02"}},"o":{"$oid":"65a1b2c3d4e5f60718293a4b"},"#,
                r#""r":{"$regularExpression":{"pattern":"a","options":"im"}},"#,
                r#""p":{"$dbPointer":{"$ref":"db.c","$id":{"$oid":"65a1b2c3d4e5f60718293a4b"}}},"#,
                r#""c":{"$code":"f()","$scope":{"x":[1,{"$minKey":1}]}},"u":{"$undefined":true},"#,
                r#""dec":{"$numberDecimal":"1.50"},"sym":{"$symbol":"s"},"arr":[[],{},{"$maxKey":1}]}"#,
            )
        );
        let mut canonical = String::new();
        write_document(doc, true, &mut canonical).expect("writes");
        assert!(canonical.starts_with(
            r#"{"i":{"$numberInt":"1"},"l":{"$numberLong":"5"},"L":{"$numberLong":"5000000000"},"d":{"$numberDouble":"2.0"},"z":{"$numberDouble":"-0.0"}"#
        ));
        assert!(canonical.contains(r#""dt":{"$date":{"$numberLong":"1704067200120"}}"#));
        for text in [&relaxed, &canonical] {
            assert_eq!(ours(text.as_bytes()).as_ref(), Ok(&bytes), "{text}");
        }
        // The same text as bson's own writer where the forms agree (keys sorted, no int64
        // below 2^31).
        let sorted = r#"{"a": {"$date": "2024-05-06T07:08:09.001Z"}, "b": [1.5, 1e300, {"$binary": {"base64": "AA==", "subType": "04"}}], "c": {"$symbol": "s"}}"#;
        let bytes = ours(sorted.as_bytes()).expect("ok");
        let theirs = bson::Document::from_reader(bytes.as_slice()).expect("valid");
        for canonical in [false, true] {
            let mut mine = String::new();
            write_document(
                bson::RawDocument::from_bytes(&bytes).expect("valid"),
                canonical,
                &mut mine,
            )
            .expect("writes");
            let value = if canonical {
                bson::Bson::Document(theirs.clone()).into_canonical_extjson()
            } else {
                bson::Bson::Document(theirs.clone()).into_relaxed_extjson()
            };
            assert_eq!(mine, value.to_string());
        }
    }

    #[test]
    fn write_document_rejects_malformed_bson() {
        // A string element whose bytes are not UTF-8.
        let bytes = [14, 0, 0, 0, 0x02, b'a', 0, 2, 0, 0, 0, 0xff, 0, 0];
        let doc = bson::RawDocument::from_bytes(&bytes).expect("header is fine");
        let mut out = String::from("keep");
        let err = write_document(doc, false, &mut out).expect_err("not UTF-8");
        assert!(matches!(err, ExtJsonError::Syntax(m) if m.starts_with("malformed BSON")));
        assert_eq!(out, "keep");
    }

    #[test]
    fn text_that_is_not_utf8_is_a_syntax_error_as_in_bson() {
        // In a string, in a key, and after a bad wrapper (the syntax error still wins).
        let cases: [&[u8]; 3] = [
            b"{\"a\": \"x\xff\"}",
            b"{\"\xfe\": 1}",
            b"{\"x\": {\"$oid\": \"bad\"}, \"a\": \"\xc3\"}",
        ];
        for json in cases {
            let theirs = reference(json);
            assert!(
                theirs.as_ref().is_err_and(|e| e.starts_with("syntax")),
                "{theirs:?}"
            );
            let mut out = vec![1, 2, 3];
            let mine = transcode(json, &mut out);
            assert!(matches!(mine, Err(ExtJsonError::Syntax(_))), "{mine:?}");
            assert_eq!(out, [1, 2, 3], "nothing written on error");
        }
    }
}
