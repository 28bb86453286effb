//! [`ResumeToken`]: where a change stream is, and so the frontier of a source.
//!
//! A resume token is the `_id` of a change event (or a cursor's `postBatchResumeToken`). changeflow
//! keeps it whole and opaque, except for two facts about MongoDB's `{_data: "<hex>"}` tokens:
//!
//! * `_data` is a hex KeyString whose first byte is `0x82`, followed by the cluster time's `t` and
//!   `i` as big-endian `u32`s; [`ResumeToken::cluster_time`] decodes that prefix.
//! * `_data` strings compare in stream order (`mongos` merges shard streams by sorting them), so
//!   tokens with `_data` are ordered by that string.
//!
//! Tokens without a string `_data` (Cosmos DB's opaque tokens, binary `_data` from very old
//! servers) order after all `_data` tokens, by their bytes; their frontier comes from events.
//!
//! ```
//! use changeflow_core::{ClusterTime, ResumeToken};
//! let a = ResumeToken::from_data("8265A1B2C3000000022B0229296E04");
//! let b = ResumeToken::from_data("8265A1B2C3000000032B0229296E04");
//! assert!(a < b);
//! assert_eq!(a.cluster_time(), Some(ClusterTime::new(0x65A1B2C3, 2)));
//! ```

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::raw::{self, DocWriter};
use crate::{ClusterTime, Document};

/// A change stream resume token: the raw `_id` document, kept whole.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumeToken(Document);

impl ResumeToken {
    /// Wraps a raw `_id` document.
    pub fn from_document(id: Document) -> Self {
        ResumeToken(id)
    }
    /// The token `{_data: data}`.
    pub fn from_data(data: &str) -> Self {
        let mut w = DocWriter::new();
        w.append_str("_data", data);
        ResumeToken(Document::from_trusted(w.finish()))
    }
    /// The raw `_id` document, as it must be handed back to `resumeAfter` / `startAfter`.
    pub fn document(&self) -> &Document {
        &self.0
    }
    /// The `_data` string, if this is a MongoDB KeyString token.
    pub fn data(&self) -> Option<&str> {
        data_of(self.0.as_bytes())
    }
    /// The cluster time encoded at the front of `_data`, if present and well-formed.
    pub fn cluster_time(&self) -> Option<ClusterTime> {
        self.data().and_then(cluster_time_of_data)
    }
}

/// The `_data` string of a raw `_id` document, if it has one.
pub(crate) fn data_of(id: &[u8]) -> Option<&str> {
    raw::get(id, "_data")
        .ok()
        .flatten()
        .and_then(|e| e.as_str())
}

/// Decodes the cluster time from a `_data` hex string: `82`, then `t` and `i` as 8 hex digits
/// each (big-endian).
///
/// ```
/// use changeflow_core::{resume_token::cluster_time_of_data, ClusterTime};
/// assert_eq!(cluster_time_of_data("820000000500000007FF"), Some(ClusterTime::new(5, 7)));
/// assert_eq!(cluster_time_of_data("8100000005"), None);
/// ```
pub fn cluster_time_of_data(data: &str) -> Option<ClusterTime> {
    let head = data.get(..18)?;
    if !head[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let t = u32::from_str_radix(&head[2..10], 16).ok()?;
    let i = u32::from_str_radix(&head[10..18], 16).ok()?;
    Some(ClusterTime::new(t, i))
}

/// Compares two `_data` strings in stream order (case-insensitive hex).
pub(crate) fn cmp_data(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_uppercase())
        .cmp(b.bytes().map(|c| c.to_ascii_uppercase()))
}

impl Ord for ResumeToken {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.data(), other.data()) {
            (Some(a), Some(b)) => cmp_data(a, b).then_with(|| self.0.cmp(&other.0)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for ResumeToken {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.data() {
            Some(data) => f.write_str(data),
            None => f.write_str(&self.0.to_relaxed_json()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_data_strings_then_opaque_tokens() {
        let early = ResumeToken::from_data("82000000010000000104");
        let late = ResumeToken::from_data("82000000010000000204");
        let later_lower_case = ResumeToken::from_data("82000000010000000a04");
        let opaque = ResumeToken::from_document(Document::from_trusted(bson::rawdoc! { "_data": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1] } }.into_bytes()));
        let mut tokens = vec![
            opaque.clone(),
            later_lower_case.clone(),
            late.clone(),
            early.clone(),
        ];
        tokens.sort();
        assert_eq!(tokens, vec![early, late, later_lower_case, opaque.clone()]);
        assert_eq!(opaque.cluster_time(), None);
    }

    #[test]
    fn malformed_prefix_has_no_time() {
        assert_eq!(cluster_time_of_data("82zz"), None);
        assert_eq!(cluster_time_of_data("82000000010000000"), None);
        assert_eq!(cluster_time_of_data("82GG0000010000000104"), None);
    }
}
