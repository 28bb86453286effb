//! [`Document`]: a BSON document kept as its bytes.
//!
//! Every document that flows through changeflow (a change event, a `fullDocument`, a version in
//! document state) is a `Document`: an immutable, reference-counted byte buffer holding one
//! well-formed BSON document. Cloning is a reference-count increment; equality, hashing and
//! ordering are on the bytes, so a `Document` can be data, key or value in differential.
//!
//! # Invariants
//!
//! * The bytes are one complete BSON document (checked when built from untrusted bytes with
//!   [`Document::from_bytes`]; [`Document::from_trusted`] is for bytes changeflow wrote itself).
//! * Ordering is byte order, a cheap total order for arrangements. It is *not* MongoDB's
//!   comparison order; views that sort by value use typed values instead.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::raw::{self, RawError};

/// One BSON document as immutable shared bytes.
///
/// ```
/// use changeflow_core::Document;
/// let doc = Document::from_bytes(bson::rawdoc! { "x": 1 }.into_bytes()).unwrap();
/// assert_eq!(doc.get("x").unwrap().unwrap().as_i64(), Some(1));
/// let copy = doc.clone(); // cheap: shares the bytes
/// assert_eq!(copy, doc);
/// assert!(Document::from_bytes(vec![1, 2, 3]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Document(Arc<[u8]>);

impl Document {
    /// Wraps `bytes` after checking, recursively, that they form one BSON document.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, RawError> {
        let bytes = bytes.into();
        raw::validate(&bytes)?;
        Ok(Document(bytes.into()))
    }
    /// Wraps bytes that changeflow produced itself (the transcoder, the document writer).
    ///
    /// Malformed bytes are not undefined behaviour: readers report them as [`RawError`]s.
    pub fn from_trusted(bytes: impl Into<Arc<[u8]>>) -> Self {
        Document(bytes.into())
    }
    /// The empty document `{}`.
    pub fn empty() -> Self {
        Document(Arc::from(&[5u8, 0, 0, 0, 0][..]))
    }
    /// The BSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The bytes as a `bson` crate raw document, for APIs that take one.
    pub fn as_raw(&self) -> Result<&bson::RawDocument, bson::error::Error> {
        bson::RawDocument::from_bytes(&self.0)
    }
    /// The document's elements, in order.
    pub fn elements(&self) -> raw::Elements<'_> {
        raw::elements(&self.0)
    }
    /// A top-level field by key.
    pub fn get(&self, key: &str) -> Result<Option<raw::Element<'_>>, RawError> {
        raw::get(&self.0, key)
    }
    /// Converts to an owned `bson::Document` (allocates; for tests, display and slow paths).
    pub fn to_bson(&self) -> Result<bson::Document, bson::error::Error> {
        bson::Document::try_from(self.as_raw()?)
    }
    /// Relaxed Extended JSON text of this document (for messages and changelogs).
    pub fn to_relaxed_json(&self) -> String {
        let mut out = String::new();
        match self.as_raw() {
            Ok(doc) if crate::extjson::write_document(doc, false, &mut out).is_ok() => out,
            _ => format!("<malformed BSON, {} bytes>", self.0.len()),
        }
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_relaxed_json())
    }
}

impl From<bson::RawDocumentBuf> for Document {
    fn from(doc: bson::RawDocumentBuf) -> Self {
        Document(doc.into_bytes().into())
    }
}

impl TryFrom<&bson::Document> for Document {
    type Error = bson::error::Error;
    fn try_from(doc: &bson::Document) -> Result<Self, Self::Error> {
        Ok(Document(doc.to_vec()?.into()))
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("BSON document bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Document, E> {
                Ok(Document(Arc::from(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Document, E> {
                Ok(Document(v.into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Document, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(Document(bytes.into()))
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}
