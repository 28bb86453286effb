//! The fast path of [`transcode`](super::transcode): a hand-written scanner for the shapes
//! change events are made of, which declines anything else.
//!
//! ```text
//!   line (valid UTF-8) ──▶ scan ──answers──▶ BSON bytes          (the common case)
//!                           │
//!                           └─declines──▶ serde path (super::run) ──▶ BSON bytes or the error
//! ```
//!
//! The serde path is the reference: wherever the scanner answers, its bytes are the serde
//! path's (and so bson's route's; `super::tests` checks both on generated documents). It answers
//! only when every part of the text is one of:
//!
//! * an object with distinct keys (at most [`MAX_KEYS`]), an array, `true`, `false`, `null`;
//! * a string or key without escapes or control characters;
//! * a number `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 15 digits, so that the double a
//!   fraction gives is the correctly rounded `digits / 10^k` (the serde path computes exactly
//!   that; with more digits or an exponent its rounding is its own);
//! * in a nested object, a wrapper key first and alone (`{"$oid": …}`, `{"$date": …}`): its
//!   body is read into the serde path's [`Small`] tree and written by the serde path's own
//!   [`emit`], so wrappers have one implementation. A wrapper key anywhere else, a `$scope`
//!   first, a body the wrapper rejects: declined (the serde path then reports the error exactly
//!   as bson's route would, including which error wins).
//!
//! A declined line costs one partial scan before the serde path runs; change-event streams are
//! almost all answered.

use std::borrow::Cow;

use super::{Ctx, KeyClass, MAX_DOCUMENT_SIZE, ScopeKind, Small, classify, emit, write_index};
use crate::raw::kind as ty;

/// Objects with more keys than this are declined (repeated keys are found by a scan).
const MAX_KEYS: usize = 64;

/// Nesting deeper than this is declined (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// Exact powers of ten, `10^0 ..= 10^15`.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Transcodes `text` (whose first non-blank byte is `{`) into `ctx.out`, or returns `None`,
/// leaving `ctx.out` to be truncated by the caller, when the text is not of the shapes above.
pub(super) fn transcode(text: &str, ctx: &mut Ctx) -> Option<()> {
    let start = ctx.out.len();
    let mut scan = Scanner {
        text,
        b: text.as_bytes(),
        pos: 0,
        ctx,
        keys: Vec::new(),
        depth: 0,
    };
    scan.blank();
    scan.object(false)?;
    scan.blank();
    (scan.pos == scan.b.len() && scan.ctx.out.len() - start <= MAX_DOCUMENT_SIZE).then_some(())
}

/// Whether a byte ends a plain string: `"`, `\\`, or a control byte (below 0x20).
fn is_special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The position of the first [`is_special`] byte of `bytes`, read eight bytes at a time.
///
/// In each little-endian word, `(x - 0x01…01) & !x & 0x80…80` flags the bytes of `x` that are
/// zero, and `(w - 0x20…20) & !w & 0x80…80` the bytes of `w` below 0x20. A borrow can flag a
/// byte falsely only above a byte that is truly flagged, so the lowest flag is always right.
fn special_byte(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let found = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    rest.iter().position(|&c| is_special(c)).map(|i| at + i)
}

/// A number as serde_json hands it to a visitor.
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

struct Scanner<'t, 'c> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    ctx: &'c mut Ctx,
    /// The keys of the objects being written, innermost last, as spans of `b`.
    keys: Vec<(usize, usize)>,
    depth: usize,
}

impl<'t> Scanner<'t, '_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn blank(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after blanks).
    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.blank();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Consumes `word` (`true`, `false`, `null`).
    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.b.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string without escapes or control characters, the opening quote next; returns its
    /// span.
    #[inline]
    fn string(&mut self) -> Option<(usize, usize)> {
        self.pos += 1;
        let start = self.pos;
        let end = start + special_byte(&self.b[start..])?;
        (self.b[end] == b'"').then(|| {
            self.pos = end + 1;
            (start, end)
        })
    }

    fn number(&mut self) -> Option<Number> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut significand = 0u64;
        let mut digits = 0usize;
        let mut fraction = 0usize;
        match self.peek()? {
            b'0' => {
                self.pos += 1;
                digits = 1;
            }
            b'1'..=b'9' => {
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    significand = significand * 10 + u64::from(d - b'0');
                    digits += 1;
                    self.pos += 1;
                    if digits > 15 {
                        return None;
                    }
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                significand = significand * 10 + u64::from(d - b'0');
                digits += 1;
                fraction += 1;
                self.pos += 1;
                if digits > 15 {
                    return None;
                }
            }
            if fraction == 0 {
                return None;
            }
        }
        if let Some(b'0'..=b'9' | b'e' | b'E' | b'.') = self.peek() {
            return None;
        }
        Some(if fraction > 0 {
            let f = significand as f64 / POW10[fraction];
            Number::F64(if negative { -f } else { f })
        } else if !negative {
            Number::U64(significand)
        } else if significand == 0 {
            // serde_json reads `-0` as a double.
            Number::F64(-0.0)
        } else {
            Number::I64(-(significand as i64))
        })
    }

    /// Writes any value; returns its BSON element type.
    fn value(&mut self) -> Option<u8> {
        self.blank();
        Some(match self.peek()? {
            b'"' => {
                let (s, e) = self.string()?;
                let len = i32::try_from(e - s + 1).ok()?;
                let out = &mut self.ctx.out;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&self.b[s..e]);
                out.push(0);
                ty::STRING
            }
            b'{' => self.object(true)?,
            b'[' => self.array()?,
            b't' => {
                self.word(b"true")?;
                self.ctx.out.push(1);
                ty::BOOLEAN
            }
            b'f' => {
                self.word(b"false")?;
                self.ctx.out.push(0);
                ty::BOOLEAN
            }
            b'n' => {
                self.word(b"null")?;
                ty::NULL
            }
            b'-' | b'0'..=b'9' => {
                let n = self.number()?;
                let out = &mut self.ctx.out;
                let as_int = |out: &mut Vec<u8>, v: i64| match i32::try_from(v) {
                    Ok(i) => {
                        out.extend_from_slice(&i.to_le_bytes());
                        ty::INT32
                    }
                    Err(_) => {
                        out.extend_from_slice(&v.to_le_bytes());
                        ty::INT64
                    }
                };
                match n {
                    // At most 15 digits: always within i64.
                    Number::U64(v) => as_int(out, i64::try_from(v).ok()?),
                    Number::I64(v) => as_int(out, v),
                    Number::F64(f) => {
                        out.extend_from_slice(&f.to_le_bytes());
                        ty::DOUBLE
                    }
                }
            }
            _ => return None,
        })
    }

    /// Reads the container that starts here (`{` or `[`) up to `close`. `each` reads one
    /// element and says whether the container goes on (`true`), or has been read to its end by
    /// it (`false`: a wrapper reads its own closing brace).
    fn container(
        &mut self,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<bool>,
    ) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        self.blank();
        if self.peek()? == close {
            self.pos += 1;
        } else {
            while each(self)? {
                self.blank();
                match self.peek()? {
                    b',' => self.pos += 1,
                    c if c == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// A key (the opening quote next, after blanks), then its colon; returns its span.
    fn key(&mut self) -> Option<(usize, usize)> {
        self.blank();
        if self.peek()? != b'"' {
            return None;
        }
        let span = self.string()?;
        self.expect(b':')?;
        Some(span)
    }

    /// Writes the object that starts here: a document, or (when `detect` and its first key is a
    /// wrapper key) the wrapper's value. Returns the element type.
    fn object(&mut self, detect: bool) -> Option<u8> {
        let start = self.ctx.out.len();
        self.ctx.out.extend_from_slice(&[0; 4]);
        let first_key = self.keys.len();
        let mut wrapped = None;
        self.container(b'}', |scan| {
            let (s, e) = scan.key()?;
            let key = &scan.b[s..e];
            let first = scan.keys.len() == first_key;
            match classify(key) {
                KeyClass::Plain => {}
                KeyClass::Wrapper(w) if detect && first => {
                    scan.ctx.out.truncate(start);
                    wrapped = Some(scan.wrapper(w)?);
                    return Some(false);
                }
                // A wrapper key after others is an error, a `$scope` first may be code with
                // scope: the serde path decides.
                KeyClass::Wrapper(_) if detect => return None,
                KeyClass::Scope if detect && first => return None,
                KeyClass::Wrapper(_) | KeyClass::Scope => {}
            }
            let mine = &scan.keys[first_key..];
            // Keys of one length rarely share a first byte: test that before the bytes.
            let repeated = |&(a, z): &(usize, usize)| {
                z - a == key.len() && scan.b.get(a) == key.first() && &scan.b[a..z] == key
            };
            if mine.len() >= MAX_KEYS || mine.iter().any(repeated) {
                return None;
            }
            scan.keys.push((s, e));
            let out = &mut scan.ctx.out;
            let elem = out.len();
            out.push(0);
            out.extend_from_slice(key);
            out.push(0);
            let t = scan.value()?;
            scan.ctx.out[elem] = t;
            Some(true)
        })?;
        if wrapped.is_some() {
            return wrapped;
        }
        self.keys.truncate(first_key);
        self.finish(start);
        Some(ty::DOCUMENT)
    }

    fn array(&mut self) -> Option<u8> {
        let start = self.ctx.out.len();
        self.ctx.out.extend_from_slice(&[0; 4]);
        let mut index = 0;
        self.container(b']', |scan| {
            let elem = scan.ctx.out.len();
            scan.ctx.out.push(0);
            write_index(&mut scan.ctx.out, index);
            let t = scan.value()?;
            scan.ctx.out[elem] = t;
            index += 1;
            Some(true)
        })?;
        self.finish(start);
        Some(ty::ARRAY)
    }

    /// Closes the document or array that starts at `start`: terminator, then its length.
    fn finish(&mut self, start: usize) {
        let out = &mut self.ctx.out;
        out.push(0);
        // Sizes past the limit make the whole line decline (checked at the end).
        let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// A wrapper object whose key `w` and colon have been read: its body, then the closing
    /// brace.
    fn wrapper(&mut self, w: super::Wrapper) -> Option<u8> {
        let body = self.small()?;
        self.expect(b'}')?;
        let at = self.ctx.out.len();
        emit(self.ctx, w, &body, ScopeKind::Absent, at).ok()
    }

    /// A wrapper's body, as the serde path reads it into a [`Small`] tree.
    fn small(&mut self) -> Option<Small<'t>> {
        self.blank();
        Some(match self.peek()? {
            b'"' => {
                let (s, e) = self.string()?;
                Small::Str(Cow::Borrowed(self.text.get(s..e)?))
            }
            b'{' => {
                let mut entries = Vec::new();
                self.container(b'}', |scan| {
                    let (s, e) = scan.key()?;
                    entries.push((Cow::Borrowed(scan.text.get(s..e)?), scan.small()?));
                    Some(true)
                })?;
                Small::Map(entries)
            }
            b'[' => {
                let mut items = Vec::new();
                self.container(b']', |scan| {
                    items.push(scan.small()?);
                    Some(true)
                })?;
                Small::Seq(items)
            }
            b't' => {
                self.word(b"true")?;
                Small::Bool(true)
            }
            b'f' => {
                self.word(b"false")?;
                Small::Bool(false)
            }
            b'n' => {
                self.word(b"null")?;
                Small::Null
            }
            b'-' | b'0'..=b'9' => match self.number()? {
                Number::U64(v) => Small::U64(v),
                Number::I64(v) => Small::I64(v),
                Number::F64(f) => Small::F64(f),
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The word-at-a-time search finds what a byte-by-byte one finds.
        #[test]
        fn special_byte_matches_a_plain_search(
            bytes in prop::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0x18u8..0x24, 0x5au8..0x5f],
                0..40,
            )
        ) {
            let plain = bytes.iter().position(|&c| is_special(c));
            prop_assert_eq!(special_byte(&bytes), plain);
        }
    }
}
