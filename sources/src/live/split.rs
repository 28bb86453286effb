//! Reassembling events split by `$changeStreamSplitLargeEvent`.
//!
//! An event over 16 MB arrives as fragments `{_id, splitEvent: {fragment: k, of: n}, …fields}`,
//! `k = 1..=n`, each with its own resume token and a share of the top-level fields, in order.
//! The [`Reassembler`] joins them back into one event before it leaves the source:
//!
//! * the fields of fragments `1..=n`, in order, without `splitEvent`;
//! * `_id` is the *last* fragment's token: resuming after it resumes after the whole event.
//!
//! A fragment out of sequence (a different `of`, a skipped number, an unsplit event in the
//! middle) is an error: the source restarts from the last whole event's token instead of
//! emitting a partial one.
//!
//! ```
//! use changeflow_core::Document;
//! use changeflow_sources::live::split::Reassembler;
//! let f1 = Document::from(bson::rawdoc! { "_id": { "_data": "8200000001000000012B01" }, "operationType": "insert",
//!     "splitEvent": { "fragment": 1, "of": 2 } });
//! let f2 = Document::from(bson::rawdoc! { "_id": { "_data": "8200000001000000012B02" }, "fullDocument": { "x": 1 },
//!     "splitEvent": { "fragment": 2, "of": 2 } });
//! let mut r = Reassembler::default();
//! assert!(r.push(f1).unwrap().is_none());
//! let whole = r.push(f2).unwrap().unwrap();
//! assert_eq!(whole.get("_id").unwrap().unwrap().as_document().map(|_| ()), Some(()));
//! assert!(whole.get("splitEvent").unwrap().is_none());
//! assert!(whole.get("fullDocument").unwrap().is_some());
//! ```

use changeflow_core::Document;
use changeflow_core::raw::{self, DocWriter};

/// Collects fragments until an event is whole.
#[derive(Debug, Default)]
pub struct Reassembler {
    parts: Vec<Document>,
    of: i64,
}

fn split_of(doc: &Document) -> Result<Option<(i64, i64)>, String> {
    let Some(split) = doc.get("splitEvent").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let bytes = split
        .as_document()
        .ok_or("`splitEvent` must be a document")?;
    let field = |name: &str| {
        raw::get(bytes, name)
            .ok()
            .flatten()
            .and_then(|e| e.as_i64())
            .ok_or_else(|| format!("`splitEvent.{name}` must be a number"))
    };
    Ok(Some((field("fragment")?, field("of")?)))
}

impl Reassembler {
    /// Whether fragments of an unfinished event are held.
    pub fn is_pending(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Drops held fragments (the stream restarts from the last whole event).
    pub fn clear(&mut self) {
        self.parts.clear();
        self.of = 0;
    }

    /// Takes one document from the stream: a whole event comes back at once, a fragment is
    /// held until the last one arrives.
    pub fn push(&mut self, doc: Document) -> Result<Option<Document>, String> {
        let Some((fragment, of)) = split_of(&doc)? else {
            if self.is_pending() {
                return Err(format!(
                    "an unsplit event arrived after fragment {} of {}",
                    self.parts.len(),
                    self.of
                ));
            }
            return Ok(Some(doc));
        };
        if of < 1 || fragment < 1 || fragment > of {
            return Err(format!("fragment {fragment} of {of} is impossible"));
        }
        if self.parts.is_empty() {
            self.of = of;
        }
        let expected = self.parts.len() as i64 + 1;
        if of != self.of || fragment != expected {
            return Err(format!(
                "fragment {fragment} of {of} arrived where fragment {expected} of {} was expected",
                self.of
            ));
        }
        self.parts.push(doc);
        if fragment < of {
            return Ok(None);
        }
        let parts = std::mem::take(&mut self.parts);
        self.of = 0;
        let total: usize = parts.iter().map(|p| p.as_bytes().len()).sum();
        let mut w = DocWriter::with_capacity(total);
        if let Some(last) = parts.last()
            && let Ok(Some(id)) = last.get("_id")
        {
            w.append(id.kind, "_id", id.value);
        }
        for part in &parts {
            for element in part.elements() {
                let e = element.map_err(|e| e.to_string())?;
                if matches!(e.key, b"_id" | b"splitEvent") {
                    continue;
                }
                let key = std::str::from_utf8(e.key).map_err(|e| e.to_string())?;
                w.append(e.kind, key, e.value);
            }
        }
        Ok(Some(Document::from_trusted(w.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(k: i32, of: i32) -> Document {
        Document::from(
            bson::rawdoc! { "_id": { "_data": format!("82AA{k:02}") }, "splitEvent": { "fragment": k, "of": of } },
        )
    }

    #[test]
    fn out_of_order_fragments_are_refused() {
        let mut r = Reassembler::default();
        assert!(r.push(fragment(2, 2)).is_err());
        let mut r = Reassembler::default();
        r.push(fragment(1, 3)).unwrap();
        assert!(r.push(fragment(3, 3)).is_err());
        let mut r = Reassembler::default();
        r.push(fragment(1, 2)).unwrap();
        assert!(r.push(Document::from(bson::rawdoc! { "_id": 1 })).is_err());
        r.clear();
        assert!(!r.is_pending());
    }
}
